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
