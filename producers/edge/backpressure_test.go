package edge_test

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/spate-io/spate/producers"
	"github.com/spate-io/spate/producers/edge"
	"github.com/spate-io/spate/proto/spate/v1/spatev1connect"
	"github.com/spate-io/spate/spatetest"
)

// memoryBytes is this process's resident set size; under the race
// detector, whose shadow memory multiplies RSS, the memory the Go runtime
// holds instead.
func memoryBytes(t *testing.T) int64 {
	t.Helper()
	if raceEnabled {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.Sys - ms.HeapReleased)
	}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func TestStalledBrokerShedsLoadWithBoundedMemory(t *testing.T) {
	const clients, publishTimeout = 200, time.Second
	// What tests before this one freed but the runtime still holds (the
	// hostile-input tests allocate hundreds of MiB) must not count.
	debug.FreeOSMemory()
	cl, unstall := stalledProducer(t, 3)
	srv, base := serveEdge(t, cl, edge.Config{PublishTimeout: publishTimeout, MaxInflightEvents: 500})
	url := base + "/v1/events"

	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	defer hc.CloseIdleConnections()
	var mu sync.Mutex
	statuses := map[int]int{}
	var slow, noRetryAfter, transportErrs atomic.Int64
	var peak atomic.Int64
	stop := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			for n := 0; time.Now().Before(stop); n++ {
				start := time.Now()
				resp, err := hc.Post(url, "application/cloudevents+json", strings.NewReader(orderJSON(fmt.Sprintf("c%d-%d", i, n), fmt.Sprint("s", i))))
				if err != nil {
					transportErrs.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if time.Since(start) > publishTimeout+time.Second {
					slow.Add(1)
				}
				if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
					noRetryAfter.Add(1)
				}
				mu.Lock()
				statuses[resp.StatusCode]++
				mu.Unlock()
				if i == 0 && n%20 == 0 {
					if r := memoryBytes(t); r > peak.Load() {
						peak.Store(r)
					}
				}
			}
		})
	}
	wg.Wait()

	t.Logf("statuses %v, peak memory %d MiB (race detector: %v)", statuses, peak.Load()>>20, raceEnabled)
	if transportErrs.Load() > 0 || slow.Load() > 0 {
		t.Errorf("%d transport errors and %d answers slower than the publish timeout plus 1 s, want none", transportErrs.Load(), slow.Load())
	}
	if len(statuses) != 1 || statuses[http.StatusServiceUnavailable] == 0 || noRetryAfter.Load() > 0 {
		t.Errorf("statuses %v (%d 503s without Retry-After), want only 503s with Retry-After against a stalled broker", statuses, noRetryAfter.Load())
	}
	if err := srv.Ready(context.Background()); err == nil {
		t.Error("Ready = nil while the broker stalls, want an error")
	}
	if r := max(peak.Load(), memoryBytes(t)); r > 256<<20 {
		t.Errorf("memory %d MiB, want under 256 MiB", r>>20)
	}

	unstall()
	spatetest.Eventually(t, 30*time.Second, func() string {
		resp, err := hc.Post(url, "application/cloudevents+json", bytes.NewReader([]byte(orderJSON("after", "s"))))
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return fmt.Sprintf("status %d after the broker recovered, want 202", resp.StatusCode)
		}
		return ""
	})
}

// stalledProducer returns a producing client of a spatetest.StalledKafka,
// closed at cleanup.
func stalledProducer(t *testing.T, partitions int32) (cl *kgo.Client, unstall func()) {
	t.Helper()
	c, unstall := spatetest.StalledKafka(t, topic, partitions)
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}, producers.Opts()...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl, unstall
}

// TestTimedOutEventsKeepTheirBytesCounted: events whose publish timed out
// stay in the Kafka client until the broker answers, so their bytes count
// against MaxInflightBytes until then, not only while their request runs:
// against a stalled broker, the edge soon sheds load as overloaded instead
// of piling up more large events.
func TestTimedOutEventsKeepTheirBytesCounted(t *testing.T) {
	cl, _ := stalledProducer(t, 1)
	_, base := serveEdge(t, cl, edge.Config{PublishTimeout: 500 * time.Millisecond, MaxInflightBytes: 1 << 20})
	big := func(id string) string { // an event of about 300 KB
		return fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"/test","type":"shop.order.placed.v1","subject":"s",`+
			`"data":{"orderId":"o","customerId":"c-1","amountCents":1,"currency":"EUR","items":[{"sku":%q,"quantity":1,"priceCents":1}]}}`,
			id, strings.Repeat("x", 300<<10))
	}
	kinds := map[string]int{}
	for i := range 10 {
		resp, err := http.Post(base+"/v1/events", "application/cloudevents+json", strings.NewReader(big(fmt.Sprint("e", i))))
		if err != nil {
			t.Fatal(err)
		}
		var p edge.Problem
		err = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("event %d: status %d (%v), want 503 against a stalled broker", i, resp.StatusCode, err)
		}
		kinds[strings.TrimPrefix(p.Type, "urn:spate:problem:")]++
	}
	// About 1 MiB of 300 KB events fits: three time out (and stay in
	// flight), the rest are shed. On a loaded machine a record may time out
	// before it was even sent: it is known not to be written, and its bytes
	// are given back at once, so one more may be taken.
	if kinds["overloaded"] < 6 || kinds["overloaded"]+kinds["outcome-unknown"]+kinds["kafka-unavailable"] != 10 {
		t.Errorf("answers %v, want 3 outcome-unknown (then in flight) and 7 overloaded", kinds)
	}
}

// TestBodiesCountBeforeTheyAreRead: the in-flight cap on request bytes is
// taken as a body comes in (Connect reads a whole body before the handler
// runs): of three 3.5 MiB uploads that do not end, under a cap of 8 MiB,
// one is answered at once, overloaded, whether its length is known or not
// (over Connect; on /v1/events when known: an upload of unknown length is
// read to its end before it is answered, see
// TestBodyOfUnknownLengthOverTheCap).
func TestBodiesCountBeforeTheyAreRead(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		path, ct string
		known    bool
	}{
		{spatev1connect.IngestServicePublishProcedure, "application/proto", true},
		{spatev1connect.IngestServicePublishProcedure, "application/proto", false},
		{"/v1/events", "application/x-protobuf", true},
	} {
		t.Run(fmt.Sprint(tc.path, " length known ", tc.known), func(t *testing.T) {
			t.Parallel()
			bodiesCountBeforeTheyAreRead(t, tc.path, tc.ct, tc.known)
		})
	}
}

// TestBodyOfUnknownLengthOverTheCap: a body of unknown length (chunked)
// counts against the cap as it is read; past the cap, beside another
// request's bytes, the request is answered 503 overloaded, and what it
// held is given back.
func TestBodyOfUnknownLengthOverTheCap(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	f := start(t, edge.Config{MaxInflightBytes: 4 << 20, Metrics: reg})
	holdRequestBytes(t, f, reg, 2<<20)
	req := protobufRequest(t, "big")
	req.Events[0].Extensions = map[string]string{"pad": strings.Repeat("x", 3<<20)}
	body, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	r, err := http.NewRequest(http.MethodPost, f.url+"/v1/events", io.MultiReader(bytes.NewReader(body))) // no length: chunked
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Content-Type", "application/x-protobuf")
	resp, msg := roundTrip(t, r)
	if resp.StatusCode != http.StatusServiceUnavailable || !bytes.Contains(msg, []byte("overloaded")) {
		t.Fatalf("a 3 MiB body of unknown length beside 2 MiB, under a cap of 4 MiB: %d %s, want 503 overloaded", resp.StatusCode, msg)
	}
	if held := inflightRequestBytes(t, reg); held != 2<<20 {
		t.Errorf("%d request bytes in flight after the refusal, want the 2 MiB held beside it: the refused body's are given back", held)
	}
	small, err := proto.Marshal(protobufRequest(t, "small"))
	if err != nil {
		t.Fatal(err)
	}
	if code, msg := f.post(t, "application/x-protobuf", small); code != http.StatusAccepted {
		t.Fatalf("a small request after it: %d %s, want 202", code, msg)
	}
}

// holdRequestBytes keeps n bytes of a request body in flight on f until
// the test ends: an upload of that length that hangs before its last
// byte. It returns once the edge counts them (reg holds its metrics).
func holdRequestBytes(t *testing.T, f *fixture, reg *prometheus.Registry, n int) {
	t.Helper()
	before := inflightRequestBytes(t, reg)
	hangingUploads(t, &http.Transport{}, 1, make([]byte, n-1), func(pr io.Reader) *http.Request {
		r, err := http.NewRequest(http.MethodPost, f.url+"/v1/events", pr)
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Content-Type", "application/x-protobuf")
		r.ContentLength = int64(n)
		return r
	})
	spatetest.Eventually(t, 10*time.Second, func() string {
		if held := inflightRequestBytes(t, reg); held != before+int64(n) {
			return fmt.Sprintf("%d request bytes in flight, want %d", held, before+int64(n))
		}
		return ""
	})
}

// inflightRequestBytes reads the edge's gauge of request bytes in flight.
func inflightRequestBytes(t *testing.T, reg *prometheus.Registry) int64 {
	t.Helper()
	return gauge(t, reg, "spate_edge_inflight_bytes", "of", "requests")
}

// gauge reads the gauge name of reg, of the series with the label and
// value given (none: its only one).
func gauge(t *testing.T, reg *prometheus.Registry, name string, label ...string) int64 {
	t.Helper()
	label = append(label, "", "")
	v, ok := spatetest.Value(t, reg, name, label[0], label[1])
	if !ok {
		t.Fatalf("no gauge %s %v", name, label[:2])
	}
	return int64(v)
}

func bodiesCountBeforeTheyAreRead(t *testing.T, path, ct string, known bool) {
	f := start(t, edge.Config{MaxInflightBytes: 8 << 20})
	req := protobufRequest(t, "big")
	req.Events[0].Extensions = map[string]string{"pad": strings.Repeat("x", 3<<20+512<<10)}
	body, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	answers := hangingUploads(t, &http.Transport{}, 3, body[:len(body)-1], func(pr io.Reader) *http.Request { // all but the last byte
		r, err := http.NewRequest(http.MethodPost, f.url+path, pr)
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Content-Type", ct)
		if known {
			r.ContentLength = int64(len(body))
		}
		return r
	})
	if resp := <-answers; resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("the upload over the cap: %d, want 503 (Unavailable)", resp.StatusCode)
	}
}

// TestConnectRefusalNearItsEndIsAnsweredAtOnce: a Connect upload of
// unknown length refused over the cap, with less than 256 KiB of it sent
// and not read, is answered at once though its client sends no more:
// net/http, left to itself, reads on up to 256 KiB before it answers, and
// would wait for the rest until its read timeout (30 s).
func TestConnectRefusalNearItsEndIsAnsweredAtOnce(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	f := start(t, edge.Config{MaxInflightBytes: 4 << 20, Metrics: reg})
	holdRequestBytes(t, f, reg, 4<<20-64<<10)
	answers := hangingConnectUpload(t, f, 128<<10)
	select {
	case resp := <-answers:
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("the upload over the cap: %d, want 503 (Unavailable)", resp.StatusCode)
		}
	case <-time.After(20 * time.Second): // well under the edge's read timeout
		t.Fatal("the upload over the cap is not answered while its client waits")
	}
}

// TestRefusalOverH2CKeepsTheConnection: over h2c, a Connect or gRPC body
// refused part way ends its stream alone: the connection's next request
// goes on it, not on a new one (Connection: close would end every stream
// of it).
func TestRefusalOverH2CKeepsTheConnection(t *testing.T) {
	t.Parallel()
	for _, ct := range []string{"application/proto", "application/grpc"} {
		t.Run(ct, func(t *testing.T) {
			t.Parallel()
			refusalOverH2CKeepsTheConnection(t, ct)
		})
	}
}

func refusalOverH2CKeepsTheConnection(t *testing.T, ct string) {
	reg := prometheus.NewRegistry()
	f := start(t, edge.Config{MaxInflightBytes: 4 << 20, Metrics: reg})
	holdRequestBytes(t, f, reg, 4<<20-64<<10)
	tr := h2cClient().Transport.(*http.Transport)
	head := make([]byte, 128<<10)
	if ct == "application/grpc" { // a message of 1 MiB is coming
		head = append(binary.BigEndian.AppendUint32([]byte{0}, 1<<20), head...)
	}
	answers := hangingUploads(t, tr, 1, head, func(pr io.Reader) *http.Request {
		r, err := http.NewRequest(http.MethodPost, f.url+spatev1connect.IngestServicePublishProcedure, pr)
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Content-Type", ct)
		return r
	})
	resp := <-answers
	if status := cmp.Or(resp.Trailer.Get("Grpc-Status"), resp.Header.Get("Grpc-Status"), strconv.Itoa(resp.StatusCode)); status != "503" && status != "14" {
		t.Fatalf("the upload over the cap: %s, want 503 (Unavailable), or gRPC's 14", status)
	}
	var reused bool
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, f.url+"/healthz", nil)
	if err != nil {
		t.Fatal(err)
	}
	next, err := tr.RoundTrip(r)
	if err != nil {
		t.Fatal(err)
	}
	next.Body.Close()
	if !reused {
		t.Error("the next request went on a new connection: the refusal closed the first")
	}
}

// hangingConnectUpload sends a Connect Publish whose body, of unknown
// length (chunked), is n bytes and then hangs until the test ends, and
// returns its answer as it comes.
func hangingConnectUpload(t *testing.T, f *fixture, n int) <-chan *http.Response {
	return hangingUploads(t, &http.Transport{}, 1, make([]byte, n), func(pr io.Reader) *http.Request {
		r, err := http.NewRequest(http.MethodPost, f.url+spatev1connect.IngestServicePublishProcedure, pr)
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Content-Type", "application/proto")
		return r
	})
}

// hangingUploads sends n requests that newReq makes of a body over tr,
// each body sending head and then hanging until the test ends, and returns
// the answers as they come, their bodies read.
func hangingUploads(t *testing.T, tr *http.Transport, n int, head []byte, newReq func(body io.Reader) *http.Request) <-chan *http.Response {
	answers := make(chan *http.Response, n)
	var writers []*io.PipeWriter
	var wg sync.WaitGroup
	t.Cleanup(func() {
		for _, pw := range writers {
			pw.CloseWithError(io.ErrClosedPipe)
		}
		wg.Wait()
		tr.CloseIdleConnections()
	})
	for range n {
		pr, pw := io.Pipe()
		writers = append(writers, pw)
		r := newReq(pr)
		wg.Go(func() {
			resp, err := tr.RoundTrip(r)
			if err != nil {
				return // closed at the end of the test
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answers <- resp
		})
		wg.Go(func() { pw.Write(head) })
	}
	return answers
}

// TestCompressedBodyCountsDecompressed: a gzip body that decompresses to
// 2 MiB, beside 3 MiB in flight under a cap of 4 MiB, is refused
// overloaded on /v1/events and over Connect alike, though it is 2 KiB on
// the wire.
func TestCompressedBodyCountsDecompressed(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	f := start(t, edge.Config{MaxInflightBytes: 4 << 20, Metrics: reg})
	holdRequestBytes(t, f, reg, 3<<20)
	for _, req := range gzipPosts(t, f, gzipPublish(t, 2<<20)) {
		resp, b := roundTrip(t, req)
		if resp.StatusCode != http.StatusServiceUnavailable || !bytes.Contains(b, []byte("overloaded")) && !bytes.Contains(b, []byte("unavailable")) {
			t.Errorf("%s: %d %.200s, want 503: 2 MiB gzipped, beside 3 MiB under a cap of 4 MiB", req.URL.Path, resp.StatusCode, b)
		}
	}
}

// TestCompressedConnectBodyIsChargedAsItIsRead: a gzip body of 3.5 MiB
// decompressed, under a cap of 256 KiB, is refused as too large over
// Connect as over /v1/events, once its decompressed bytes read pass the
// cap (the body cap is lowered to it): it costs the edge about the cap,
// not its whole size decompressed and decoded, which Connect would
// allocate before any handler saw it. Not parallel: it measures what the
// process allocates.
func TestCompressedConnectBodyIsChargedAsItIsRead(t *testing.T) {
	f := start(t, edge.Config{MaxInflightBytes: 256 << 10})
	const decompressed = 3<<20 + 512<<10
	for _, req := range gzipPosts(t, f, gzipPublish(t, decompressed)) {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		resp, b := roundTrip(t, req)
		runtime.ReadMemStats(&after)
		if resp.StatusCode != http.StatusRequestEntityTooLarge && !bytes.Contains(b, []byte("resource_exhausted")) {
			t.Errorf("%s: %d %.200s, want too large", req.URL.Path, resp.StatusCode, b)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > decompressed {
			t.Errorf("%s: %d KiB allocated to refuse a body over the 256 KiB cap, more than the %d KiB it decompresses to", req.URL.Path, alloc>>10, decompressed>>10)
		}
	}
}

// gzipPublish returns a PublishRequest of one event, padded to about size
// bytes (field 2, which the edge does not know), gzipped.
func gzipPublish(t *testing.T, size int) []byte {
	t.Helper()
	msg, err := proto.Marshal(protobufRequest(t, "g-1"))
	if err != nil {
		t.Fatal(err)
	}
	msg = protowire.AppendBytes(protowire.AppendTag(msg, 2, protowire.BytesType), make([]byte, size-len(msg)-8))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return gz.Bytes()
}

// gzipTooLarge fails t unless a gzip body decompressing to size bytes is
// refused as too large (413, or Connect's resource_exhausted) on
// /v1/events and over Connect; where says of the caps.
func gzipTooLarge(t *testing.T, f *fixture, size int, where string) {
	t.Helper()
	for _, req := range gzipPosts(t, f, gzipPublish(t, size)) {
		resp, b := roundTrip(t, req)
		if resp.StatusCode != http.StatusRequestEntityTooLarge && !bytes.Contains(b, []byte("resource_exhausted")) {
			t.Errorf("%s: %d %.200s, want too large: %d bytes gzipped, %s", req.URL.Path, resp.StatusCode, b, size, where)
		}
	}
}

// gzipPosts returns a post of the gzip protobuf body to /v1/events, and
// one to Connect's Publish.
func gzipPosts(t *testing.T, f *fixture, body []byte) []*http.Request {
	t.Helper()
	var reqs []*http.Request
	for _, to := range []struct{ path, ct string }{
		{"/v1/events", "application/x-protobuf"},
		{spatev1connect.IngestServicePublishProcedure, "application/proto"},
	} {
		req, err := http.NewRequest(http.MethodPost, f.url+to.path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", to.ct)
		req.Header.Set("Content-Encoding", "gzip")
		reqs = append(reqs, req)
	}
	return reqs
}

// TestCompressedGRPCMessagesAreChargedBeforeTheyAreRead: Connect
// decompresses a gRPC message compressed on its own before the edge sees
// it, so such a request is charged what it may decompress to (MaxBodyBytes)
// before it is read: with two in flight under a cap of twice that, a third
// is answered at once, Unavailable; whatever the case of its Content-Type,
// which Connect matches in lower case.
func TestCompressedGRPCMessagesAreChargedBeforeTheyAreRead(t *testing.T) {
	t.Parallel()
	for _, ct := range []string{"application/grpc", "Application/gRPC+proto"} {
		t.Run(ct, func(t *testing.T) {
			t.Parallel()
			f := start(t, edge.Config{MaxBodyBytes: 1 << 20, MaxInflightBytes: 2 << 20})
			answers := hangingUploads(t, h2cClient().Transport.(*http.Transport), 3, []byte{1, 0, 0, 1, 0}, func(pr io.Reader) *http.Request { // a compressed message of 256 bytes is coming
				r, err := http.NewRequest(http.MethodPost, f.url+spatev1connect.IngestServicePublishProcedure, pr)
				if err != nil {
					t.Fatal(err)
				}
				r.Header.Set("Content-Type", ct)
				r.Header.Set("Grpc-Encoding", "gzip")
				r.Header.Set("Te", "trailers")
				return r
			})
			select {
			case resp := <-answers:
				if status := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status"); status != "14" {
					t.Fatalf("the request past the cap: grpc-status %q, want 14 (Unavailable)", status)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("no request answered in 30 s: the compressed requests were not charged before they were read")
			}
		})
	}
}

// TestTooLargeOnABusyEdge: a body that is too large is told so (413, or
// Connect's resource_exhausted), not 503, when the edge knows it: a
// length over the body cap, however busy the edge, and a gzip body at its
// first byte past the cap, though the cap was all the room left in flight.
func TestTooLargeOnABusyEdge(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	f := start(t, edge.Config{MaxBodyBytes: 1 << 20, MaxInflightBytes: 4 << 20, Metrics: reg})
	for range 3 {
		holdRequestBytes(t, f, reg, 1<<20)
	}
	big := make([]byte, 2<<20)
	if code, body := f.post(t, "application/x-protobuf", big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a length of 2 MiB over a body cap of 1 MiB, 1 MiB free in flight: %d %.100s, want 413", code, body)
	}
	gzipTooLarge(t, f, 2<<20, "over a body cap of 1 MiB, 1 MiB free in flight")
	if held := inflightRequestBytes(t, reg); held != 3<<20 {
		t.Errorf("%d request bytes in flight after the refusals, want the 3 MiB held", held)
	}
}

// TestTooLargeReachesAClientSendingItAll: a client that sends its whole
// body before it reads the answer, as many do, gets the 413 of a length
// over the body cap (twice the cap here), not a reset or a broken pipe,
// on /v1/events and over Connect.
func TestTooLargeReachesAClientSendingItAll(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{})
	const size = 2 * edge.DefaultMaxBodyBytes // more than the kernel's buffers take unread
	for _, to := range []struct{ path, ct, want string }{
		{"/v1/events", "application/x-protobuf", "HTTP/1.1 413"},
		{spatev1connect.IngestServicePublishProcedure, "application/proto", `"code":"resource_exhausted","message":"the body exceeds 4194304 bytes"`},
	} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", to.path, to.ct, size)
		if _, err := conn.Write(append([]byte(head), make([]byte, size)...)); err != nil {
			t.Errorf("%s: sending the body: %v, want it taken before the answer", to.path, err)
		}
		answer, _ := io.ReadAll(conn)
		conn.Close()
		if !bytes.Contains(answer, []byte(to.want)) {
			t.Errorf("%s: answer %.200q, want %s", to.path, answer, to.want)
		}
	}
}

// TestConnectBodyOverTheCapIsNotReadOn: a Connect body of unknown length
// over the body cap is answered resource_exhausted once it passes the cap,
// without reading on to its end (here it never comes), and what it was
// charged is given back.
func TestConnectBodyOverTheCapIsNotReadOn(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	f := start(t, edge.Config{MaxBodyBytes: 1 << 20, MaxInflightBytes: 4 << 20, Metrics: reg})
	answers := hangingConnectUpload(t, f, 3<<20)
	select {
	case resp := <-answers:
		if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusServiceUnavailable {
			t.Errorf("3 MiB and more over a body cap of 1 MiB: %d, want resource_exhausted", resp.StatusCode)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no answer in 30 s: the body over the cap was read on")
	}
	if held := inflightRequestBytes(t, reg); held != 0 {
		t.Errorf("%d request bytes in flight once answered, want 0", held)
	}
}

// TestConnectMessageDecodedOverTheCapIsTooLarge: a Connect request whose
// body fits the caps but whose message takes more decoded than the
// in-flight cap (map entries sent without their values) is refused
// resource_exhausted, not unavailable for ever.
func TestConnectMessageDecodedOverTheCapIsTooLarge(t *testing.T) {
	t.Parallel()
	var body []byte
	for i := range 200 {
		ev := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), fmt.Sprint("m-", i))
		for k := range 64 {
			entry := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), fmt.Sprint("k", k)) // no value
			ev = protowire.AppendBytes(protowire.AppendTag(ev, 9, protowire.BytesType), entry)
		}
		body = protowire.AppendBytes(protowire.AppendTag(body, 1, protowire.BytesType), ev)
	}
	f := start(t, edge.Config{MaxInflightBytes: int64(len(body)) + 1024})
	req, err := http.NewRequest(http.MethodPost, f.url+spatev1connect.IngestServicePublishProcedure, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/proto")
	resp, msg := roundTrip(t, req)
	if !bytes.Contains(msg, []byte("resource_exhausted")) {
		t.Fatalf("a %d-byte body decoding to more than the cap: %d %.200s, want resource_exhausted", len(body), resp.StatusCode, msg)
	}
}

// TestRecordsOverTheCapAreTooLarge: a request whose body fits the caps but
// whose events take more as records (each gets the time it was received)
// than the in-flight cap could ever hold is refused 413, not 503 for ever.
func TestRecordsOverTheCapAreTooLarge(t *testing.T) {
	t.Parallel()
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprint("r-", i)
	}
	body, err := proto.Marshal(protobufRequest(t, ids...)) // no times
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, edge.Config{MaxInflightBytes: int64(len(body)) + 5}) // the body cap is its length
	code, msg := f.post(t, "application/x-protobuf", body)
	if code != http.StatusRequestEntityTooLarge || !bytes.Contains(msg, []byte("as records")) {
		t.Fatalf("1000 events whose records outgrow the cap: %d %.200s, want 413", code, msg)
	}
	if err := f.srv.Ready(t.Context()); err != nil {
		t.Errorf("Ready = %v, want ready", err)
	}
}

// TestGRPCTakesWhatConnectTakes: with the body and in-flight caps alike, a
// gRPC message is taken or refused as the same message sent unary over
// the Connect protocol, though gRPC's envelope adds 5 bytes to its body.
func TestGRPCTakesWhatConnectTakes(t *testing.T) {
	t.Parallel()
	const caps = 64 << 10
	f := start(t, edge.Config{MaxBodyBytes: caps, MaxInflightBytes: caps})
	taken := func(req *http.Request) bool {
		resp, b := roundTrip(t, req)
		switch status := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status"); {
		case resp.StatusCode == http.StatusOK && (status == "" || status == "0"):
			return true
		case status == "8" || bytes.Contains(b, []byte("resource_exhausted")):
			return false
		default:
			t.Fatalf("%s: %d grpc-status %q %.200s, want taken or resource_exhausted", req.Header.Get("Content-Type"), resp.StatusCode, status, b)
			return false
		}
	}
	var both [2]int // refused, taken
	for size := caps - 8; size <= caps; size++ {
		msg := paddedPublish(t, size)
		connectReq, err := http.NewRequest(http.MethodPost, f.url+spatev1connect.IngestServicePublishProcedure, bytes.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		connectReq.Header.Set("Content-Type", "application/proto")
		enveloped := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
		grpcReq, err := http.NewRequest(http.MethodPost, f.url+spatev1connect.IngestServicePublishProcedure, bytes.NewReader(append(enveloped, msg...)))
		if err != nil {
			t.Fatal(err)
		}
		grpcReq.Header.Set("Content-Type", "application/grpc")
		grpcReq.Header.Set("Te", "trailers")
		overConnect := taken(connectReq)
		resp, err := h2cClient().Do(grpcReq)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		overGRPC := resp.Trailer.Get("Grpc-Status") == "0"
		if overConnect != overGRPC {
			t.Errorf("a message of %d bytes: taken over Connect %v, over gRPC %v; want alike", size, overConnect, overGRPC)
		}
		if overConnect {
			both[1]++
		} else {
			both[0]++
		}
	}
	if both[0] == 0 || both[1] == 0 {
		t.Errorf("%d sizes refused, %d taken: want the cap among them", both[0], both[1])
	}
}

// paddedPublish returns a PublishRequest of one event, padded to size
// bytes with field 2, which the edge does not know.
func paddedPublish(t *testing.T, size int) []byte {
	t.Helper()
	msg, err := proto.Marshal(protobufRequest(t, "p-1"))
	if err != nil {
		t.Fatal(err)
	}
	for pad := size - len(msg) - 1; pad >= 0; pad-- {
		if b := protowire.AppendBytes(protowire.AppendTag(msg, 2, protowire.BytesType), make([]byte, pad)); len(b) == size {
			return b
		}
	}
	t.Fatalf("no padding makes %d bytes", size)
	return nil
}

// TestCompressedGRPCRequestHoldsItsMessage: once Connect decoded a gRPC
// request of compressed messages, charged the body cap before it was
// read, it holds what its message takes, not the cap, while its events
// wait for Kafka.
func TestCompressedGRPCRequestHoldsItsMessage(t *testing.T) {
	t.Parallel()
	cl, unstall := stalledProducer(t, 1)
	reg := prometheus.NewRegistry()
	_, base := serveEdge(t, cl, edge.Config{PublishTimeout: time.Minute, MaxBodyBytes: 1 << 20, Metrics: reg})
	req := protobufRequest(t, "gz-1")
	done := make(chan error, 1)
	go func() {
		_, err := spatev1connect.NewIngestServiceClient(h2cClient(), base, connect.WithGRPC(), connect.WithSendGzip()).
			Publish(context.Background(), connect.NewRequest(req))
		done <- err
	}()
	spatetest.Eventually(t, 10*time.Second, func() string {
		if n := cl.BufferedProduceRecords(); n != 1 {
			return fmt.Sprintf("%d records buffered, want 1", n)
		}
		return ""
	})
	// Its message, or the bytes read if more (gzip and gRPC's framing of
	// so small a message take more).
	if held, size := inflightRequestBytes(t, reg), int64(proto.Size(req)); held < size || held > 1<<10 {
		t.Errorf("%d request bytes in flight while the request waits for Kafka, want about its message's %d, not the 1 MiB body cap", held, size)
	}
	unstall()
	if err := <-done; err != nil {
		t.Fatalf("publish: %v", err)
	}
	if held := inflightRequestBytes(t, reg); held != 0 {
		t.Errorf("%d request bytes in flight once answered, want 0", held)
	}
}

// TestARequestThatCanNeverFitLeavesTheEdgeReady: on an idle edge, a
// request larger than an in-flight cap is refused as too large, not 503:
// retrying it could never help. The request caps are lowered to the
// in-flight ones. The edge stays ready: it says nothing of the load, and
// one client repeating it must not keep every edge out of its load
// balancer.
func TestARequestThatCanNeverFitLeavesTheEdgeReady(t *testing.T) {
	t.Parallel()
	t.Run("events", func(t *testing.T) {
		t.Parallel()
		f := start(t, edge.Config{MaxInflightEvents: 4})
		var evs []string
		for _, id := range []string{"a", "b", "c", "d", "e"} {
			evs = append(evs, orderJSON(id, "s"))
		}
		if code, body := f.post(t, "application/cloudevents-batch+json", []byte("["+strings.Join(evs, ",")+"]")); code != http.StatusBadRequest || !strings.Contains(string(body), "at most 4 are taken") {
			t.Fatalf("5 events under a cap of 4: %d %s, want 400, at most 4", code, body)
		}
		if err := f.srv.Ready(t.Context()); err != nil {
			t.Errorf("Ready = %v, want ready", err)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		t.Parallel()
		f := start(t, edge.Config{MaxInflightBytes: 1 << 20}) // the body cap lowered to it
		req := protobufRequest(t, "big")
		req.Events[0].Extensions = map[string]string{"pad": strings.Repeat("x", 2<<20)}
		b, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		if code, body := f.post(t, "application/x-protobuf", b); code != http.StatusRequestEntityTooLarge {
			t.Fatalf("a 2 MiB body under a 1 MiB in-flight cap: %d %.100s, want 413", code, body)
		}
		gzipTooLarge(t, f, 2<<20, "under a 1 MiB in-flight cap")
		if err := f.srv.Ready(t.Context()); err != nil {
			t.Errorf("Ready = %v, want ready", err)
		}
	})
}

// TestUnreadyWhileShedding: with Kafka slow but not failing (no publish
// has timed out yet), a request the in-flight events cap cannot take is
// refused 503 overloaded, though the cap is not full to the event, and the
// edge reports itself unready, so that a load balancer sends producers
// elsewhere; once Kafka answers again, it is ready soon after.
func TestUnreadyWhileShedding(t *testing.T) {
	t.Parallel()
	cl, unstall := stalledProducer(t, 1)
	reg := prometheus.NewRegistry()
	srv, base := serveEdge(t, cl, edge.Config{PublishTimeout: time.Minute, MaxInflightEvents: 4, Metrics: reg})
	post := func(body string) (int, edge.Problem) {
		resp, err := http.Post(base+"/v1/events", "application/cloudevents-batch+json", strings.NewReader(body))
		if err != nil {
			t.Error(err)
			return 0, edge.Problem{}
		}
		defer resp.Body.Close()
		var p edge.Problem
		json.NewDecoder(resp.Body).Decode(&p)
		return resp.StatusCode, p
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer unstall() // first, if the test stops early
	// Three events stay in flight against the stalled broker.
	wg.Go(func() { post("[" + orderJSON("a", "s") + "," + orderJSON("b", "s") + "," + orderJSON("c", "s") + "]") })
	spatetest.Eventually(t, 10*time.Second, func() string {
		if n := cl.BufferedProduceRecords(); n != 3 {
			return fmt.Sprintf("%d records buffered, want 3", n)
		}
		return ""
	})
	if n, size := gauge(t, reg, "spate_edge_inflight_events"), gauge(t, reg, "spate_edge_inflight_bytes", "of", "records"); n != 3 || size < 3*50 {
		t.Errorf("in flight: %d events, %d bytes of records; want 3, and their bytes", n, size)
	}
	code, p := post("[" + orderJSON("d", "s") + "," + orderJSON("e", "s") + "]")
	if code != http.StatusServiceUnavailable || p.Type != "urn:spate:problem:overloaded" {
		t.Fatalf("2 events with 1 of 4 in-flight slots free: %d %+v, want 503 overloaded", code, p)
	}
	if err := srv.Ready(t.Context()); err == nil {
		t.Errorf("Ready = nil right after a request was shed as overloaded, want unready")
	}
	unstall()
	wg.Wait()
	spatetest.Eventually(t, 10*time.Second, func() string {
		if err := srv.Ready(t.Context()); err != nil {
			return fmt.Sprintf("Ready = %v with Kafka answering again", err)
		}
		return ""
	})
}

// roundTrip sends r and returns the answer with its body read.
func roundTrip(t *testing.T, r *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// A client that hangs up while its events are published fails nothing:
// its events are written, the edge stays ready, and the events of other
// requests buffered behind them on the partition are written too (franz-go
// fails all of a partition's buffered records when the first one's context
// ends).
func TestClientHangingUpFailsNothing(t *testing.T) {
	t.Parallel()
	cl, unstall := stalledProducer(t, 1)
	srv, _ := serveEdge(t, cl, edge.Config{PublishTimeout: time.Minute})
	serve := func(ctx context.Context, id string) *httptest.ResponseRecorder {
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/events", strings.NewReader(orderJSON(id, "s")))
		req.Header.Set("Content-Type", "application/cloudevents+json")
		w := httptest.NewRecorder()
		srv.Handler().ServeHTTP(w, req)
		return w
	}
	buffered := func(n int64) {
		spatetest.Eventually(t, 10*time.Second, func() string {
			if got := cl.BufferedProduceRecords(); got != n {
				return fmt.Sprintf("%d records buffered, want %d", got, n)
			}
			return ""
		})
	}
	var wg sync.WaitGroup
	var first, other *httptest.ResponseRecorder
	wg.Go(func() { first = serve(t.Context(), "first") }) // its produce request stalls
	buffered(1)
	gone, hangUp := context.WithCancel(t.Context())
	wg.Go(func() { serve(gone, "gone") })
	buffered(2)
	wg.Go(func() { other = serve(t.Context(), "other") })
	buffered(3)
	hangUp()
	unstall()
	wg.Wait()
	if first.Code != http.StatusAccepted || other.Code != http.StatusAccepted {
		t.Errorf("first: %d %s; other: %d %s; want 202 for both: only another client hung up", first.Code, first.Body, other.Code, other.Body)
	}
	if err := srv.Ready(t.Context()); err != nil {
		t.Errorf("Ready after a client hung up, with Kafka answering: %v", err)
	}
	// All 3 written: the record of the request whose client hung up may
	// still be on its way.
	f := &fixture{adm: kadm.NewClient(cl)}
	spatetest.Eventually(t, 10*time.Second, func() string {
		if hw := f.highWatermark(t); hw != 3 {
			return fmt.Sprintf("%d records written, want 3", hw)
		}
		return ""
	})
}
