package main

import (
	"os"
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(defaultGCPercent))
	t.Setenv("GOGC", "") // restored after the test
	os.Unsetenv("GOGC")
	if prev := tuneGC(gcPercent); prev != 100 {
		t.Errorf("tuneGC returned %d, want the target it replaced, 100", prev)
	}
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("without GOGC the target is %d, want %d", got, gcPercent)
	}
	// With GOGC set, the runtime took it at start; tuneGC leaves it be.
	t.Setenv("GOGC", "150")
	debug.SetGCPercent(150)
	if prev := tuneGC(gcPercent); prev != 150 {
		t.Errorf("tuneGC returned %d, want 150", prev)
	}
	if got := debug.SetGCPercent(100); got != 150 {
		t.Errorf("with GOGC=150 the target is %d, want 150 kept", got)
	}
}
