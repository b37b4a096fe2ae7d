package fanout_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

func setTenant(rec *kgo.Record, tenant string) {
	for i, h := range rec.Headers {
		if h.Key == "ce_tenant" {
			rec.Headers[i].Value = []byte(tenant)
		}
	}
}

// TestKeyOfAnotherTypeIsPoison: the event whose stream key holds something
// other than a stream (another application's key, the edge's dedupe keys
// in a shared Redis, a stray SET) is poison, so the group dead-letters it
// rather than retry for ever; and however often the batch is tried, the
// other events' entries are added once: the script checks the keys before
// any write, as Redis would keep the XADDs made before a failing one.
func TestKeyOfAnotherTypeIsPoison(t *testing.T) {
	t.Parallel()
	w, rdb, prefix := newRouted(t, `
routes:
  - types: ["*"]
    stream: "PREFIX:tenant:{ext.tenant}:orders"
`)
	ctx := context.Background()
	if err := rdb.Set(ctx, prefix+"tenant:evil:orders", "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	recs := records(t, 0, 4)
	setTenant(recs[2], "evil")
	for range 3 {
		err := w.Apply(ctx, batch(recs))
		var pe *consumers.PoisonError
		if !errors.As(err, &pe) || pe.Record.Offset != 2 {
			t.Fatalf("Apply = %v; want a PoisonError for offset 2 (its stream key holds a non-stream)", err)
		}
	}
	if got := ids(t, rdb, prefix+"tenant:acme:orders"); len(got) != 0 {
		t.Errorf("stream holds %v: a refused script call wrote entries", got)
	}
}

// TestEntriesMetricCountsOnlyWrittenEntries: spate_fanout_entries_total
// leaves out the entries the script skipped as written before (a batch
// redelivered after a crash or rebalance, a retry after a lost reply).
func TestEntriesMetricCountsOnlyWrittenEntries(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	rdb := spatetest.RedisClient(t)
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Prefix: spatetest.KeyPrefix(t), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	recs := records(t, 0, 10)
	for range 3 { // the same batch redelivered twice
		if err := w.Apply(context.Background(), batch(recs)); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() == "spate_fanout_entries_total" {
			for _, m := range mf.Metric {
				total += m.GetCounter().GetValue()
			}
		}
	}
	if total != 10 {
		t.Fatalf("spate_fanout_entries_total = %v after one batch of 10 events applied 3 times; the streams hold 10 entries", total)
	}
}

// TestCoreNamedExtensionCannotReplaceData: a record whose ce_ headers name
// core attributes (written by a producer other than the edge) does not get
// a second data or datacontenttype field into an entry.
func TestCoreNamedExtensionCannotReplaceData(t *testing.T) {
	t.Parallel()
	w, rdb := newWriter(t, 0)
	ctx := context.Background()
	rec := records(t, 0, 1)[0]
	rec.Headers = append(rec.Headers,
		kgo.RecordHeader{Key: "ce_data", Value: []byte(`{"orderId":"forged"}`)},
		kgo.RecordHeader{Key: "ce_datacontenttype", Value: []byte("text/forged")})
	err := w.Apply(ctx, batch([]*kgo.Record{rec}))
	if errors.Is(err, consumers.ErrPoison) {
		return // refused: fine
	}
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := rdb.XRange(ctx, w.Stream("shop.order.placed.v1"), "-", "+").Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("XRANGE = %v, %v", msgs, err)
	}
	v := msgs[0].Values
	if d, _ := v["data"].(string); strings.Contains(d, "forged") || v["datacontenttype"] != "application/json" {
		t.Fatalf("entry data = %v, datacontenttype = %v: an extension header replaced a core field", v["data"], v["datacontenttype"])
	}
}

// TestEmptyBatchStoresItsOffset: a batch of no records (a group that
// starts at the latest offset stores the end so) moves the offset, and
// stores it at 0 too: a group that started at the end of an empty
// partition then resumes from there, and never skips what was published
// while no member ran.
func TestEmptyBatchStoresItsOffset(t *testing.T) {
	t.Parallel()
	w, _ := newWriter(t, 0)
	ctx := context.Background()
	for p, next := range map[int32]int64{3: 42, 4: 0} {
		if err := w.Apply(ctx, consumers.Batch{Topic: "events", Partition: p, Next: next}); err != nil {
			t.Fatal(err)
		}
		if offs, err := w.Offsets(ctx, "events", []int32{p}); err != nil || len(offs) != 1 || offs[p] != next {
			t.Errorf("Offsets = %v, %v; want partition %d at %d", offs, err, p, next)
		}
	}
}
