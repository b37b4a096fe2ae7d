package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestBenchEdgeCountsEveryAnswer(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/events" || r.Header.Get("Content-Type") == "" || r.Header.Get("Authorization") != "Bearer k" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if n.Add(1)%5 == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	for _, o := range []benchOpts{
		{url: srv.URL, connections: 4, duration: 300 * time.Millisecond, batch: 1, format: "json", key: "k"},
		{url: srv.URL, connections: 4, duration: 300 * time.Millisecond, batch: 10, format: "protobuf", key: "k"},
		{url: srv.URL, connections: 2, duration: 300 * time.Millisecond, rate: 200, batch: 1, format: "json", key: "k"},
	} {
		n.Store(0)
		res, err := runBench(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for _, c := range res.statuses {
			total += c
		}
		if int64(total) != n.Load() || len(res.latencies) != total || res.statuses[http.StatusBadRequest] > 0 {
			t.Fatalf("%+v: statuses %v from %d requests served, %d latencies: every answer must be counted once", o, res.statuses, n.Load(), len(res.latencies))
		}
		if res.statuses[http.StatusServiceUnavailable] == 0 || res.statuses[http.StatusAccepted] == 0 {
			t.Fatalf("%+v: statuses %v, want both 202s and 503s", o, res.statuses)
		}
		var out bytes.Buffer
		res.print(&out, o)
		if !strings.Contains(out.String(), "×503") || !strings.Contains(out.String(), "p99") {
			t.Fatalf("report lacks the 503s or the percentiles:\n%s", out.String())
		}
	}
}

// spate bench edge takes its load from the command line alone: SPATE_RATE,
// set for spate replay, does not turn it into an open loop at that rate.
// The edge's URL still comes from the environment.
func TestBenchEdgeLoadIsNotTakenFromTheEnvironment(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	defer srv.Close()
	t.Setenv("SPATE_URL", srv.URL)
	t.Setenv("SPATE_RATE", "5")
	t.Setenv("SPATE_BATCH", "7")
	out, _, err := runSpate(context.Background(), "bench", "edge", "--duration", "200ms", "--connections", "2")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "closed loop, 2 connections, 1 events a request") {
		t.Fatalf("spate bench edge with SPATE_RATE and SPATE_BATCH set printed:\n%s\nwant a closed loop of single events", out)
	}
}
