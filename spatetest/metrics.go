package spatetest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// CounterTotal returns the sum of the series of counter name in g, and
// fails the test if g has no such counter.
func CounterTotal(t testing.TB, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var n float64
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
			return n
		}
	}
	t.Fatalf("no %s in the metrics", name)
	return 0
}
