package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/producers"
	"github.com/spate-io/spate/producers/edge"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

// TestDedupeResolve: an edge stops while Kafka holds two publishes of key
// alpha. The first was sent, and Kafka writes it once it answers; the
// second waited behind it and is never written. Both claims stay, and
// retries get 409. spate dedupe show tells them apart from a published
// event and from one not held. resolve leaves claims younger than
// --older-than alone, and --dry-run changes nothing; then it gives the
// first the receipt of its record and releases the second, although key
// beta published an event of the same source and id meanwhile. Retries to
// the next edge get the first's receipt and publish the second: each
// event is in Kafka once for each key.
func TestDedupeResolve(t *testing.T) {
	t.Parallel()
	const topic = producers.DefaultTopic
	c, unstall := spatetest.StalledKafka(t, topic, 1)
	brokers := strings.Join(c.ListenAddrs(), ",")
	redisURL := spatetest.Redis(t)
	source := "/dedupe-resolve/" + spatetest.KeyPrefix(t) // ids no other test uses, in the store's own prefix
	client := func() *kgo.Client {
		cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}, producers.Opts()...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	dedupe := edge.NewDedupe(spatetest.RedisClientOf(t, redisURL), time.Hour, "")
	keys, err := edge.LoadKeys("keys.yaml", fmt.Appendf(nil, "keys:\n  - {name: alpha, sha256: %s, types: [\"shop.*\"]}\n  - {name: beta, sha256: %s, types: [\"shop.*\"]}\n",
		edge.HashKey("spk_alpha_0123456789"), edge.HashKey("spk_beta_0123456789")))
	if err != nil {
		t.Fatal(err)
	}
	postAs := func(key, url, id string) (int, string) {
		t.Helper()
		body := fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":%q,"type":"shop.order.placed.v1","subject":"s",`+
			`"data":{"orderId":"o","customerId":"c","amountCents":1,"currency":"EUR","items":[{"sku":"k","quantity":1,"priceCents":1}]}}`, id, source)
		req, err := http.NewRequest(http.MethodPost, url+"/v1/events", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/cloudevents+json")
		req.Header.Set("Authorization", "Bearer spk_"+key+"_0123456789")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	post := func(url, id string) (int, string) { return postAs("alpha", url, id) }

	srv1, url1 := serveTestEdge(t, client(), edge.Config{Topic: topic, Keys: keys, Dedupe: dedupe, PublishTimeout: 100 * time.Millisecond})
	for _, id := range []string{"e1", "e2"} {
		if code, body := post(url1, id); code != http.StatusServiceUnavailable || !strings.Contains(body, "outcome-unknown") {
			t.Fatalf("publish %s to a stalled broker: %d %s, want 503 outcome-unknown", id, code, body)
		}
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel() // the edge stops at once, with Kafka yet to answer
	if err := srv1.Close(gone); err == nil {
		t.Fatal("Close settled every record of a stalled broker")
	}
	unstall()
	cl2 := client()
	highWatermark := func() int64 {
		t.Helper()
		ends, err := kadm.NewClient(cl2).ListEndOffsets(context.Background(), topic)
		if err != nil {
			t.Fatal(err)
		}
		o, _ := ends.Lookup(topic, 0)
		return o.Offset
	}
	spatetest.Eventually(t, 30*time.Second, func() string {
		if hw := highWatermark(); hw != 1 {
			return fmt.Sprintf("high watermark %d, want e1's record alone", hw)
		}
		return ""
	})
	_, url2 := serveTestEdge(t, cl2, edge.Config{Topic: topic, Keys: keys, Dedupe: dedupe})
	for _, id := range []string{"e1", "e2"} {
		if code, body := post(url2, id); code != http.StatusConflict {
			t.Fatalf("retry of %s to the next edge: %d %s, want 409: its claim stayed", id, code, body)
		}
	}
	if code, body := post(url2, "e3"); code != http.StatusAccepted {
		t.Fatalf("publish e3: %d %s", code, body)
	}
	if code, body := postAs("beta", url2, "e2"); code != http.StatusAccepted {
		t.Fatalf("publish e2 as beta: %d %s", code, body)
	}

	spate := func(args ...string) string {
		t.Helper()
		out, errs, err := runSpate(context.Background(), append(args, "--key", "alpha", "--dedupe-redis-url", redisURL)...)
		if err != nil {
			t.Fatalf("spate %s: %v\n%s%s", strings.Join(args, " "), err, out, errs)
		}
		return out
	}
	events := []string{source, "e1", source, "e2", source, "e3", source, "e4"}
	// e3's receipt is recorded while its answer goes out: show reads the
	// store from outside the edge, and may come first.
	spatetest.Eventually(t, 10*time.Second, func() string {
		show := spate(append([]string{"dedupe", "show"}, events...)...)
		for _, want := range []string{
			`e1\s+claimed\s+at \S+Z, \d+s ago\s+for (1h0m0s|59m\d+s)`,
			`e2\s+claimed\s+at \S+Z, \d+s ago\s+for (1h0m0s|59m\d+s)`,
			`e3\s+published\s+spate\.events/0@1\s+for (1h0m0s|59m\d+s)`,
			`e4\s+-\s+-\s+-`,
		} {
			if !regexp.MustCompile(want).MatchString(show) {
				return fmt.Sprintf("spate dedupe show: no line matches %s in\n%s", want, show)
			}
		}
		return ""
	})

	resolve := append([]string{"dedupe", "resolve", "--kafka-brokers", brokers}, events[:4]...)
	out := spate(resolve...)
	if n := strings.Count(out, "left alone, a running edge may still settle it (--older-than 10m0s)"); n != 2 {
		t.Errorf("resolve of claims seconds old:\n%s\nwant both left alone", out)
	}
	out = spate(append(resolve, "--older-than", "0", "--dry-run")...)
	for _, want := range []string{
		source + " e1: in Kafka at spate.events/0@0: would take that receipt (dry run)",
		source + " e2: not in Kafka: would release the claim (dry run)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("resolve --dry-run:\n%s\nwant %q", out, want)
		}
	}
	if code, _ := post(url2, "e1"); code != http.StatusConflict {
		t.Fatalf("retry of e1 after a dry run: %d, want 409 still", code)
	}
	out = spate(append(resolve, "--older-than", "0")...)
	for _, want := range []string{
		source + " e1: in Kafka at spate.events/0@0: retries now get that receipt",
		source + " e2: not in Kafka: claim released, the next retry publishes it",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("resolve:\n%s\nwant %q", out, want)
		}
	}

	receipt := func(id string) string {
		t.Helper()
		code, body := post(url2, id)
		var rs struct {
			Receipts []struct {
				Partition int32
				Offset    int64
			}
		}
		if code != http.StatusAccepted || json.Unmarshal([]byte(body), &rs) != nil || len(rs.Receipts) != 1 {
			t.Fatalf("retry of %s after resolve: %d %s, want 202 with its receipt", id, code, body)
		}
		return fmt.Sprintf("%d@%d", rs.Receipts[0].Partition, rs.Receipts[0].Offset)
	}
	for _, tc := range []struct{ id, want string }{{"e1", "0@0"}, {"e2", "0@3"}, {"e2", "0@3"}, {"e1", "0@0"}} {
		if got := receipt(tc.id); got != tc.want {
			t.Errorf("retry of %s: receipt %s, want %s", tc.id, got, tc.want)
		}
	}
	if hw := highWatermark(); hw != 4 {
		t.Errorf("high watermark %d, want 4: alpha's e1, e3, beta's e2, then alpha's, each once", hw)
	}
	out = spate(append(resolve, "--older-than", "0")...)
	if !strings.Contains(out, source+" e1: published at spate.events/0@0: nothing to resolve") ||
		!strings.Contains(out, source+" e2: published at spate.events/0@3: nothing to resolve") {
		t.Errorf("resolve once settled:\n%s\nwant both published", out)
	}
}

// serveTestEdge serves an edge of cl on a loopback port until the test
// ends, and returns it and its URL.
func serveTestEdge(t *testing.T, cl *kgo.Client, cfg edge.Config) (*edge.Server, string) {
	t.Helper()
	srv := edge.New(cl, schemas.Builtin(), cfg)
	return srv, serveOnLoopback(t, srv)
}

// serveOnLoopback serves srv on a loopback port until the test ends, and
// returns its URL.
func serveOnLoopback(t *testing.T, srv *edge.Server) string {
	t.Helper()
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
	return "http://" + ln.Addr().String()
}

// TestDedupeNeedsPairs: events are named by source and id, in pairs.
func TestDedupeNeedsPairs(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"dedupe", "show"}, {"dedupe", "resolve", "/shop"}, {"dedupe", "show", "/shop", "o-1", "/shop"}} {
		_, _, err := runSpate(context.Background(), args...)
		if err == nil || !strings.Contains(err.Error(), "in pairs") {
			t.Errorf("spate %s: %v, want an error asking for pairs", strings.Join(args, " "), err)
		}
	}
}

// resolveFixture is a topic, and a dedupe store in which a test leaves
// claims as an edge that stopped leaves them.
type resolveFixture struct {
	t        *testing.T
	brokers  string
	redisURL string
	dedupe   *edge.Dedupe
	source   string
	cl       *kgo.Client
}

// newResolveFixture's topic has one partition and the configs given.
func newResolveFixture(t *testing.T, configs map[string]*string) *resolveFixture {
	t.Helper()
	brokers := spatetest.Kafka(t, 1)
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, producers.Opts()...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	if _, err := kadm.NewClient(cl).CreateTopic(context.Background(), 1, 1, configs, producers.DefaultTopic); err != nil {
		t.Fatal(err)
	}
	url := spatetest.Redis(t)
	return &resolveFixture{t: t, brokers: strings.Join(brokers, ","), redisURL: url,
		dedupe: edge.NewDedupe(spatetest.RedisClientOf(t, url), time.Hour, ""), source: "/resolve/" + spatetest.KeyPrefix(t), cl: cl}
}

// claim leaves the claim of event id an edge made at `at`, and returns its
// key.
func (x *resolveFixture) claim(id string, at time.Time) string {
	return x.claimAs(id, strconv.FormatInt(at.UnixMilli(), 36)+".0123456789ab") // as newToken makes them
}

// claimAs leaves the claim of event id under token.
func (x *resolveFixture) claimAs(id, token string) string {
	x.t.Helper()
	hs, err := x.dedupe.Held(context.Background(), producers.DefaultTopic, "", []*spatev1.Event{{Source: x.source, Id: id}})
	if err != nil {
		x.t.Fatal(err)
	}
	if err := spatetest.RedisClientOf(x.t, x.redisURL).Set(context.Background(), hs[0].Key, "pending:"+token+":0", time.Hour).Err(); err != nil {
		x.t.Fatal(err)
	}
	return hs[0].Key
}

// produce writes the record of event id, stamped ts.
func (x *resolveFixture) produce(id string, ts time.Time) {
	x.t.Helper()
	r := cekafka.Record(producers.DefaultTopic, &spatev1.Event{Source: x.source, Id: id, Type: "shop.order.placed.v1"})
	r.Timestamp = ts
	if err := x.cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
		x.t.Fatal(err)
	}
}

func (x *resolveFixture) resolve(ids ...string) string {
	x.t.Helper()
	args := []string{"dedupe", "resolve", "--older-than", "0", "--dedupe-redis-url", x.redisURL, "--kafka-brokers", x.brokers}
	for _, id := range ids {
		args = append(args, x.source, id)
	}
	out, errs, err := runSpate(context.Background(), args...)
	if err != nil {
		x.t.Fatalf("spate %s: %v\n%s%s", strings.Join(args, " "), err, out, errs)
	}
	return out
}

func (x *resolveFixture) holds(key string) string {
	x.t.Helper()
	v, err := spatetest.RedisClientOf(x.t, x.redisURL).Get(context.Background(), key).Result()
	if err != nil {
		x.t.Fatal(err)
	}
	return v
}

// TestDedupeResolveReadsToTheEnd: a claimed event's record is found after
// a record stamped later (another edge's clock ahead), when stamped long
// after its claim (by a broker's clock, LogAppendTime), and when stamped
// a little before it (a broker's clock behind).
func TestDedupeResolveReadsToTheEnd(t *testing.T) {
	t.Parallel()
	x := newResolveFixture(t, nil)
	at := time.Now().Add(-20 * time.Minute)
	for _, id := range []string{"e1", "e2", "e3"} {
		x.claim(id, at)
	}
	x.produce("e3", at.Add(-30*time.Second))
	x.produce("other", at.Add(2*time.Minute))
	x.produce("e1", at.Add(time.Millisecond))
	x.produce("e2", at.Add(5*time.Minute))
	out := x.resolve("e1", "e2", "e3")
	for _, want := range []string{x.source + " e1: in Kafka at spate.events/0@2", x.source + " e2: in Kafka at spate.events/0@3", x.source + " e3: in Kafka at spate.events/0@0"} {
		if !strings.Contains(out, want) {
			t.Errorf("resolve:\n%s\nwant %q", out, want)
		}
	}
}

// TestDedupeResolveTakesEachEventOnce: an event named twice is resolved
// once, with its record's receipt.
func TestDedupeResolveTakesEachEventOnce(t *testing.T) {
	t.Parallel()
	x := newResolveFixture(t, nil)
	at := time.Now().Add(-20 * time.Minute)
	key := x.claim("e1", at)
	x.produce("e1", at.Add(time.Millisecond))
	out := x.resolve("e1", "e1")
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "e1: in Kafka at spate.events/0@0: retries now get that receipt") {
		t.Errorf("resolve of e1 named twice:\n%s", out)
	}
	if v := x.holds(key); v != "spate.events\x000\x000" {
		t.Errorf("e1's key holds %q, want its record's receipt", v)
	}
}

// TestDedupeResolveAfterRetention: a claim whose record is not found is
// left alone when records that may have been it were removed: before the
// search, or during it.
func TestDedupeResolveAfterRetention(t *testing.T) {
	t.Parallel()
	x := newResolveFixture(t, nil)
	at := time.Now().Add(-20 * time.Minute)
	key := x.claim("e1", at)
	x.produce("e1", at.Add(time.Millisecond))
	x.produce("later", time.Now())
	var gone kadm.Offsets
	gone.Add(kadm.Offset{Topic: producers.DefaultTopic, Partition: 0, At: 1})
	if _, err := kadm.NewClient(x.cl).DeleteRecords(context.Background(), gone); err != nil {
		t.Fatal(err)
	}
	out := x.resolve("e1")
	if !strings.Contains(out, "e1: not found, but Kafka no longer holds every record since its claim") {
		t.Errorf("resolve once retention removed e1's record:\n%s", out)
	}
	if v := x.holds(key); !strings.HasPrefix(v, "pending:") {
		t.Errorf("e1's key holds %q, want its claim still", v)
	}
}

// TestDedupeResolveLeavesAlone: resolve leaves alone a claim of an
// earlier version, which does not say when it was made, one made later
// than the resolver's clock says it is, and any not found in a compacted
// topic, which may have removed its record.
func TestDedupeResolveLeavesAlone(t *testing.T) {
	t.Parallel()
	x := newResolveFixture(t, map[string]*string{"cleanup.policy": kadm.StringPtr("compact")})
	keys := map[string]string{
		"old":     x.claimAs("old", "0123456789abcdef"),
		"ahead":   x.claim("ahead", time.Now().Add(time.Hour)),
		"missing": x.claim("missing", time.Now().Add(-20*time.Minute)),
	}
	out := x.resolve("old", "ahead", "missing")
	for _, want := range []string{
		x.source + " old: claimed by an earlier version, which does not say when: left alone",
		x.source + " ahead: claimed at ",
		"later than this machine's clock says it is now: left alone",
		x.source + " missing: not found, but the topic is compacted, which may have removed it: left alone",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("resolve:\n%s\nwant %q", out, want)
		}
	}
	for id, key := range keys {
		if v := x.holds(key); !strings.HasPrefix(v, "pending:") {
			t.Errorf("%s's key holds %q, want its claim still", id, v)
		}
	}
}

// TestDedupeResolveSkipsTransactionalRecords: an edge's producer is never
// transactional, so a transactional record of an event, aborted here, is
// not its record: the claim is released.
func TestDedupeResolveSkipsTransactionalRecords(t *testing.T) {
	t.Parallel()
	x := newResolveFixture(t, nil)
	at := time.Now().Add(-20 * time.Minute)
	key := x.claim("e1", at)
	tx, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(x.brokers, ",")...), kgo.TransactionalID("resolve-"+spatetest.KeyPrefix(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	ctx := context.Background()
	if err := tx.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	r := cekafka.Record(producers.DefaultTopic, &spatev1.Event{Source: x.source, Id: "e1", Type: "shop.order.placed.v1"})
	r.Timestamp = at.Add(time.Millisecond)
	if err := tx.ProduceSync(ctx, r).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := tx.EndTransaction(ctx, kgo.TryAbort); err != nil {
		t.Fatal(err)
	}
	out := x.resolve("e1")
	if !strings.Contains(out, x.source+" e1: not in Kafka: claim released") {
		t.Errorf("resolve with e1's record aborted:\n%s", out)
	}
	if _, err := spatetest.RedisClientOf(t, x.redisURL).Get(ctx, key).Result(); !errors.Is(err, redis.Nil) {
		t.Errorf("e1's key: %v, want it gone", err)
	}
}
