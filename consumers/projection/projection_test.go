package projection_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/projection"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

func TestMain(m *testing.M) {
	runChild() // returns unless this process is the child of a failure test
	spatetest.Main(m)
}

func newProjector(t *testing.T) (*projection.Projector, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	pool := newPool(t, spatetest.Postgres(t))
	p := projection.New(pool, schemas.Builtin(), projection.Config{})
	if err := p.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Migrate(ctx); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	return p, pool
}

// records returns records at offsets from..to-1 of partition 0, each an
// order placed event.
func records(t *testing.T, from, to int64) []*kgo.Record {
	t.Helper()
	var recs []*kgo.Record
	for o := from; o < to; o++ {
		data, err := proto.Marshal(&shopv1.OrderPlaced{OrderId: fmt.Sprint("o-", o), CustomerId: "c-1", AmountCents: o, Currency: "EUR"})
		if err != nil {
			t.Fatal(err)
		}
		r := cekafka.Record("events", &spatev1.Event{
			Id: fmt.Sprint("e-", o), Source: "/test", Type: "shop.order.placed.v1", Subject: fmt.Sprint("o-", o),
			Time: timestamppb.Now(), Datacontenttype: schemas.ContentTypeProtobuf, Data: data,
		})
		r.Partition, r.Offset = 0, o
		recs = append(recs, r)
	}
	return recs
}

func batch(recs []*kgo.Record) consumers.Batch {
	return consumers.Batch{Topic: "events", Partition: 0, Records: recs, Next: recs[len(recs)-1].Offset + 1}
}

// eventLog returns the event_log offsets in order and checks each is there once.
func eventLog(t *testing.T, pool *pgxpool.Pool) []int64 {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT "offset" FROM event_log ORDER BY "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	for rows.Next() {
		var o int64
		if err := rows.Scan(&o); err != nil {
			t.Fatal(err)
		}
		offs = append(offs, o)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return offs
}

func wantOffsets(t *testing.T, got []int64, from, to int64) {
	t.Helper()
	if int64(len(got)) != to-from {
		t.Fatalf("event_log holds %d rows, want %d (offsets %d..%d once each)", len(got), to-from, from, to-1)
	}
	for i, o := range got {
		if o != from+int64(i) {
			t.Fatalf("event_log offsets %v, want %d..%d once each", got, from, to-1)
		}
	}
}

func TestApplyIsIdempotent(t *testing.T) {
	t.Parallel()
	p, pool := newProjector(t)
	ctx := context.Background()
	all := records(t, 0, 20)

	for _, b := range []consumers.Batch{batch(all[:10]), batch(all[:10]), batch(all[5:15]), batch(all[:20]), batch(all[3:7])} {
		if err := p.Apply(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	wantOffsets(t, eventLog(t, pool), 0, 20)

	offs, err := p.Offsets(ctx, "events", []int32{0, 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(offs) != 1 || offs[0] != 20 {
		t.Fatalf("Offsets = %v, want map[0:20]", offs)
	}

	var payload string
	if err := pool.QueryRow(ctx, `SELECT payload->>'order_id' FROM event_log WHERE "offset" = 7`).Scan(&payload); err != nil {
		t.Fatal(err)
	}
	if payload != "o-7" {
		t.Fatalf("payload order_id = %q, want o-7", payload)
	}
}

func TestConcurrentAppliesOfOneBatchApplyOnce(t *testing.T) {
	t.Parallel()
	p, pool := newProjector(t)
	all := records(t, 0, 170)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	// Projectors racing for one partition around a rebalance: each got the
	// partition's records from the stored offset on, some fetched further.
	for i := range 8 {
		wg.Go(func() {
			errs <- p.Apply(context.Background(), batch(all[:min(100+i*10, len(all))]))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	wantOffsets(t, eventLog(t, pool), 0, 170)
}

func TestOffsetOnlyBatchMovesOffset(t *testing.T) {
	t.Parallel()
	p, _ := newProjector(t)
	ctx := context.Background()
	if err := p.Apply(ctx, consumers.Batch{Topic: "events", Partition: 3, Next: 42}); err != nil {
		t.Fatal(err)
	}
	offs, err := p.Offsets(ctx, "events", []int32{3})
	if err != nil {
		t.Fatal(err)
	}
	if offs[3] != 42 {
		t.Fatalf("Offsets = %v, want map[3:42]", offs)
	}
}

// TestBuiltinFailureOnDataIsPoison: a valid event that a built-in
// projection cannot store (Postgres refuses U+0000 in jsonb) is found in its
// batch and becomes poison after PoisonAfter tries, like a SQL projection's
// would, instead of being retried for ever.
func TestBuiltinFailureOnDataIsPoison(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, spatetest.Postgres(t))
	for _, pr := range []projection.Projection{projection.EventLog(), projection.Latest("")} {
		t.Run(pr.Name(), func(t *testing.T) {
			p := projection.New(pool, schemas.Builtin(), projection.Config{Group: "nul-" + pr.Name(), Projections: []projection.Projection{pr}})
			if err := p.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			recs := records(t, 0, 10)
			data, err := proto.Marshal(&shopv1.OrderPlaced{OrderId: "o-\x00", CustomerId: "c-1", Currency: "EUR"})
			if err != nil {
				t.Fatal(err)
			}
			recs[6] = cekafka.Record("events", &spatev1.Event{Id: "e-6", Source: "/test", Type: "shop.order.placed.v1",
				Subject: "o-6", Time: timestamppb.Now(), Datacontenttype: schemas.ContentTypeProtobuf, Data: data})
			recs[6].Offset = 6
			for try := 1; ; try++ {
				err := p.Apply(ctx, batch(recs))
				var pe *consumers.PoisonError
				if errors.As(err, &pe) {
					if pe.Record != recs[6] || pe.Sink != pr.Name() || pe.Class != "data-exception" || try != 3 {
						t.Fatalf("try %d: PoisonError for offset %d, sink %q, class %q; want offset 6, sink %s, data-exception, at try 3",
							try, pe.Record.Offset, pe.Sink, pe.Class, pr.Name())
					}
					break
				}
				if err == nil || try == 3 {
					t.Fatalf("try %d: Apply = %v, want an error, and a PoisonError at try 3", try, err)
				}
			}
		})
	}
}

// TestUndecodableRecordAppliedBeforeIsSkipped: a record below the stored
// offset was applied before, by a projector that could decode it (another
// member, with a newer schema, say). A projector that cannot must skip it
// like the others, not dead-letter it.
func TestUndecodableRecordAppliedBeforeIsSkipped(t *testing.T) {
	t.Parallel()
	p, pool := newProjector(t)
	if err := p.Apply(context.Background(), batch(records(t, 0, 5))); err != nil {
		t.Fatal(err)
	}
	recs := records(t, 0, 8)
	recs[2].Value = []byte{0xff, 0xff, 0xff}
	if err := p.Apply(context.Background(), batch(recs)); err != nil {
		t.Fatalf("Apply = %v, want the undecodable record below the stored offset skipped", err)
	}
	wantOffsets(t, eventLog(t, pool), 0, 8)
}

func TestUndecodableRecordIsPoison(t *testing.T) {
	t.Parallel()
	p, pool := newProjector(t)
	good := records(t, 0, 3)
	unknown := records(t, 3, 4)[0]
	for i, h := range unknown.Headers {
		if h.Key == cekafka.HeaderType {
			unknown.Headers[i].Value = []byte("shop.order.vanished.v1")
		}
	}
	garbled := records(t, 4, 5)[0]
	garbled.Value = []byte{0xff, 0xff, 0xff}
	noID := &kgo.Record{Topic: "events", Offset: 5, Value: []byte{}}

	for _, tc := range []struct {
		name  string
		rec   *kgo.Record
		class string
	}{
		{"unknown type", unknown, "unknown-type"},
		{"bad payload", garbled, "payload"},
		{"not an event", noID, "envelope"},
	} {
		err := p.Apply(context.Background(), batch(append(good[:3:3], tc.rec)))
		var pe *consumers.PoisonError
		if !errors.As(err, &pe) || pe.Record != tc.rec || pe.Class != tc.class {
			t.Errorf("%s: Apply = %v, want a PoisonError of class %s for its record", tc.name, err, tc.class)
		}
	}
	if got := eventLog(t, pool); len(got) != 0 {
		t.Fatalf("event_log holds %v after poison batches, want nothing (the group applies the good prefix itself)", got)
	}
}
