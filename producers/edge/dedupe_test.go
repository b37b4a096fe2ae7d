package edge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/producers"
	"github.com/spate-io/spate/producers/edge"
	"github.com/spate-io/spate/proto/spate/v1/spatev1connect"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

func newDedupe(t *testing.T) *edge.Dedupe {
	t.Helper()
	rdb := spatetest.RedisClient(t)
	return edge.NewDedupe(rdb, time.Hour, spatetest.KeyPrefix(t))
}

// receiptsOf posts body and returns the status and the receipts, "p@o" each.
func (f *fixture) receiptsOf(t *testing.T, ct, body string) (int, []string) {
	t.Helper()
	code, b := f.post(t, ct, []byte(body))
	if code != http.StatusAccepted {
		return code, nil
	}
	var rs receipts
	if err := json.Unmarshal(b, &rs); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs.Receipts {
		out = append(out, fmt.Sprintf("%s:%d@%d", r.ID, r.Partition, r.Offset))
	}
	return code, out
}

// bearer is a transport that presents an API key.
type bearer string

func (k bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(k))
	return http.DefaultTransport.RoundTrip(r)
}

// TestDedupeIsPerKey: two keys allowed the same source send an event of the
// same id. Each is published, and each key's retry gets its own receipt: a
// key can neither keep another's events out nor read its receipts.
func TestDedupeIsPerKey(t *testing.T) {
	t.Parallel()
	const webKey = "spk_web_0123456789"
	ks, err := edge.LoadKeys("keys.yaml", []byte(fmt.Sprintf(`
keys:
  - name: checkout
    sha256: %s
    types: ["shop.order.*"]
    sources: ["/shop/*"]
  - name: web
    sha256: %s
    types: ["shop.order.*"]
    sources: ["/shop/*"]
`, edge.HashKey(checkoutKey), edge.HashKey(webKey))))
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, edge.Config{Dedupe: newDedupe(t), Keys: ks})
	as := func(key string) *fixture {
		g := *f
		g.client = &http.Client{Transport: bearer(key)}
		return &g
	}
	const one = "application/cloudevents+json"
	_, web := as(webKey).receiptsOf(t, one, orderFrom("order-42", "/shop/web"))
	_, checkout := as(checkoutKey).receiptsOf(t, one, orderFrom("order-42", "/shop/web"))
	_, again := as(checkoutKey).receiptsOf(t, one, orderFrom("order-42", "/shop/web"))
	if len(web) != 1 || len(checkout) != 1 || checkout[0] == web[0] || len(again) != 1 || again[0] != checkout[0] {
		t.Fatalf("receipts: web %v, checkout %v, checkout again %v; want two records, and checkout's retry answered with checkout's", web, checkout, again)
	}
	if hw := f.highWatermark(t); hw != 2 {
		t.Fatalf("high watermark %d, want 2 records", hw)
	}
}

// TestDedupeIsPerTopic: edges of two topics share a dedupe store. The same
// event sent to both is written to both topics, and each edge answers a
// retry with its own topic's receipt.
func TestDedupeIsPerTopic(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "orders-a", "orders-b")
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, producers.Opts()...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	dd := newDedupe(t)
	post := func(topic string) string {
		srv := edge.New(cl, schemas.Builtin(), edge.Config{Topic: topic, Dedupe: dd})
		req := httptest.NewRequest(http.MethodPost, "/v1/events", strings.NewReader(orderJSON("e1", "s")))
		req.Header.Set("Content-Type", "application/cloudevents+json")
		w := httptest.NewRecorder()
		srv.Handler().ServeHTTP(w, req)
		var rs struct{ Receipts []struct{ Topic string } }
		if err := json.Unmarshal(w.Body.Bytes(), &rs); w.Code != http.StatusAccepted || err != nil || len(rs.Receipts) != 1 {
			t.Fatalf("edge of %s: %d %s", topic, w.Code, w.Body)
		}
		return rs.Receipts[0].Topic
	}
	for _, topic := range []string{"orders-a", "orders-b", "orders-a", "orders-b"} {
		if got := post(topic); got != topic {
			t.Errorf("edge of %s answered with a receipt of %s", topic, got)
		}
	}
	ends, err := kadm.NewClient(cl).ListEndOffsets(t.Context(), "orders-a", "orders-b")
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"orders-a", "orders-b"} {
		if o, _ := ends.Lookup(topic, 0); o.Offset != 1 {
			t.Errorf("%s holds %d records, want 1", topic, o.Offset)
		}
	}
}

func TestRetriesArePublishedOnce(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{Dedupe: newDedupe(t)})
	const one, batch = "application/cloudevents+json", "application/cloudevents-batch+json"
	_, first := f.receiptsOf(t, one, orderJSON("e1", "s"))
	code, again := f.receiptsOf(t, one, orderJSON("e1", "s"))
	if code != 202 || len(first) != 1 || again[0] != first[0] {
		t.Fatalf("resent e1: %d %v, want 202 with the first receipt %v", code, again, first)
	}
	code, mixed := f.receiptsOf(t, batch, "["+orderJSON("e2", "s")+","+orderJSON("e1", "s")+","+orderJSON("e3", "s")+"]")
	if code != 202 || len(mixed) != 3 || mixed[1] != first[0] || mixed[0] == mixed[2] || !strings.HasPrefix(mixed[2], "e3:") {
		t.Fatalf("batch of e2, e1 (seen), e3: %d %v, want e1's first receipt in the middle", code, mixed)
	}
	// A request's receipts are kept together: a retry gets its event's own.
	if code, again := f.receiptsOf(t, one, orderJSON("e3", "s")); code != 202 || again[0] != mixed[2] {
		t.Fatalf("resent e3: %d %v, want 202 with its receipt from the batch %v", code, again, mixed[2])
	}
	otherSource := strings.Replace(orderJSON("e1", "s"), `"source":"/test"`, `"source":"/elsewhere"`, 1)
	if _, r := f.receiptsOf(t, one, otherSource); len(r) != 1 || r[0] == first[0] {
		t.Fatalf("e1 from another source: %v, want a new record (an event is source and id)", r)
	}
	if hw := f.highWatermark(t); hw != 4 {
		t.Fatalf("high watermark %d, want 4 records: e1, e2, e3, and e1 of the other source", hw)
	}
}

// An event twice in one request is refused as invalid, naming both, with
// dedupe or without: a retry would be refused again. The request leaves
// no claim behind.
func TestEventTwiceInOneRequestIsRefused(t *testing.T) {
	t.Parallel()
	for _, dedupe := range []bool{true, false} {
		t.Run(fmt.Sprint("dedupe ", dedupe), func(t *testing.T) {
			t.Parallel()
			cfg := edge.Config{}
			if dedupe {
				cfg.Dedupe = newDedupe(t)
			}
			f := start(t, cfg)
			code, _, p := f.postAs(t, "", "application/cloudevents-batch+json", "["+orderJSON("e1", "s")+","+orderJSON("e2", "s")+","+orderJSON("e1", "s")+"]")
			if code != 400 || len(p.Errors) != 1 || p.Errors[0].Index != 2 || p.Errors[0].Field != "id" || !strings.Contains(p.Errors[0].Detail, "event 0") {
				t.Fatalf("e1 twice in a batch: %d %+v, want 400 naming event 2's id as event 0's", code, p)
			}
			if hw := f.highWatermark(t); hw != 0 {
				t.Fatalf("high watermark %d, want no record", hw)
			}
			if code, r := f.receiptsOf(t, "application/cloudevents+json", orderJSON("e1", "s")); code != 202 {
				t.Fatalf("e1 alone afterwards: %d %v, want 202: the refused request must give its claim back", code, r)
			}
		})
	}
	t.Run("connect", func(t *testing.T) {
		t.Parallel()
		f := start(t, edge.Config{Dedupe: newDedupe(t)})
		req := protobufRequest(t, "p-1", "p-2", "p-1")
		req.Events[1].Type = "shop.payment.refunded.v9"
		_, err := spatev1connect.NewIngestServiceClient(http.DefaultClient, f.url).Publish(context.Background(), connect.NewRequest(req))
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "2 of 3 events are invalid") {
			t.Fatalf("p-1 twice over Connect, p-2 of an unknown type: %v, want InvalidArgument about 2 of 3 events", err)
		}
	})
}

// TestConflictOverConnectAndGRPC: the 409 of an event being published by
// another request reaches Connect and gRPC clients as Aborted (retry), not
// as code 0, which gRPC reads as OK.
func TestConflictOverConnectAndGRPC(t *testing.T) {
	t.Parallel()
	cl, _ := stalledProducer(t, 1)
	_, url := serveEdge(t, cl, edge.Config{Dedupe: newDedupe(t), PublishTimeout: 100 * time.Millisecond})
	// The broker never answers: the claim on held stays, in flight.
	first := spatev1connect.NewIngestServiceClient(http.DefaultClient, url)
	if _, err := first.Publish(context.Background(), connect.NewRequest(protobufRequest(t, "held"))); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("publish to a stalled broker: %v, want Unavailable", err)
	}
	h2c := h2cClient()
	for name, c := range map[string]spatev1connect.IngestServiceClient{
		"connect":  first,
		"gRPC":     spatev1connect.NewIngestServiceClient(h2c, url, connect.WithGRPC()),
		"gRPC-Web": spatev1connect.NewIngestServiceClient(http.DefaultClient, url, connect.WithGRPCWeb()),
	} {
		_, err := c.Publish(context.Background(), connect.NewRequest(protobufRequest(t, "held")))
		if connect.CodeOf(err) != connect.CodeAborted {
			t.Errorf("%s: an event another request is publishing: %v (code %v), want Aborted", name, err, connect.CodeOf(err))
		}
	}
}

// TestCloseKeepsClaimsOfUnsettledRecords: an edge stops while Kafka holds
// a publish. Close waits for Kafka to settle it: once it does, a retry to
// the next edge gets its receipt. If Close gives up first, the record may
// still be written, so its claim stays, and a retry gets 409 rather than a
// second record.
func TestCloseKeepsClaimsOfUnsettledRecords(t *testing.T) {
	t.Parallel()
	const one = "application/cloudevents+json"
	for _, settles := range []bool{true, false} {
		t.Run(fmt.Sprint("settled before the close ends ", settles), func(t *testing.T) {
			t.Parallel()
			c, unstall := spatetest.StalledKafka(t, topic, 1)
			dd := newDedupe(t)
			client := func() *kgo.Client {
				cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}, producers.Opts()...)...)
				if err != nil {
					t.Fatal(err)
				}
				return cl
			}
			srv1, url1 := serveEdge(t, client(), edge.Config{Dedupe: dd, PublishTimeout: 100 * time.Millisecond})
			f1 := &fixture{url: url1}
			if code, body := f1.post(t, one, []byte(orderJSON("e1", "s"))); code != 503 || !bytes.Contains(body, []byte("outcome-unknown")) {
				t.Fatalf("publish to a stalled broker: %d %s, want 503 outcome-unknown", code, body)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if settles {
				unstall()
			} else {
				cancel() // Close gives up at once
			}
			closeErr := srv1.Close(ctx)
			if settles != (closeErr == nil) {
				t.Fatalf("Close = %v", closeErr)
			}
			unstall()
			cl2 := client()
			t.Cleanup(cl2.Close)
			_, url2 := serveEdge(t, cl2, edge.Config{Dedupe: dd})
			f2 := &fixture{url: url2, adm: kadm.NewClient(cl2)}
			spatetest.Eventually(t, 30*time.Second, func() string {
				if hw := f2.highWatermark(t); hw != 1 {
					return fmt.Sprintf("high watermark %d, want e1's record", hw)
				}
				return ""
			})
			code, r := f2.receiptsOf(t, one, orderJSON("e1", "s"))
			switch {
			case settles && (code != 202 || len(r) != 1 || r[0] != "e1:0@0"):
				t.Fatalf("retry to the next edge: %d %v, want 202 with e1's receipt", code, r)
			case !settles && code != 409:
				t.Fatalf("retry to the next edge: %d %v, want 409: the outcome was not known when the edge closed", code, r)
			}
			if hw := f2.highWatermark(t); hw != 1 {
				t.Fatalf("high watermark %d after the retry, want 1: e1 written twice", hw)
			}
		})
	}
}

// TestPublishAfterClose: a request that reaches the edge once Close began
// is refused, stopping, without a claim: the next edge publishes its retry.
func TestPublishAfterClose(t *testing.T) {
	t.Parallel()
	dd := newDedupe(t)
	f := start(t, edge.Config{Dedupe: dd})
	if err := f.srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	code, body := f.post(t, "application/cloudevents+json", []byte(orderJSON("late", "s")))
	if code != 503 || !bytes.Contains(body, []byte("stopping")) {
		t.Fatalf("a publish after Close: %d %s, want 503 stopping", code, body)
	}
	next := start(t, edge.Config{Dedupe: dd})
	if code, r := next.receiptsOf(t, "application/cloudevents+json", orderJSON("late", "s")); code != 202 {
		t.Fatalf("its retry to the next edge: %d %v, want 202: the refused request claimed nothing", code, r)
	}
}

func TestConcurrentCopiesArePublishedOnce(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{Dedupe: newDedupe(t)})
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			code, r := f.receiptsOf(t, "application/cloudevents+json", orderJSON("same", "s"))
			mu.Lock()
			defer mu.Unlock()
			switch code {
			case 202:
				seen[r[0]]++
			case 409:
				seen["409"]++
			default:
				seen["other"]++
			}
		})
	}
	wg.Wait()
	delete(seen, "409")
	if len(seen) != 1 || seen["other"] > 0 {
		t.Fatalf("answers %v, want 202s with one receipt and 409s", seen)
	}
	if hw := f.highWatermark(t); hw != 1 {
		t.Fatalf("high watermark %d, want 1 record", hw)
	}
}

func TestTimedOutPublishKeepsItsClaim(t *testing.T) {
	t.Parallel()
	cl, unstall := stalledProducer(t, 1)
	// Long enough for the record to reach the (stalled) broker even on a
	// loaded machine: one that times out before it was sent is known not to
	// be written, and its claim is given back.
	_, url := serveEdge(t, cl, edge.Config{Dedupe: newDedupe(t), PublishTimeout: 2 * time.Second})
	f := &fixture{url: url}
	const one = "application/cloudevents+json"

	if code, body := f.post(t, one, []byte(orderJSON("e1", "s"))); code != 503 || !bytes.Contains(body, []byte("outcome-unknown")) {
		t.Fatalf("publish against a stalled broker: %d %s, want 503 (outcome unknown)", code, body)
	}
	// Its record may still be written: a retry must not write another.
	if code, body := f.post(t, one, []byte(orderJSON("e1", "s"))); code != 409 {
		t.Fatalf("retry while the first record is unsettled: %d %s, want 409", code, body)
	}
	unstall()
	var r []string
	spatetest.Eventually(t, 30*time.Second, func() string {
		code, rs := f.receiptsOf(t, one, orderJSON("e1", "s"))
		if code != 202 {
			return fmt.Sprintf("retry after the broker recovered: status %d", code)
		}
		r = rs
		return ""
	})
	if r[0] != "e1:0@0" {
		t.Fatalf("receipt %v, want the first (and only) record, e1 at 0@0", r)
	}
	f.adm = kadm.NewClient(cl)
	if hw := f.highWatermark(t); hw != 1 {
		t.Fatalf("high watermark %d, want 1 record", hw)
	}
}

// Many requests at once, which the dedupe store serves together, each
// copy of an event sent twice at once: each request gets the claim and the
// receipt of its own events, and each event is published once.
func TestManyConcurrentRequestsEachGetTheirOwnReceipts(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{Dedupe: newDedupe(t)})
	const ids = 100
	var mu sync.Mutex
	receiptsByID := map[string]map[string]bool{}
	var wg sync.WaitGroup
	for i := range ids {
		id := fmt.Sprint("e-", i)
		for range 2 { // each event twice, at once
			wg.Go(func() {
				code, r := f.receiptsOf(t, "application/cloudevents+json", orderJSON(id, "s"))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case code == 202 && len(r) == 1 && strings.HasPrefix(r[0], id+":"):
					if receiptsByID[id] == nil {
						receiptsByID[id] = map[string]bool{}
					}
					receiptsByID[id][r[0]] = true
				case code != 409:
					t.Errorf("%s: %d %v, want 202 with its own receipt, or 409", id, code, r)
				}
			})
		}
	}
	wg.Wait()
	offsets := map[string]bool{}
	for i := range ids {
		rs := receiptsByID[fmt.Sprint("e-", i)]
		if len(rs) != 1 {
			t.Errorf("e-%d got receipts %v, want exactly one", i, rs)
		}
		for r := range rs {
			at := r[strings.Index(r, ":"):]
			if offsets[at] {
				t.Errorf("receipt %s: another event has the record %s", r, at)
			}
			offsets[at] = true
		}
	}
	if hw := f.highWatermark(t); hw != ids {
		t.Fatalf("high watermark %d, want %d records: each event once", hw, ids)
	}
}

// A claim whose reply was lost is retried by go-redis and runs a second
// time; it must know the claim it made the first time as its own, not
// answer 409 and leave the event claimed for the whole window.
func TestClaimRetriedAfterLostReply(t *testing.T) {
	t.Parallel()
	opts, err := redis.ParseURL(spatetest.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := spatetest.NewReplyDropper(t, opts.Addr, spatetest.DropSetNXReply)
	viaProxy := *opts
	viaProxy.Addr = proxy.Addr()
	rdb := redis.NewClient(&viaProxy) // go-redis retries on a lost connection by default
	t.Cleanup(func() { rdb.Close() })
	f := start(t, edge.Config{Dedupe: edge.NewDedupe(rdb, time.Hour, spatetest.KeyPrefix(t))})

	code, first := f.receiptsOf(t, "application/cloudevents+json", orderJSON("e1", "s"))
	if !proxy.Dropped() {
		t.Fatal("the proxy dropped no reply: the test proved nothing")
	}
	if code != 202 || len(first) != 1 {
		t.Fatalf("publish whose claim reply was lost: %d %v, want 202", code, first)
	}
	if code, again := f.receiptsOf(t, "application/cloudevents+json", orderJSON("e1", "s")); code != 202 || again[0] != first[0] {
		t.Fatalf("resent: %d %v, want 202 with the first receipt %v", code, again, first)
	}
	if hw := f.highWatermark(t); hw != 1 {
		t.Fatalf("high watermark %d, want 1 record", hw)
	}
}

// TestDedupeStoreDownPublishesNothing: with its dedupe store not answering,
// the edge answers 503 dedupe-unavailable with Retry-After and writes
// nothing to Kafka, single events and batches alike.
func TestDedupeStoreDownPublishesNothing(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close() // nothing listens there: every command fails
	rdb := redis.NewClient(&redis.Options{Addr: down, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	f := start(t, edge.Config{Dedupe: edge.NewDedupe(rdb, time.Hour, spatetest.KeyPrefix(t))})
	const one, batch = "application/cloudevents+json", "application/cloudevents-batch+json"
	for _, req := range []struct{ ct, body string }{
		{one, orderJSON("e1", "s")},
		{batch, "[" + orderJSON("e2", "s") + "," + orderJSON("e3", "s") + "]"},
	} {
		resp, err := f.httpClient().Post(f.url+"/v1/events", req.ct, strings.NewReader(req.body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "dedupe-unavailable") {
			t.Fatalf("%s with the dedupe store down: %d %s (Retry-After %q), want 503 dedupe-unavailable with Retry-After",
				req.ct, resp.StatusCode, b, resp.Header.Get("Retry-After"))
		}
	}
	if hw := f.highWatermark(t); hw != 0 {
		t.Fatalf("high watermark %d with the dedupe store down, want nothing written", hw)
	}
}

// holdWrites is a go-redis hook that holds back every pipeline writing
// receipts until release is closed.
type holdWrites struct{ release chan struct{} }

func (h holdWrites) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h holdWrites) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h holdWrites) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if args := c.Args(); len(args) >= 2 && args[0] == "set" && strings.Contains(fmt.Sprint(args[1]), "dedupe-receipts:") {
				<-h.release
				break
			}
		}
		return next(ctx, cmds)
	}
}

// TestCloseWaitsForReceiptsBeingRecorded: receipts are recorded while the
// answer goes out, and Close waits for them: here, with their write held
// back, until it gives up (its context ended, and 5 s more), saying so.
func TestCloseWaitsForReceiptsBeingRecorded(t *testing.T) {
	t.Parallel()
	rdb := spatetest.RedisClient(t)
	hold := holdWrites{release: make(chan struct{})}
	rdb.AddHook(hold)
	defer close(hold.release)
	f := start(t, edge.Config{Dedupe: edge.NewDedupe(rdb, time.Hour, spatetest.KeyPrefix(t))})
	if code, body := f.post(t, "application/cloudevents+json", []byte(orderJSON("e1", "s"))); code != http.StatusAccepted {
		t.Fatalf("publish: %d %s", code, body)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.srv.Close(ctx); err == nil || !strings.Contains(err.Error(), "outcomes not recorded in the dedupe store") {
		t.Fatalf("Close with the receipts' write held back: %v, want it to say they were not recorded", err)
	}
}
