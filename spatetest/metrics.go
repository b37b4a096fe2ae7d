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

// Value returns the value of the series of counter or gauge name in g
// whose label has value (label "": its first series), and whether g has
// such a series.
func Value(t testing.TB, g prometheus.Gatherer, name, label, value string) (float64, bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			found := label == ""
			for _, l := range m.GetLabel() {
				found = found || l.GetName() == label && l.GetValue() == value
			}
			switch {
			case !found:
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			default:
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}
