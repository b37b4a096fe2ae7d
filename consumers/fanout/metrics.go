package fanout

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	entries *prometheus.CounterVec
	trimmed prometheus.Counter
	lag     *prometheus.GaugeVec
	pending *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		entries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spate_fanout_entries_total", Help: "Stream entries written, by route template.",
		}, []string{"route"}),
		trimmed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spate_fanout_trimmed_entries_total", Help: "Stream entries deleted by retention.",
		}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spate_fanout_group_lag_entries", Help: "Entries of a stream a consumer group has not read yet, at the last trim pass.",
		}, []string{"stream", "group"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spate_fanout_group_pending_entries", Help: "Entries of a stream a consumer group read and has not acknowledged, at the last trim pass.",
		}, []string{"stream", "group"}),
	}
	if reg != nil {
		reg.MustRegister(m.entries, m.trimmed, m.lag, m.pending)
	}
	return m
}
