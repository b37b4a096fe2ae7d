package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
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

func TestBenchEdgeSendsEveryEventOnce(t *testing.T) {
	for _, o := range []benchOpts{
		{connections: 3, duration: 200 * time.Millisecond, batch: 1, format: "json"},
		{connections: 3, duration: 200 * time.Millisecond, batch: 5, format: "json"},
		{connections: 3, duration: 200 * time.Millisecond, batch: 5, format: "protobuf"},
	} {
		var mu sync.Mutex
		ids := map[string]int{}
		var bad []string
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			type event struct{ id, subject, orderID string }
			var evs []event
			switch r.Header.Get("Content-Type") {
			case "application/x-protobuf":
				var req spatev1.PublishRequest
				err = proto.Unmarshal(body, &req)
				for _, ev := range req.Events {
					var m shopv1.OrderPlaced
					err = cmp.Or(err, proto.Unmarshal(ev.Data, &m))
					evs = append(evs, event{ev.Id, ev.Subject, m.OrderId})
				}
			default:
				var js []struct {
					ID, Subject string
					Data        struct{ OrderID string }
				}
				if r.Header.Get("Content-Type") == "application/cloudevents+json" {
					body = append(append([]byte("["), body...), ']')
				}
				err = json.Unmarshal(body, &js)
				for _, e := range js {
					evs = append(evs, event{e.ID, e.Subject, e.Data.OrderID})
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil || len(evs) != o.batch {
				bad = append(bad, fmt.Sprintf("%d events, %v", len(evs), err))
			}
			for _, ev := range evs {
				ids[ev.id]++
				if ev.subject == "" || ev.orderID != ev.subject || !strings.HasPrefix(ev.id, ev.subject+"-") {
					bad = append(bad, fmt.Sprintf("%+v", ev))
				}
			}
			w.WriteHeader(http.StatusAccepted)
		}))
		o.url = srv.URL
		res, err := runBench(context.Background(), o)
		srv.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(bad) > 0 {
			t.Fatalf("%s batch %d: bad requests or events: %v", o.format, o.batch, bad[:min(len(bad), 3)])
		}
		if res.statuses[http.StatusAccepted] < 2 || len(ids) != res.statuses[http.StatusAccepted]*o.batch {
			t.Fatalf("%s batch %d: %d distinct ids in %d requests", o.format, o.batch, len(ids), res.statuses[http.StatusAccepted])
		}
		for id, n := range ids {
			if n != 1 {
				t.Fatalf("%s batch %d: id %s sent %d times", o.format, o.batch, id, n)
			}
		}
	}
}

// With --admin-url, spate bench edge reports the edge's CPU time an event:
// the growth of process_cpu_seconds_total over the run, over the events
// accepted. Without the metric there, it says so.
func TestBenchEdgeReportsEdgeCPU(t *testing.T) {
	var scrapes atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics": // 1.5 s more CPU at each scrape
			fmt.Fprintf(w, "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %g\n", 10+1.5*float64(scrapes.Add(1)))
		case "/v1/events":
			w.WriteHeader(http.StatusAccepted)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer srv.Close()
	out, _, err := runSpate(context.Background(), "bench", "edge", "--url", srv.URL, "--admin-url", srv.URL,
		"--duration", "200ms", "--connections", "2", "--batch", "3")
	if err != nil {
		t.Fatal(err)
	}
	var requests, events int
	if _, err := fmt.Sscanf(out[strings.Index(out, "accepted"):], "accepted %d requests, %d events", &requests, &events); err != nil || events == 0 {
		t.Fatalf("no count of accepted events (%v) in:\n%s", err, out)
	}
	want := fmt.Sprintf("edge cpu  %.1f µs an event, %.1f µs a request,", 1.5e6/float64(events), 1.5e6/float64(requests))
	if !strings.Contains(out, want) || !strings.Contains(out, "bench cpu ") || scrapes.Load() != 2 {
		t.Fatalf("after %d scrapes, spate bench edge printed:\n%s\nwant a line starting %q, and the bench's own CPU", scrapes.Load(), out, want)
	}

	_, _, err = runSpate(context.Background(), "bench", "edge", "--url", srv.URL, "--admin-url", srv.URL+"/nothing-here",
		"--duration", "100ms", "--connections", "1")
	if err == nil || !strings.Contains(err.Error(), "--admin-url") || !strings.Contains(err.Error(), "404") {
		t.Fatalf("with an admin URL that serves no metrics: error %v, want one naming --admin-url and the 404", err)
	}
}

// Ctrl-C ends the run at once, even while requests hang: they are given
// up, and not counted as errors.
func TestBenchEdgeCtrlCEndsRequestsInFlight(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // then the server sees the client go
		cancel()                    // as Ctrl-C does, with this request in flight
		<-r.Context().Done()
	}))
	defer srv.Close()
	res, err := runBench(ctx, benchOpts{url: srv.URL, connections: 2, duration: time.Hour, batch: 1, format: "json"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.errors) > 0 || len(res.statuses) > 0 {
		t.Fatalf("errors %v, statuses %v; want none: the hanging requests were given up", res.errors, res.statuses)
	}
}

// Ctrl-C ends the run early; with --admin-url the report still comes,
// with the edge's CPU.
func TestBenchEdgeReportsAfterCtrlC(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cpu, requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			fmt.Fprintf(w, "process_cpu_seconds_total %d\n", cpu.Add(1))
			return
		}
		if requests.Add(1) == 3 {
			cancel() // as Ctrl-C does
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	out, stderr, err := runSpate(ctx, "bench", "edge", "--url", srv.URL, "--admin-url", srv.URL, "--duration", "1h", "--connections", "1")
	if err != nil || !strings.Contains(out, "edge cpu") {
		t.Fatalf("spate bench edge interrupted: %v, printed:\n%s\n%s\nwant the report with the edge's CPU", err, out, stderr)
	}
}

// A --url that is not an http URL is refused before the run.
func TestBenchEdgeRefusesABadURL(t *testing.T) {
	for _, args := range [][]string{{"--url", "127.0.0.1:8080"}, {"--admin-url", "localhost"}} {
		wantRefused(t, append([]string{"bench", "edge", "--duration", "1h"}, args...), "want an http:// or https:// URL")
	}
}

// An open loop sends nothing after its end: send times handed out before
// it but taken after it are counted as overdue, and the report says so.
func TestOpenLoopSendsNothingAfterTheEnd(t *testing.T) {
	schedule := make(chan time.Time, 2)
	at := time.Now()
	schedule <- at
	ctx, cancel := context.WithCancel(context.Background())
	if got, ok, late := due(ctx, schedule); !ok || late || !got.Equal(at) {
		t.Fatalf("due during the run = %v, %v, %v; want %v, due, not late", got, ok, late, at)
	}
	schedule <- at
	schedule <- at
	close(schedule)
	cancel() // the run ends with two send times handed out
	for range 2 {
		if _, ok, late := due(ctx, schedule); !ok || !late {
			t.Fatalf("due after the end = %v, %v; want a late one", ok, late)
		}
	}
	if _, ok, _ := due(ctx, schedule); ok {
		t.Fatal("due after the schedule closed: ok, want not")
	}
	var out bytes.Buffer
	(&benchResult{elapsed: time.Second, statuses: map[int]int{http.StatusAccepted: 1}, overdue: 2}).print(&out, benchOpts{rate: 10, batch: 1, format: "json"})
	if !strings.Contains(out.String(), "overdue   2 requests") {
		t.Fatalf("report lacks the overdue requests:\n%s", out.String())
	}
}

// A connection the server closed while it was idle (its idle timeout)
// is opened again for the next request, which is not lost as an error.
func TestBenchEdgeReopensAConnectionClosedWhileIdle(t *testing.T) {
	var served atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	srv.Config.IdleTimeout = 20 * time.Millisecond // far under the 250 ms each connection idles
	srv.Start()
	defer srv.Close()
	res, err := runBench(context.Background(), benchOpts{url: srv.URL, connections: 2, duration: time.Second, rate: 8, batch: 1, format: "json"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.errors) > 0 || res.statuses[http.StatusAccepted] < 4 {
		t.Fatalf("errors %v, statuses %v (%d served); want every request answered 202, at least 4", res.errors, res.statuses, served.Load())
	}
}

// TestBenchEdgeOverTLS: spate bench edge loads an https edge that requires
// a client certificate, trusting the CA of --tls-ca and presenting
// --tls-cert; without --tls-ca it trusts the system's roots only, and
// every request fails.
func TestBenchEdgeOverTLS(t *testing.T) {
	clientCA := spatetest.NewAuthority(t, "client CA")
	clientCert := clientCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "bench-client"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	clientKey, err := x509.MarshalPKCS8PrivateKey(clientCert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "bench-client" {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: x509.NewCertPool()}
	srv.TLS.ClientCAs.AddCert(clientCA.Cert)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshakes refused on purpose
	srv.StartTLS()
	defer srv.Close()
	ca := spatetest.WritePEM(t, "ca.pem", "CERTIFICATE", srv.Certificate().Raw)
	bench := func(extra ...string) (string, error) {
		out, _, err := runSpate(context.Background(), append([]string{"bench", "edge", "--url", srv.URL, "--duration", "300ms", "--connections", "2"}, extra...)...)
		return out, err
	}
	certFlags := []string{"--tls-cert", spatetest.WritePEM(t, "client.pem", "CERTIFICATE", clientCert.Certificate[0]),
		"--tls-key", spatetest.WritePEM(t, "client-key.pem", "PRIVATE KEY", clientKey)}

	out, err := bench(append([]string{"--tls-ca", ca}, certFlags...)...)
	if err != nil || !strings.Contains(out, "not 202   none") || strings.Contains(out, "accepted  0 requests") {
		t.Errorf("with --tls-ca and a client certificate, spate bench edge: %v, printed:\n%s\nwant only 202s", err, out)
	}
	if _, err := bench(certFlags...); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("without --tls-ca, spate bench edge: %v, want every request failed on the server's certificate", err)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--url", "http://127.0.0.1:1", "--tls-ca", ca}, "need an https:// --url"},
		{[]string{"--url", srv.URL, "--tls-cert", certFlags[1]}, "--tls-cert and --tls-key go together"},
		{[]string{"--url", srv.URL, "--tls-ca", certFlags[3]}, "no PEM certificate"},
	} {
		if _, _, err := runSpate(context.Background(), append([]string{"bench", "edge", "--duration", "1s"}, c.args...)...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("spate bench edge %v: %v, want an error saying %q", c.args, err, c.want)
		}
	}
}
