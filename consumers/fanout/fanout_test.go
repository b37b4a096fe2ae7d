package fanout_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/fanout"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

func TestMain(m *testing.M) {
	runChild() // returns unless this process is the child of a failure test
	spatetest.Main(m)
}

func newWriter(t *testing.T, chunk int) (*fanout.Writer, *redis.Client) {
	t.Helper()
	rdb := spatetest.RedisClient(t)
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Prefix: spatetest.KeyPrefix(t), ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	return w, rdb
}

// records returns records at offsets from..to-1 of partition 0: even
// offsets place an order, odd ones cancel it.
func records(t *testing.T, from, to int64) []*kgo.Record {
	t.Helper()
	var recs []*kgo.Record
	for o := from; o < to; o++ {
		var m proto.Message = &shopv1.OrderPlaced{OrderId: fmt.Sprint("o-", o/2), AmountCents: o}
		typ := "shop.order.placed.v1"
		if o%2 == 1 {
			m, typ = &shopv1.OrderCancelled{OrderId: fmt.Sprint("o-", o/2), Reason: "test"}, "shop.order.cancelled.v1"
		}
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		r := cekafka.Record("events", &spatev1.Event{
			Id: fmt.Sprint("e-", o), Source: "/test", Type: typ, Subject: fmt.Sprint("o-", o/2),
			Time: timestamppb.Now(), Data: data, Extensions: map[string]string{"tenant": "acme"},
		})
		r.Partition, r.Offset = 0, o
		recs = append(recs, r)
	}
	return recs
}

func batch(recs []*kgo.Record) consumers.Batch {
	return consumers.Batch{Topic: "events", Partition: 0, Records: recs, Next: recs[len(recs)-1].Offset + 1}
}

// ids returns the event ids in a stream, in order.
func ids(t *testing.T, rdb *redis.Client, stream string) []string {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i], _ = m.Values["id"].(string)
	}
	return out
}

func wantIDs(t *testing.T, got []string, from, to, step int64) {
	t.Helper()
	var want []string
	for o := from; o < to; o += step {
		want = append(want, fmt.Sprint("e-", o))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("stream ids %v, want %v", got, want)
	}
}

func TestApplyIsIdempotent(t *testing.T) {
	t.Parallel()
	for _, chunk := range []int{0, 3} { // default chunks, and several script calls a batch
		t.Run(fmt.Sprint("chunk=", chunk), func(t *testing.T) {
			w, rdb := newWriter(t, chunk)
			ctx := context.Background()
			all := records(t, 0, 20)
			for _, b := range []consumers.Batch{batch(all[:10]), batch(all[:10]), batch(all[5:15]), batch(all), batch(all[2:4])} {
				if err := w.Apply(ctx, b); err != nil {
					t.Fatal(err)
				}
			}
			wantIDs(t, ids(t, rdb, w.Stream("shop.order.placed.v1")), 0, 20, 2)
			wantIDs(t, ids(t, rdb, w.Stream("shop.order.cancelled.v1")), 1, 20, 2)

			offs, err := w.Offsets(ctx, "events", []int32{0, 1})
			if err != nil {
				t.Fatal(err)
			}
			if len(offs) != 1 || offs[0] != 20 {
				t.Fatalf("Offsets = %v, want map[0:20]", offs)
			}
		})
	}
}

func TestEntryFields(t *testing.T) {
	t.Parallel()
	w, rdb := newWriter(t, 0)
	if err := w.Apply(context.Background(), batch(records(t, 0, 1))); err != nil {
		t.Fatal(err)
	}
	msgs, err := rdb.XRange(context.Background(), w.Stream("shop.order.placed.v1"), "-", "+").Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("XRANGE = %v, %v; want one entry", msgs, err)
	}
	v := msgs[0].Values
	for k, want := range map[string]string{
		"id": "e-0", "source": "/test", "type": "shop.order.placed.v1", "subject": "o-0",
		"datacontenttype": "application/json", "tenant": "acme",
	} {
		if v[k] != want {
			t.Errorf("field %s = %q, want %q", k, v[k], want)
		}
	}
	// protojson varies its spacing on purpose: compare as JSON.
	var got any
	if err := json.Unmarshal([]byte(v["data"].(string)), &got); err != nil {
		t.Fatalf("data %q: %v", v["data"], err)
	}
	want := map[string]any{"order_id": "o-0", "customer_id": "", "amount_cents": "0", "currency": "", "items": []any{}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("data (-want +got):\n%s", diff)
	}
	if _, ok := v["time"].(string); !ok {
		t.Errorf("no time field in %v", v)
	}
	// The fields come in this order, which readers of raw XRANGE see.
	raw, err := rdb.Do(context.Background(), "XRANGE", w.Stream("shop.order.placed.v1"), "-", "+").Slice()
	if err != nil || len(raw) != 1 {
		t.Fatalf("raw XRANGE = %v, %v; want one entry", raw, err)
	}
	kv := raw[0].([]any)[1].([]any)
	var names []string
	for i := 0; i < len(kv); i += 2 {
		names = append(names, kv[i].(string))
	}
	if diff := cmp.Diff([]string{"id", "source", "type", "subject", "time", "datacontenttype", "data", "tenant"}, names); diff != "" {
		t.Errorf("field order (-want +got):\n%s", diff)
	}

	// dataschema, when set, follows data.
	data, err := proto.Marshal(&shopv1.OrderCancelled{OrderId: "o-0"})
	if err != nil {
		t.Fatal(err)
	}
	r := cekafka.Record("events", &spatev1.Event{Id: "e-1", Source: "/test", Type: "shop.order.cancelled.v1",
		Subject: "o-0", Time: timestamppb.Now(), Dataschema: "urn:shop:cancelled", Data: data})
	r.Offset = 1
	if err := w.Apply(context.Background(), batch([]*kgo.Record{r})); err != nil {
		t.Fatal(err)
	}
	raw, err = rdb.Do(context.Background(), "XRANGE", w.Stream("shop.order.cancelled.v1"), "-", "+").Slice()
	if err != nil || len(raw) != 1 {
		t.Fatalf("raw XRANGE = %v, %v; want one entry", raw, err)
	}
	kv = raw[0].([]any)[1].([]any)
	if n := len(kv); n != 16 || kv[14] != "dataschema" || kv[15] != "urn:shop:cancelled" {
		t.Errorf("entry %v: want 8 fields, dataschema urn:shop:cancelled last", kv)
	}
}

// TestUndecodableRecordWrittenBeforeIsSkipped: a record below the stored
// offset was written before, by a writer that could decode it. One that
// cannot must skip it like the others, not dead-letter it.
func TestUndecodableRecordWrittenBeforeIsSkipped(t *testing.T) {
	t.Parallel()
	w, rdb := newWriter(t, 0)
	if err := w.Apply(context.Background(), batch(records(t, 0, 5))); err != nil {
		t.Fatal(err)
	}
	recs := records(t, 0, 8)
	recs[2].Value = []byte{0xff}
	if err := w.Apply(context.Background(), batch(recs)); err != nil {
		t.Fatalf("Apply = %v, want the undecodable record below the stored offset skipped", err)
	}
	placed, cancelled := ids(t, rdb, w.Stream("shop.order.placed.v1")), ids(t, rdb, w.Stream("shop.order.cancelled.v1"))
	if diff := cmp.Diff([]string{"e-0", "e-2", "e-4", "e-6"}, placed); diff != "" {
		t.Errorf("placed (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"e-1", "e-3", "e-5", "e-7"}, cancelled); diff != "" {
		t.Errorf("cancelled (-want +got):\n%s", diff)
	}
}

func TestUndecodableRecordIsPoison(t *testing.T) {
	t.Parallel()
	w, rdb := newWriter(t, 0)
	recs := records(t, 0, 3)
	recs[2].Value = []byte{0xff}
	err := w.Apply(context.Background(), batch(recs))
	var pe *consumers.PoisonError
	if !errors.As(err, &pe) || pe.Record != recs[2] {
		t.Fatalf("Apply = %v, want a PoisonError for the record at offset 2", err)
	}
	if n := rdb.XLen(context.Background(), w.Stream("shop.order.placed.v1")).Val(); n != 0 {
		t.Fatalf("stream holds %d entries after a poison batch, want 0", n)
	}
}
