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
