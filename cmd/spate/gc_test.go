package main

import (
	"os"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/spate-io/spate/spatetest"
)

func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "") // restored after the test
	os.Unsetenv("GOGC")
	if prev := tuneGC(); prev != 100 {
		t.Errorf("tuneGC returned %d, want the target it replaced, 100", prev)
	}
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("without GOGC the target is %d, want %d", got, gcPercent)
	}
	// With GOGC set, the runtime took it at start; tuneGC leaves it be.
	t.Setenv("GOGC", "150")
	debug.SetGCPercent(150)
	if prev := tuneGC(); prev != 150 {
		t.Errorf("tuneGC returned %d, want 150", prev)
	}
	if got := debug.SetGCPercent(100); got != 150 {
		t.Errorf("with GOGC=150 the target is %d, want 150 kept", got)
	}
}

// spate project and spate fanout collect at gcPercent; the edge keeps Go's
// default.
func TestConsumersCollectAtGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	os.Unsetenv("GOGC")
	brokers := strings.Join(spatetest.Kafka(t, 1, "only"), ",")
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"edge", "--edge-addr", "127.0.0.1:0", "--topic", "nosuch"}, 100},
		{[]string{"project", "--postgres-url", spatetest.Postgres(t), "--topic", "nosuch"}, gcPercent},
		{[]string{"fanout", "--redis-url", spatetest.Redis(t), "--topic", "nosuch"}, gcPercent},
	} {
		debug.SetGCPercent(100)
		wantRefused(t, append(tc.args, "--kafka-brokers", brokers, "--admin-addr", "127.0.0.1:0"), "has no topic nosuch")
		if got := debug.SetGCPercent(100); got != tc.want {
			t.Errorf("spate %s: GOGC %d, want %d", tc.args[0], got, tc.want)
		}
	}
}
