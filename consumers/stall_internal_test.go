package consumers

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStallClockSurvivesARebalance: a step that keeps failing, given up on
// when its partition is revoked and begun again soon after, is reported
// stalled counting from when it first began; begun again after StallAfter
// or more, it counts afresh.
func TestStallClockSurvivesARebalance(t *testing.T) {
	var mu sync.Mutex
	clock := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		clock = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC).Add(d)
	}
	g := &Group{cfg: Config{StallAfter: time.Minute, MaxBackoff: time.Millisecond}, log: slog.New(slog.DiscardHandler),
		now: func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			return clock
		},
		steps: map[*step]bool{}, givenUp: map[string]givenUpStep{}}
	// run begins the step, waits for its first failed attempt, and returns
	// a func that gives it up, as a revocation does.
	run := func() (giveUp func()) {
		ctx, cancel := context.WithCancel(context.Background())
		failed := make(chan struct{}, 1)
		done := make(chan error)
		go func() {
			done <- g.retry(ctx, "apply t/0", func() error {
				select {
				case failed <- struct{}{}:
				default:
				}
				return errors.New("sink down")
			})
		}()
		<-failed
		return func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("retry returned %v, want context.Canceled", err)
			}
		}
	}
	stalled := func(want string) {
		t.Helper()
		err := g.Stalled(context.Background())
		if want == "" && err != nil || want != "" && (!errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), want)) {
			t.Fatalf("Stalled = %v, want %q", err, want)
		}
	}

	giveUp := run() // begins at 0
	at(30 * time.Second)
	giveUp()
	at(40 * time.Second)
	giveUp = run()
	stalled("")
	at(70 * time.Second)
	stalled("apply t/0 has not succeeded for 1m10s; its last attempt failed: sink down")
	giveUp() // at 70 s
	at(130 * time.Second)
	giveUp = run()
	at(140 * time.Second)
	stalled("")
	giveUp()
}
