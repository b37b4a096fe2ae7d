package consumers

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	records      *prometheus.CounterVec
	batches      prometheus.Counter
	batchSize    prometheus.Observer
	applySeconds prometheus.Observer
	retries      prometheus.Counter
	deadLettered prometheus.Counter
	lagGauge     *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer, group string) *metrics {
	l := prometheus.Labels{"group": group}
	records := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spate_consumer_records_total", Help: "Records of the batches the sink applied, those it had applied before (redelivered after a rebalance or restart, and skipped) included.", ConstLabels: l,
	}, []string{"topic", "partition"})
	batches := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "spate_consumer_batches_total", Help: "Batches applied to the sink.", ConstLabels: l,
	})
	size := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "spate_consumer_batch_records", Help: "Records per applied batch.", ConstLabels: l,
		Buckets: prometheus.ExponentialBuckets(1, 4, 9),
	})
	apply := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "spate_consumer_apply_duration_seconds", Help: "Time to apply a batch, retries included.", ConstLabels: l,
		Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
	})
	retries := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "spate_consumer_retries_total", Help: "Failed batch applications that were retried (not those given up because the partition was revoked or the group stopped).", ConstLabels: l,
	})
	dlq := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "spate_consumer_dead_letters_total", Help: "Records written to the dead-letter topic.", ConstLabels: l,
	})
	lag := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "spate_consumer_lag_records", Help: "Records behind the partition's high watermark after the last batch.", ConstLabels: l,
	}, []string{"topic", "partition"})
	if reg != nil {
		reg.MustRegister(records, batches, size, apply, retries, dlq, lag)
	}
	return &metrics{records: records, batches: batches, batchSize: size, applySeconds: apply, retries: retries, deadLettered: dlq, lagGauge: lag}
}

func (m *metrics) applied(b Batch, d time.Duration) {
	if len(b.Records) == 0 {
		return
	}
	m.records.WithLabelValues(b.Topic, strconv.Itoa(int(b.Partition))).Add(float64(len(b.Records)))
	m.batches.Inc()
	m.batchSize.Observe(float64(len(b.Records)))
	m.applySeconds.Observe(d.Seconds())
}

func (m *metrics) lag(topic string, partition int32, n int64) {
	m.lagGauge.WithLabelValues(topic, strconv.Itoa(int(partition))).Set(float64(n))
}

// forget drops the per-partition series of partitions this member no longer owns.
func (m *metrics) forget(tps map[string][]int32) {
	for t, ps := range tps {
		for _, p := range ps {
			lp := prometheus.Labels{"topic": t, "partition": strconv.Itoa(int(p))}
			m.lagGauge.Delete(lp)
			m.records.Delete(lp)
		}
	}
}
