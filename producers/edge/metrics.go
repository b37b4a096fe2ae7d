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

func newMetrics(reg prometheus.Registerer) *metrics {
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
		reg.MustRegister(m.requests, m.duration, m.events)
	}
	return m
}

// instrument counts and times the requests h serves.
func (m *metrics) instrument(transport string, h http.Handler) http.Handler {
	l := prometheus.Labels{"transport": transport}
	return promhttp.InstrumentHandlerDuration(m.duration.MustCurryWith(l),
		promhttp.InstrumentHandlerCounter(m.requests.MustCurryWith(l), h))
}
