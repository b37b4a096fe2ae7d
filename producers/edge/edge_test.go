package edge_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/producers"
	"github.com/spate-io/spate/producers/edge"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/proto/spate/v1/spatev1connect"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

const topic = "events"

func TestMain(m *testing.M) { spatetest.Main(m) }

type fixture struct {
	url    string
	cl     *kgo.Client
	adm    *kadm.Client
	srv    *edge.Server
	client *http.Client // zero: http.DefaultClient
}

// httpClient is the client the fixture's requests go through.
func (f *fixture) httpClient() *http.Client {
	if f.client != nil {
		return f.client
	}
	return http.DefaultClient
}

// start runs an edge on 127.0.0.1 against a fresh broker.
func start(t *testing.T, cfg edge.Config) *fixture {
	t.Helper()
	brokers := spatetest.Kafka(t, 3, topic)
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, producers.Opts()...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	srv, url := serveEdge(t, cl, cfg)
	return &fixture{url: url, cl: cl, adm: kadm.NewClient(cl), srv: srv}
}

// serveEdge serves an edge publishing with cl to topic on 127.0.0.1 until
// the test ends, and returns it with its base URL.
func serveEdge(t *testing.T, cl *kgo.Client, cfg edge.Config) (*edge.Server, string) {
	t.Helper()
	cfg.Topic = topic
	srv := edge.New(cl, schemas.Builtin(), cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	if cfg.TLS != nil {
		return srv, "https://" + ln.Addr().String()
	}
	return srv, "http://" + ln.Addr().String()
}

// highWatermark is the sum of the topic's end offsets.
func (f *fixture) highWatermark(t *testing.T) int64 {
	t.Helper()
	ends, err := f.adm.ListEndOffsets(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

func (f *fixture) post(t *testing.T, ct string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := f.httpClient().Post(f.url+"/v1/events", ct, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func orderJSON(id, subject string) string {
	return fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"/test","type":"shop.order.placed.v1","subject":%q,`+
		`"tenant":"acme","data":{"orderId":%q,"customerId":"c-1","amountCents":4200,"currency":"EUR"}}`, id, subject, subject)
}

type receipts struct {
	Receipts []struct {
		ID        string `json:"id"`
		Topic     string `json:"topic"`
		Partition int32  `json:"partition"`
		Offset    int64  `json:"offset"`
	} `json:"receipts"`
}

func TestPublishJSONWritesBinaryModeRecord(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{})
	code, body := f.post(t, "application/cloudevents+json", []byte(orderJSON("e-1", "order-1")))
	if code != http.StatusAccepted {
		t.Fatalf("status %d (%s), want 202", code, body)
	}
	var rs receipts
	if err := json.Unmarshal(body, &rs); err != nil || len(rs.Receipts) != 1 || rs.Receipts[0].ID != "e-1" || rs.Receipts[0].Topic != topic {
		t.Fatalf("receipts %s (%v), want one for e-1 on %s", body, err, topic)
	}

	// The record at the receipt is the event in CloudEvents binary mode.
	r := fetch(t, f, rs.Receipts[0].Partition, rs.Receipts[0].Offset)
	if string(r.Key) != "order-1" {
		t.Errorf("key %q, want the subject order-1", r.Key)
	}
	ev, err := cekafka.Event(r)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Id != "e-1" || ev.Type != "shop.order.placed.v1" || ev.Source != "/test" || ev.Extensions["tenant"] != "acme" ||
		ev.Datacontenttype != schemas.ContentTypeProtobuf || ev.Time == nil {
		t.Errorf("event %v: attributes not carried", ev)
	}
	var m shopv1.OrderPlaced
	if err := proto.Unmarshal(r.Value, &m); err != nil || m.AmountCents != 4200 || m.OrderId != "order-1" {
		t.Errorf("value decodes to %v (%v), want the order with 4200 cents", &m, err)
	}
}

// fetch reads the record at partition/offset.
func fetch(t *testing.T, f *fixture, partition int32, offset int64) *kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(f.cl.OptValue(kgo.SeedBrokers).([]string)...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {partition: kgo.NewOffset().At(offset)}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fs := cl.PollRecords(ctx, 1)
	if err := fs.Err(); err != nil {
		t.Fatal(err)
	}
	return fs.Records()[0]
}

func TestPublishBatchKeepsOrder(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{})
	batch := "[" + orderJSON("a", "s") + "," + orderJSON("b", "s") + "," + orderJSON("c", "s") + "]"
	code, body := f.post(t, "application/cloudevents-batch+json", []byte(batch))
	if code != http.StatusAccepted {
		t.Fatalf("status %d (%s), want 202", code, body)
	}
	var rs receipts
	if err := json.Unmarshal(body, &rs); err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, r := range rs.Receipts {
		got = append(got, r.ID)
		if i > 0 && (r.Partition != rs.Receipts[0].Partition || r.Offset != rs.Receipts[i-1].Offset+1) {
			t.Errorf("receipt %d at %d@%d: one subject must go to one partition in order", i, r.Partition, r.Offset)
		}
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, got); diff != "" {
		t.Errorf("receipt ids (-want +got):\n%s", diff)
	}
}

func protobufRequest(t *testing.T, ids ...string) *spatev1.PublishRequest {
	t.Helper()
	req := &spatev1.PublishRequest{}
	for _, id := range ids {
		data, err := proto.Marshal(&shopv1.PaymentCaptured{PaymentId: id, OrderId: "o-1", AmountCents: 99, Currency: "EUR"})
		if err != nil {
			t.Fatal(err)
		}
		req.Events = append(req.Events, &spatev1.Event{Id: id, Source: "/pay", Type: "shop.payment.captured.v1", Subject: "o-1", Data: data})
	}
	return req
}

func TestPublishProtobuf(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{})
	body, err := proto.Marshal(protobufRequest(t, "p-1", "p-2"))
	if err != nil {
		t.Fatal(err)
	}
	code, resp := f.post(t, "application/x-protobuf", body)
	if code != http.StatusAccepted {
		t.Fatalf("status %d (%s), want 202", code, resp)
	}
	var out spatev1.PublishResponse
	if err := proto.Unmarshal(resp, &out); err != nil || len(out.Receipts) != 2 || out.Receipts[1].Id != "p-2" {
		t.Fatalf("response %v (%v), want receipts for p-1 and p-2", &out, err)
	}
}

// h2cClient is an HTTP client that speaks cleartext HTTP/2, as gRPC needs.
func h2cClient() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

func TestConnectAndGRPC(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{})
	h2c := h2cClient()
	for name, c := range map[string]spatev1connect.IngestServiceClient{
		"connect over HTTP/1.1": spatev1connect.NewIngestServiceClient(http.DefaultClient, f.url),
		"gRPC over h2c":         spatev1connect.NewIngestServiceClient(h2c, f.url, connect.WithGRPC()),
		// Compressed: a Connect body as a whole, a gRPC one message by
		// message.
		"connect, gzip":  spatev1connect.NewIngestServiceClient(http.DefaultClient, f.url, connect.WithSendGzip()),
		"gRPC, gzip":     spatev1connect.NewIngestServiceClient(h2c, f.url, connect.WithGRPC(), connect.WithSendGzip()),
		"gRPC-Web, gzip": spatev1connect.NewIngestServiceClient(http.DefaultClient, f.url, connect.WithGRPCWeb(), connect.WithSendGzip()),
	} {
		resp, err := c.Publish(context.Background(), connect.NewRequest(protobufRequest(t, "c-1-"+name)))
		if err != nil || len(resp.Msg.Receipts) != 1 || resp.Msg.Receipts[0].Id != "c-1-"+name {
			t.Errorf("%s: Publish = %v, %v; want one receipt", name, resp, err)
		}
		bad := protobufRequest(t, "c-2-"+name)
		bad.Events[0].Type = "shop.nothing.v1"
		_, err = c.Publish(context.Background(), connect.NewRequest(bad))
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "type") {
			t.Errorf("%s: Publish(unknown type) = %v, want InvalidArgument naming the type", name, err)
		}
	}
}

func TestBadInputIsRefusedAndNeverReachesKafka(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{MaxBodyBytes: 8 << 10})
	before := f.highWatermark(t)

	for _, tc := range []struct {
		name       string
		ct, body   string
		wantStatus int
		wantField  string // in the problem's errors
		wantDetail string // in the problem's detail
	}{
		{"malformed JSON", "application/cloudevents+json", `{"id":`, 400, "", "not valid JSON"},
		{"empty body", "application/cloudevents+json", " ", 400, "", "not valid JSON"},
		{"unknown type", "application/cloudevents+json", strings.Replace(orderJSON("x", "s"), "shop.order.placed.v1", "shop.order.lost.v1", 1), 400, "type", ""},
		{"payload does not match", "application/cloudevents+json", strings.Replace(orderJSON("x", "s"), `"amountCents":4200`, `"amountCents":"lots"`, 1), 400, "data", ""},
		{"payload breaks a constraint", "application/cloudevents+json", strings.Replace(orderJSON("x", "s"), `"currency":"EUR"`, `"currency":"euro"`, 1), 400, "data.currency", ""},
		{"unknown payload field", "application/cloudevents+json", strings.Replace(orderJSON("x", "s"), `"currency":"EUR"`, `"currency":"EUR","discount":1`, 1), 400, "data", ""},
		{"missing id", "application/cloudevents+json", strings.Replace(orderJSON("x", "s"), `"id":"x",`, "", 1), 400, "id", ""},
		{"oversize body", "application/cloudevents+json", `{"pad":"` + strings.Repeat("x", 9<<10) + `"}`, 413, "", "exceeds"},
		{"unsupported media type", "text/plain", "hello", 415, "", "Content-Type"},
		{"one bad event spoils the batch", "application/cloudevents-batch+json", "[" + orderJSON("ok", "s") + `,{"specversion":"1.0"}]`, 400, "source", ""},
		{"empty batch", "application/cloudevents-batch+json", "[]", 400, "", "no events"},
		{"duplicate attribute", "application/cloudevents+json", strings.Replace(orderJSON("x", "s"), `"id":"x"`, `"id":"x","id":"y"`, 1), 400, "", "duplicate"},
		{"duplicate attribute in a batch", "application/cloudevents-batch+json", "[" + strings.Replace(orderJSON("x", "s"), `"id":"x"`, `"id":"x","id":"y"`, 1) + "]", 400, "", "duplicate"},
		{"duplicate payload field", "application/cloudevents+json", strings.Replace(orderJSON("x", "s"), `"currency":"EUR"`, `"currency":"EUR","currency":"USD"`, 1), 400, "", "duplicate"},
		{"one payload field by both its names", "application/cloudevents+json", strings.Replace(orderJSON("x", "s"), `"currency":"EUR"`, `"currency":"EUR","customer_id":"c-2"`, 1), 400, "data", ""},
		{"invalid UTF-8", "application/cloudevents+json", strings.Replace(orderJSON("x", "s"), `"source":"/test"`, "\"source\":\"/t\xffst\"", 1), 400, "", "UTF-8"},
		{"two top-level values", "application/cloudevents+json", orderJSON("x", "s") + orderJSON("y", "s"), 400, "", "not valid JSON"},
		{"NaN", "application/cloudevents+json", strings.Replace(orderJSON("x", "s"), `4200`, `NaN`, 1), 400, "", "not valid JSON"},
		{"deep nesting", "application/cloudevents+json", strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000), 413, "", "exceeds"},
	} {
		code, body := f.post(t, tc.ct, []byte(tc.body))
		var p edge.Problem
		if err := json.Unmarshal(body, &p); err != nil {
			t.Errorf("%s: body %q is not problem JSON: %v", tc.name, body, err)
			continue
		}
		if code != tc.wantStatus || p.Status != tc.wantStatus {
			t.Errorf("%s: status %d (problem %d), want %d; body %s", tc.name, code, p.Status, tc.wantStatus, body)
		}
		if tc.wantDetail != "" && !strings.Contains(p.Detail, tc.wantDetail) {
			t.Errorf("%s: detail %q, want it to mention %q", tc.name, p.Detail, tc.wantDetail)
		}
		if tc.wantField != "" && !hasField(p.Errors, tc.wantField) {
			t.Errorf("%s: errors %+v, want one for field %q", tc.name, p.Errors, tc.wantField)
		}
	}
	if after := f.highWatermark(t); after != before {
		t.Fatalf("high watermark moved from %d to %d: refused events reached Kafka", before, after)
	}
}

func hasField(errs []edge.FieldError, field string) bool {
	for _, e := range errs {
		if e.Field == field && e.Detail != "" {
			return true
		}
	}
	return false
}

func TestBodyEncodingAndHeaderLimits(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{MaxBodyBytes: 64 << 10})
	before := f.highWatermark(t)
	gz := func(b []byte) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	send := func(enc string, body []byte, header string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, f.url+"/v1/events", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/cloudevents+json")
		req.Close = true // a connection each: refusals leave bodies unread
		if enc != "" {
			req.Header.Set("Content-Encoding", enc)
		}
		if header != "" {
			req.Header.Set("X-Padding", header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	bomb := gz(bytes.Repeat([]byte(" "), 64<<20)) // 64 MiB of spaces in ~64 KiB... less: gzip packs it to ~65 KiB
	if code, body := send("gzip", bomb[:min(len(bomb), 60<<10)], ""); code != 413 && code != 400 {
		t.Errorf("gzip bomb: %d %s, want 413 (or 400 for the truncated stream)", code, body)
	}
	big := gz([]byte(strings.Replace(orderJSON("big", "s"), `"currency":"EUR"`, `"currency":"`+strings.Repeat("E", 100<<10)+`"`, 1)))
	if code, body := send("gzip", big, ""); code != 413 || !strings.Contains(body, "decompressed body exceeds") {
		t.Errorf("gzip over the limit once decompressed: %d %s, want 413", code, body)
	}
	if code, body := send("br", []byte(orderJSON("x", "s")), ""); code != 415 || !strings.Contains(body, "Content-Encoding") {
		t.Errorf("unknown encoding: %d %s, want 415", code, body)
	}
	if code, body := send("gzip", []byte("not gzip"), ""); code != 400 {
		t.Errorf("a body that is not gzip: %d %s, want 400", code, body)
	}
	if code, _ := send("", []byte(orderJSON("x", "s")), strings.Repeat("h", 70<<10)); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("70 KiB of headers: %d, want 431", code)
	}
	if after := f.highWatermark(t); after != before {
		t.Fatalf("high watermark moved from %d to %d", before, after)
	}
	if code, body := send("gzip", gz([]byte(orderJSON("ok", "s"))), ""); code != 202 {
		t.Errorf("a gzip event: %d %s, want 202", code, body)
	}
}

// TestRefusalNamesEveryError: an error found while reading an event's JSON
// (a time that does not parse) does not hide the errors validation finds
// in its other fields, nor in other events.
func TestRefusalNamesEveryError(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{})
	noID := strings.Replace(orderJSON("x", "s"), `"id":"x",`, "", 1)
	badTime := strings.Replace(orderJSON("y", "s"), `"id":"y"`, `"id":"y","time":"yesterday"`, 1)
	both := strings.Replace(noID, `"specversion"`, `"time":"yesterday","specversion"`, 1)
	for _, tc := range []struct {
		name, ct, body string
		want           []string // index:field
		detail         string
	}{
		{"batch", "application/cloudevents-batch+json", "[" + orderJSON("ok", "s") + "," + noID + "," + badTime + "]", []string{"1:id", "2:time"}, "2 of 3 events"},
		{"one event", "application/cloudevents+json", both, []string{"0:id", "0:time"}, "1 of 1 events"},
		// The payload validation would see is not the one sent: no
		// errors of its own.
		{"bad data_base64", "application/cloudevents+json", `{"specversion":"1.0","id":"z","source":"/test","type":"shop.order.placed.v1","subject":"s","data_base64":"!!!"}`, []string{"0:data_base64"}, "1 of 1 events"},
	} {
		code, body := f.post(t, tc.ct, []byte(tc.body))
		var p edge.Problem
		if err := json.Unmarshal(body, &p); err != nil || code != 400 {
			t.Fatalf("%s: %d %s, want a 400 problem", tc.name, code, body)
		}
		var got []string
		for _, e := range p.Errors {
			got = append(got, fmt.Sprintf("%d:%s", e.Index, e.Field))
		}
		slices.Sort(got)
		if diff := cmp.Diff(tc.want, got); diff != "" || !strings.Contains(p.Detail, tc.detail) {
			t.Errorf("%s: detail %q, errors (-want +got):\n%s", tc.name, p.Detail, diff)
		}
	}
}
