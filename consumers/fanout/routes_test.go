package fanout_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

// newRouted returns a writer with the routes of config, its keys under a
// prefix of this test's own.
func newRouted(t *testing.T, config string) (*fanout.Writer, *redis.Client, string) {
	t.Helper()
	prefix := spatetest.KeyPrefix(t)
	routes, err := fanout.LoadRoutes("spate.yaml", []byte(strings.ReplaceAll(config, "PREFIX:", prefix)))
	if err != nil {
		t.Fatal(err)
	}
	rdb := spatetest.RedisClient(t)
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Prefix: prefix, Routes: routes})
	if err != nil {
		t.Fatal(err)
	}
	return w, rdb, prefix
}

// keys lists the keys under prefix, the offsets hash left out.
func keys(t *testing.T, rdb *redis.Client, prefix string) []string {
	t.Helper()
	ks, err := rdb.Keys(context.Background(), prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	ks = slices.DeleteFunc(ks, func(k string) bool { return strings.HasPrefix(k, prefix+"offsets:") })
	slices.Sort(ks)
	return ks
}

func TestRoutesBuildKeysFromEvents(t *testing.T) {
	t.Parallel()
	w, rdb, prefix := newRouted(t, `
routes:
  - types: ["shop.order.*"]
    stream: "PREFIX:tenant:{ext.tenant}:orders"
  - types: ["shop.order.placed.v1"]
    stream: "PREFIX:{{{subject}}}:{type}"
`)
	recs := records(t, 0, 4) // placed, cancelled, placed, cancelled; tenant acme
	for _, b := range []consumers.Batch{batch(recs), batch(recs)} {
		if err := w.Apply(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{prefix + "tenant:acme:orders", prefix + "{o-0}:shop.order.placed.v1", prefix + "{o-1}:shop.order.placed.v1"}
	slices.Sort(want)
	if got := keys(t, rdb, prefix); !slices.Equal(got, want) {
		t.Fatalf("keys %q, want %q", got, want)
	}
	wantIDs(t, ids(t, rdb, prefix+"tenant:acme:orders"), 0, 4, 1)
	wantIDs(t, ids(t, rdb, prefix+"{o-1}:shop.order.placed.v1"), 2, 3, 1)
}

// A record of a type that no route takes is passed over unread: neither its
// payload nor its type need make sense to this writer.
func TestRecordNoRouteTakesIsNotRead(t *testing.T) {
	t.Parallel()
	w, rdb, prefix := newRouted(t, `
routes:
  - types: ["shop.order.placed.v1"]
    stream: "PREFIX:placed"
`)
	recs := records(t, 0, 4) // placed, cancelled, placed, cancelled
	recs[1].Value = []byte{0xff}
	for i, h := range recs[3].Headers {
		if h.Key == cekafka.HeaderType {
			recs[3].Headers[i].Value = []byte("shop.order.vanished.v1")
		}
	}
	if err := w.Apply(context.Background(), batch(recs)); err != nil {
		t.Fatalf("Apply = %v, want the records no route takes passed over", err)
	}
	wantIDs(t, ids(t, rdb, prefix+"placed"), 0, 4, 2)
}

func TestHostileKeyPartsNeverLeaveTheTemplate(t *testing.T) {
	t.Parallel()
	w, rdb, prefix := newRouted(t, `
routes:
  - types: ["*"]
    stream: "PREFIX:tenant:{ext.tenant}:orders"
`)
	for _, tenant := range []string{"*", "a\nb", "}", "{x}", "a:b", "other:orders", "a b", "", strings.Repeat("x", 1<<20), "tenant?", "[ab]"} {
		rec := records(t, 0, 1)[0]
		for i, h := range rec.Headers {
			if h.Key == "ce_tenant" {
				rec.Headers[i].Value = []byte(tenant)
			}
		}
		err := w.Apply(context.Background(), batch([]*kgo.Record{rec}))
		var pe *consumers.PoisonError
		if !errors.As(err, &pe) || pe.Class != "stream-key" {
			t.Errorf("tenant %.20q: Apply = %v, want a stream-key PoisonError", tenant, err)
		}
	}
	if got := keys(t, rdb, prefix); len(got) != 0 {
		t.Fatalf("hostile events created keys %q", got)
	}
	all, err := rdb.Keys(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range all {
		if strings.Contains(k, "orders") && !strings.HasPrefix(k, "t") {
			t.Errorf("key %q outside any test prefix", k)
		}
	}
}

func TestLoadRoutesErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"routes:\n  - types: [x]\n    stream: \"a:{nope}\"\n", "spate.yaml:2: route: stream \"a:{nope}\": unknown placeholder {nope}"},
		{"routes:\n  - types: [x]\n    stream: \"a:{type\"\n", "unclosed {"},
		{"routes:\n  - types: [x]\n    stream: \"a}\"\n", "} without {"},
		{"routes:\n  - stream: s\n", "spate.yaml:2: route: types is required"},
		{"routes:\n  - types: [x]\n    stream: s\n    maxage: soon\n", "maxage \"soon\""},
		{"routes:\n  - types: [x]\n    stream: s\n    ttl: 1h\n", "spate.yaml:4: route: unknown key \"ttl\""},
		{"routes:\n  - types: [\"[\"]\n    stream: s\n", "bad pattern"},
		{"routes:\n  - types: [x]\n    stream: \"t:{ext.tenant}.{subject}\"\n", "stream \"t:{ext.tenant}.{subject}\": {subject} needs a separator before it"},
		{"routes:\n  - types: [x]\n    stream: \"t:{ext.tenant}{subject}\"\n", "{subject} needs a separator"},
		{"routes:\n  - types: [x]\n    stream: \"{type}-v2/{id}\"\n", "{id} needs a separator"},
	} {
		_, err := fanout.LoadRoutes("spate.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LoadRoutes(%q) error = %v, want one containing %q", tc.yaml, err, tc.want)
		}
	}
	if routes, err := fanout.LoadRoutes("spate.yaml", []byte("projections: []\n")); err != nil || routes != nil {
		t.Errorf("no routes section: %v, %v; want nil, nil", routes, err)
	}
}

// On Redis Cluster a writer takes only streams in the offsets key's slot:
// its script writes them together.
func TestClusterStreamsShareTheOffsetsSlot(t *testing.T) {
	t.Parallel()
	cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}}) // never dialled
	defer cluster.Close()
	route := func(stream string) []fanout.Route { return []fanout.Route{{Types: []string{"*"}, Stream: stream}} }
	for _, tc := range []struct {
		prefix string
		routes []fanout.Route
		want   string // "": taken
	}{
		{"{spate}:", nil, ""},
		{"{spate}:", route("{{spate}}:orders:{ext.tenant}"), ""},
		{"{spate}:", route("x{{spate}}:{type}:{{other}}"), ""},
		{"spate:", nil, "offsets key spate:offsets:spate-fanout has no hash tag"},
		{"{}spate:", nil, "offsets key {}spate:offsets:spate-fanout has no hash tag"},
		{"{spate}:", route("payments:{{{ext.tenant}}}"), "route 1 (payments:{{{ext.tenant}}}): not in the slot"},
		{"{spate}:", route("{{sp{ext.tenant}ate}}:x"), "route 1"},
		{"{spate}:", route("{{other}}:x"), "route 1"},
		{"{spate}:", route("orders:{type}"), "route 1"},
	} {
		_, err := fanout.New(cluster, schemas.Builtin(), fanout.Config{Prefix: tc.prefix, Routes: tc.routes})
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("prefix %q, routes %v: %v, want %q", tc.prefix, tc.routes, err, tc.want)
		}
	}
	// A single Redis has one slot for all.
	if _, err := fanout.New(spatetest.RedisClient(t), schemas.Builtin(), fanout.Config{Routes: route("orders:{type}")}); err != nil {
		t.Errorf("a single Redis: %v", err)
	}
}

func TestTrimKeepsWhatGroupsStillNeed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, lossy := range []bool{false, true} {
		t.Run(fmt.Sprint("lossy=", lossy), func(t *testing.T) {
			w, rdb, prefix := newRouted(t, fmt.Sprintf(`
routes:
  - types: ["*"]
    stream: "PREFIX:all"
    maxlen: 10
    lossy: %v
`, lossy))
			stream := prefix + "all"
			if err := w.Apply(ctx, batch(records(t, 0, 100))); err != nil {
				t.Fatal(err)
			}
			// A slow group: read 30 entries, acknowledged 20.
			if err := rdb.XGroupCreate(ctx, stream, "slow", "0").Err(); err != nil {
				t.Fatal(err)
			}
			read, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "slow", Consumer: "c", Streams: []string{stream, ">"}, Count: 30}).Result()
			if err != nil {
				t.Fatal(err)
			}
			msgs := read[0].Messages
			for _, m := range msgs[:20] {
				rdb.XAck(ctx, stream, "slow", m.ID)
			}
			trimTo := func(want int64, why string) {
				t.Helper()
				if err := w.TrimOnce(ctx); err != nil {
					t.Fatal(err)
				}
				if n := rdb.XLen(ctx, stream).Val(); n != want {
					t.Fatalf("after trimming, %d entries, want %d: %s", n, want, why)
				}
			}
			if lossy {
				trimTo(10, "a lossy route keeps maxlen, read or not")
				return
			}
			trimTo(80, "entries 21..100: 10 pending, 70 unread")
			first, _ := rdb.XRangeN(ctx, stream, "-", "+", 1).Result()
			if first[0].ID != msgs[20].ID {
				t.Fatalf("oldest kept entry %s, want the oldest pending %s", first[0].ID, msgs[20].ID)
			}
			for _, m := range msgs[20:] {
				rdb.XAck(ctx, stream, "slow", m.ID)
			}
			trimTo(70, "entries 31..100, unread")
			if _, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "slow", Consumer: "c", Streams: []string{stream, ">"}, Count: 1000}).Result(); err != nil {
				t.Fatal(err)
			}
			trimTo(70, "all read, but 70 pending")
			rest, _ := rdb.XRange(ctx, stream, "-", "+").Result()
			for _, m := range rest {
				rdb.XAck(ctx, stream, "slow", m.ID)
			}
			trimTo(10, "all acknowledged: maxlen applies")
		})
	}
}

// TestTrimOnlyStreamsOfKnownTypes: a route's {type} is an event type the
// route takes, so a stream that only looks like one is not trimmed.
func TestTrimOnlyStreamsOfKnownTypes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w, rdb, prefix := newRouted(t, `
routes:
  - types: ["shop.order.*"]
    stream: "PREFIX:o:{type}"
    maxlen: 5
`)
	if err := w.Apply(ctx, batch(records(t, 0, 100))); err != nil {
		t.Fatal(err)
	}
	placed, archive, payments := prefix+"o:shop.order.placed.v1", prefix+"o:orders-archive", prefix+"o:shop.payment.captured.v1"
	addEntries(t, rdb, archive, 30)
	addEntries(t, rdb, payments, 20)
	trimAndCount(t, w, rdb, map[string]int64{placed: 5, archive: 30, payments: 20})
}

// TestTrimOnlyStreamsItsRouteBuilds: a route's SCAN pattern also matches
// keys that no event of the route can go to (a placeholder cannot hold ':'),
// such as another route's streams or a subscriber's dead letters. A lossy
// retention must leave those alone.
func TestTrimOnlyStreamsItsRouteBuilds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w, rdb, prefix := newRouted(t, `
routes:
  - types: ["*"]
    stream: "PREFIX:t:{ext.tenant}"
    maxlen: 5
    lossy: true
  - types: ["*"]
    stream: "PREFIX:t:{ext.tenant}:orders"
`)
	if err := w.Apply(ctx, batch(records(t, 0, 100))); err != nil {
		t.Fatal(err)
	}
	orders, dead := prefix+"t:acme:orders", prefix+"t:acme:dlq"
	if err := rdb.XGroupCreate(ctx, orders, "slow", "0").Err(); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: dead, Values: []any{"f", "v"}})
	}
	trimAndCount(t, w, rdb, map[string]int64{prefix + "t:acme": 5, orders: 100, dead: 20})
}

// TestTrimFarOverRetention trims a stream far over its maxlen, in steps of
// at most a thousand entries, to its maxlen in one pass; and a maxage that
// reaches back before 1970 deletes nothing.
func TestTrimFarOverRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w, rdb, prefix := newRouted(t, `
routes:
  - types: ["shop.order.placed.v1"]
    stream: "PREFIX:placed"
    maxlen: 10
  - types: ["shop.order.cancelled.v1"]
    stream: "PREFIX:cancelled"
    maxage: 500000h
`)
	if err := w.Apply(ctx, batch(records(t, 0, 5000))); err != nil {
		t.Fatal(err)
	}
	if err := w.TrimOnce(ctx); err != nil {
		t.Fatal(err)
	}
	last, err := rdb.XRevRangeN(ctx, prefix+"placed", "+", "-", 1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if n := rdb.XLen(ctx, prefix+"placed").Val(); n != 10 || last[0].Values["id"] != "e-4998" {
		t.Errorf("placed: %d entries, newest %v; want 10, the newest e-4998", n, last[0].Values["id"])
	}
	if n := rdb.XLen(ctx, prefix+"cancelled").Val(); n != 2500 {
		t.Errorf("cancelled: %d entries after trimming to 500000h, want all 2500", n)
	}
}

// TestTrimLossyOnlyWhereEveryRouteIs: a stream that a lossy route and a
// route that is not lossy can both build keeps what groups need.
func TestTrimLossyOnlyWhereEveryRouteIs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w, rdb, prefix := newRouted(t, `
routes:
  - types: ["shop.order.*"]
    stream: "PREFIX:{ext.tenant}"
    maxlen: 5
    lossy: true
  - types: ["shop.payment.*"]
    stream: "PREFIX:{ext.tenant}"
`)
	if err := w.Apply(ctx, batch(records(t, 0, 100))); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XGroupCreate(ctx, prefix+"acme", "slow", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := w.TrimOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := rdb.XLen(ctx, prefix+"acme").Val(); n != 100 {
		t.Errorf("%d entries left, want all 100: the group read none", n)
	}
}

// TestTrimOverlappingRoutesKeepWhatEachWould: a stream that several routes
// write keeps what each of them would keep, whichever route's pass trims
// it: an entry goes only if every route would delete it.
func TestTrimOverlappingRoutesKeepWhatEachWould(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w, rdb, prefix := newRouted(t, `
routes:
  - types: ["shop.order.placed.v1"]
    stream: "PREFIX:ten"
    maxlen: 10
  - types: ["shop.order.*"]
    stream: "PREFIX:t:{ext.tenant}"
    maxlen: 100
  - types: ["shop.order.cancelled.v1"]
    stream: "PREFIX:t:{ext.tenant}"
    maxlen: 20
  - types: ["shop.order.*"]
    stream: "PREFIX:ten"
  - types: ["shop.order.*"]
    stream: "PREFIX:type:{type}"
    maxlen: 30
  - types: ["shop.order.*"]
    stream: "PREFIX:both"
    maxlen: 40
  - types: ["shop.order.placed.v1"]
    stream: "PREFIX:both"
    maxage: 500000h
  - types: ["shop.order.*"]
    stream: "PREFIX:young"
    maxlen: 50
  - types: ["shop.order.placed.v1"]
    stream: "PREFIX:young"
    maxage: 1h
`)
	for i := 1; i <= 10; i++ { // older than an hour, and than the last 50
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: prefix + "young", ID: fmt.Sprint("1-", i), Values: []any{"id", "old"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Apply(ctx, batch(records(t, 0, 1000))); err != nil { // tenant acme
		t.Fatal(err)
	}
	if err := w.TrimOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]int64{
		"ten":                       1500, // 500 placed and 1000 orders: the fourth route keeps it whole
		"t:acme":                    100,  // the second's 100 over the third's 20
		"type:shop.order.placed.v1": 30,   // its route's own
		"both":                      1500, // the last 40, or younger than 500000h: all
		"young":                     1500, // the last 50, or younger than 1h: the 1500 new ones
	} {
		if n := rdb.XLen(ctx, prefix+key).Val(); n != want {
			t.Errorf("%s: %d entries left, want %d", key, n, want)
		}
	}
}

// TestTrimReportsLagAndPending checks the gauges a trim pass sets for each
// group on a stream.
func TestTrimReportsLagAndPending(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	prefix := spatetest.KeyPrefix(t)
	routes, err := fanout.LoadRoutes("spate.yaml", []byte("routes:\n  - types: [\"*\"]\n    stream: "+prefix+"all\n    maxlen: 1000\n"))
	if err != nil {
		t.Fatal(err)
	}
	rdb := spatetest.RedisClient(t)
	reg := prometheus.NewRegistry()
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Prefix: prefix, Routes: routes, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Apply(ctx, batch(records(t, 0, 100))); err != nil {
		t.Fatal(err)
	}
	stream := prefix + "all"
	rdb.XGroupCreate(ctx, stream, "slow", "0")
	read, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "slow", Consumer: "c", Streams: []string{stream, ">"}, Count: 30}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range read[0].Messages[:20] {
		rdb.XAck(ctx, stream, "slow", m.ID)
	}
	if err := w.TrimOnce(ctx); err != nil {
		t.Fatal(err)
	}
	gauges := func() map[string]float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				if m.Gauge != nil {
					got[mf.GetName()] = m.Gauge.GetValue()
				}
			}
		}
		return got
	}
	want := map[string]float64{"spate_fanout_group_lag_entries": 70, "spate_fanout_group_pending_entries": 10}
	if diff := cmp.Diff(want, gauges()); diff != "" {
		t.Errorf("gauges (-want +got):\n%s", diff)
	}
	// A group that is deleted loses its series at the next pass.
	if err := rdb.XGroupDestroy(ctx, stream, "slow").Err(); err != nil {
		t.Fatal(err)
	}
	if err := w.TrimOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if got := gauges(); len(got) != 0 {
		t.Errorf("gauges %v after the group was deleted, want none", got)
	}
}

// trimAndCount runs a trim pass of w and checks the entries of each stream
// in want.
func trimAndCount(t *testing.T, w *fanout.Writer, rdb *redis.Client, want map[string]int64) {
	t.Helper()
	ctx := context.Background()
	if err := w.TrimOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for key, n := range want {
		if got := rdb.XLen(ctx, key).Val(); got != n {
			t.Errorf("%s: %d entries after trimming, want %d", key, got, n)
		}
	}
}

// addEntries adds n entries to the stream key.
func addEntries(t *testing.T, rdb *redis.Client, key string, n int) {
	t.Helper()
	for range n {
		if err := rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: key, Values: []any{"f", "v"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDefaultRetention: without routes, the stream of each event type is
// trimmed to the default retention, lag-safe as a route's are, and no other
// stream under the prefix is (a copy spate replay stream made, say); with
// routes, a default retention is refused.
func TestDefaultRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	prefix := spatetest.KeyPrefix(t)
	rdb := spatetest.RedisClient(t)
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Prefix: prefix, DefaultRetention: fanout.Route{MaxLen: 10}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Apply(ctx, batch(records(t, 0, 100))); err != nil {
		t.Fatal(err)
	}
	placed, cancelled := prefix+"shop.order.placed.v1", prefix+"shop.order.cancelled.v1"
	if err := rdb.XGroupCreate(ctx, cancelled, "slow", "0").Err(); err != nil {
		t.Fatal(err)
	}
	audit, dead := prefix+"orders-audit", placed+":dlq"
	addEntries(t, rdb, audit, 30)
	addEntries(t, rdb, dead, 20)
	trimAndCount(t, w, rdb, map[string]int64{placed: 10, cancelled: 50, audit: 30, dead: 20})

	routes, err := fanout.LoadRoutes("spate.yaml", []byte("routes:\n  - types: [\"*\"]\n    stream: \"x:{type}\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []fanout.Config{
		{Routes: routes, DefaultRetention: fanout.Route{MaxAge: time.Hour}},
		{DefaultRetention: fanout.Route{MaxLen: -1}},
	} {
		if _, err := fanout.New(rdb, schemas.Builtin(), cfg); err == nil {
			t.Errorf("New(%+v) succeeded, want an error", cfg.DefaultRetention)
		}
	}
}
