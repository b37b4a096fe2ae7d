package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// /readyz answers 503 while a check fails, naming it and its error, so that
// an operator sees why without reading the logs.
func TestReadyzNamesWhatFailsAndWhy(t *testing.T) {
	ok := func(context.Context) error { return nil }
	stalled := func(context.Context) error {
		return errors.New("stalled: apply spate.events/3 has not succeeded for 45s; its last attempt failed: projection definition changed")
	}
	hangs := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	answersInTime := func(ctx context.Context) error { return ctx.Err() }
	for _, tc := range []struct {
		checks []check
		code   int
		want   map[string]string
	}{
		{[]check{{"kafka", ok}, {"project", ok}}, http.StatusOK, map[string]string{"kafka": "ok", "project": "ok"}},
		{[]check{{"kafka", ok}, {"project", stalled}}, http.StatusServiceUnavailable, map[string]string{
			"kafka": "ok", "project": "unavailable: stalled: apply spate.events/3 has not succeeded for 45s; its last attempt failed: projection definition changed"}},
		// A check that hangs until its deadline does not take the others'
		// time: they answer, and are not blamed.
		{[]check{{"postgres", hangs}, {"redis", answersInTime}}, http.StatusServiceUnavailable, map[string]string{
			"postgres": "unavailable: context deadline exceeded", "redis": "ok"}},
	} {
		rec := httptest.NewRecorder()
		adminHandler(newMetrics(), tc.checks).ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		var got map[string]string
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("body %q: %v", rec.Body, err)
		}
		if rec.Code != tc.code || !cmp.Equal(got, tc.want) {
			t.Errorf("/readyz = %d %v, want %d %v", rec.Code, got, tc.code, tc.want)
		}
	}
}

// An admin request in progress at shutdown (a CPU profile, say) sees the
// context end, and the command stops cleanly, not with an error.
func TestAdminStopsCleanlyWithARequestInProgress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done() // as /debug/pprof/profile waits out its seconds
	})
	done := make(chan error, 1)
	go func() { done <- serveHTTP(ctx, ln, h, slog.New(slog.DiscardHandler)) }()
	go http.Get("http://" + ln.Addr().String() + "/")
	<-started
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serveHTTP: %v, want a clean stop", err)
	}
}

// The admin server does not show the command line, which may hold a URL
// with its password (--postgres-url postgres://spate:secret@db/spate).
func TestAdminHidesTheCommandLine(t *testing.T) {
	rec := httptest.NewRecorder()
	adminHandler(newMetrics(), nil).ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/cmdline", nil))
	if rec.Code == http.StatusOK {
		t.Fatalf("/debug/pprof/cmdline = 200 %q, want it not served", rec.Body)
	}
}
