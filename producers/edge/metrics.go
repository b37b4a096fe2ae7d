package edge

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	events   *prometheus.CounterVec
}

// newMetrics returns s's metrics, registered with reg unless it is nil: the
// counters, and gauges of what s holds in flight against its caps.
func newMetrics(reg prometheus.Registerer, s *Server) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spate_edge_requests_total",
			Help: "Ingestion requests by transport (http, connect) and status code.",
		}, []string{"transport", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "spate_edge_request_duration_seconds",
			Help:    "Time from request to answer, including Kafka's acknowledgement.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"transport"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spate_edge_events_total",
			Help: "Events by result: published; duplicate (published before: answered with the first receipt); invalid, forbidden, rate_limited, overloaded or conflict (refused with their request); failed (Kafka did not acknowledge).",
		}, []string{"result"}),
	}
	if reg != nil {
		gauge := func(name, help string, labels prometheus.Labels, of func() int64) prometheus.Collector {
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels},
				func() float64 { return float64(of()) })
		}
		const bytesHelp = "Bytes in flight, against --max-inflight-bytes (each kind apart): of request bodies being handled (requests), of events handed to Kafka and not yet settled (records)."
		reg.MustRegister(m.requests, m.duration, m.events,
			gauge("spate_edge_inflight_events", "Events handed to Kafka and not yet settled, against --max-inflight-events.", nil, s.inflightEvents.Load),
			gauge("spate_edge_inflight_bytes", bytesHelp, prometheus.Labels{"of": "requests"}, s.inflightBytes.Load),
			gauge("spate_edge_inflight_bytes", bytesHelp, prometheus.Labels{"of": "records"}, s.inflightRecordBytes.Load))
	}
	return m
}

// instrument counts and times the requests h serves.
func (m *metrics) instrument(transport string, h http.Handler) http.Handler {
	l := prometheus.Labels{"transport": transport}
	return promhttp.InstrumentHandlerDuration(m.duration.MustCurryWith(l),
		promhttp.InstrumentHandlerCounter(m.requests.MustCurryWith(l), h))
}
