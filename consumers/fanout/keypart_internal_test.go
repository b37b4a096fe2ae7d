package fanout

import (
	"strings"
	"testing"
)

func TestValidKeyPart(t *testing.T) {
	for v, want := range map[string]bool{
		"a":                      true,
		"Tenant-7_a.b/c":         true,
		strings.Repeat("x", 128): true,
		"":                       false,
		strings.Repeat("x", 129): false,
		"a b":                    false,
		"a:b":                    false,
		"{x}":                    false,
		"*":                      false,
		"a\nb":                   false,
		"a\x00":                  false,
		"é":                      false,
		"[ab]":                   false,
		"tenant?":                false,
	} {
		if got := validKeyPart(v); got != want {
			t.Errorf("validKeyPart(%q) = %v, want %v", v, got, want)
		}
	}
}

// Without routes every event type has its stream, one with a / too (which
// path.Match's * does not take).
func TestDefaultRouteTakesEveryType(t *testing.T) {
	w, err := New(nil, nil, Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"shop.order.placed.v1", "acme/billing.invoice.v1"} {
		if !w.routes[0].matches(typ) {
			t.Errorf("the default route does not take %s", typ)
		}
	}
}
