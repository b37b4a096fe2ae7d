package projection_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/producers"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

// BenchmarkProjections reports events/s applied by Projector.Apply, for
// each projection alone and for the whole example configuration, batched
// (1000 events a transaction, as the consumer group hands them over) and per
// event (one event a transaction: what a sink that does not batch does).
//
//	go test -run '^$' -bench Projections -benchtime 3x ./consumers/projection/
func BenchmarkProjections(b *testing.B) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, spatetest.Postgres(b))
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	example, err := projection.Load("spate.yaml", shopv1.ExampleConfig, schemas.Builtin())
	if err != nil {
		b.Fatal(err)
	}
	sel := func(names ...string) []projection.Projection {
		projs, err := projection.Select(example, names...)
		if err != nil {
			b.Fatal(err)
		}
		return projs
	}
	for _, tc := range []struct {
		name  string
		projs []projection.Projection
	}{
		{"event_log", []projection.Projection{projection.EventLog()}},
		{"latest", []projection.Projection{projection.Latest("")}},
		{"counters", []projection.Projection{projection.Counters("")}},
		{"orders", sel("orders")}, // with customer_totals
		{"payments", sel("payments")},
		{"example-sql", sel("orders", "payments")},
		{"example-all", example},
	} {
		for _, mode := range []struct {
			name   string
			batch  int
			events int
		}{{"batched", 1000, 50_000}, {"per-event", 1, 2_000}} {
			b.Run(tc.name+"/"+mode.name, func(b *testing.B) {
				recs := benchRecords(mode.events)
				for i := 0; b.Loop(); i++ {
					resetTables(b, pool)
					p := projection.New(pool, schemas.Builtin(), projection.Config{Group: fmt.Sprint("bench-", i), Projections: tc.projs})
					if err := p.Migrate(ctx); err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					for j := 0; j < len(recs); j += mode.batch {
						chunk := recs[j:min(j+mode.batch, len(recs))]
						if err := p.Apply(ctx, consumers.Batch{Topic: "events", Records: chunk, Next: chunk[len(chunk)-1].Offset + 1}); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(len(recs))/time.Since(start).Seconds(), "events/s")
				}
			})
		}
	}
}

// benchRecords returns n records of partition 0 from offset 0, of the
// events of spatetest.ShopMix.
func benchRecords(n int) []*kgo.Record {
	recs := make([]*kgo.Record, n)
	for i, ev := range spatetest.ShopMix(n, t0) {
		recs[i] = cekafka.Record("events", ev)
		recs[i].Offset = int64(i)
	}
	return recs
}

// resetTables empties every table the benchmark writes, where it exists,
// offsets included: otherwise the next run would rightly skip every event.
func resetTables(b *testing.B, pool *pgxpool.Pool) {
	b.Helper()
	_, err := pool.Exec(context.Background(), `DO $$
DECLARE t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['spate_offsets', 'event_log', 'spate_latest', 'spate_counters', 'customer_totals', 'orders', 'payments'] LOOP
		IF to_regclass(t) IS NOT NULL THEN EXECUTE format('TRUNCATE %I', t); END IF;
	END LOOP;
END $$`)
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRebuild reports how long a Rebuild of the example projections
// takes over a topic of 1,000,000 events (SPATE_BENCH_REBUILD_EVENTS) in 4
// partitions, with the live projector caught up at the head, and its
// events/s: as fast as it goes (the SQL projections, and all six), and
// throttled to 25,000 events/s.
//
//	go test -run '^$' -bench Rebuild -benchtime 1x ./consumers/projection/
func BenchmarkRebuild(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("SPATE_BENCH_REBUILD_EVENTS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatalf("SPATE_BENCH_REBUILD_EVENTS=%q: %v", s, err)
		}
	}
	ctx := context.Background()
	brokers := spatetest.Kafka(b, failurePartitions, failureTopic)
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, producers.Opts()...)...)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	evs := spatetest.ShopMix(n, t0)
	var g errgroup.Group
	for i := 0; i < n; i += 5000 {
		g.Go(func() error {
			_, err := producers.Publish(ctx, cl, failureTopic, evs[i:min(i+5000, n)])
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, spatetest.Postgres(b))
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	if err := projection.New(pool, schemas.Builtin(), projection.Config{}).Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, failureTopic)
	if err != nil {
		b.Fatal(err)
	}
	var live pgx.Batch
	ends.Each(func(o kadm.ListedOffset) {
		live.Queue(`INSERT INTO spate_offsets (consumer_group, topic, partition, next_offset) VALUES ('live', $1, $2, $3)`, o.Topic, o.Partition, o.Offset)
	})
	if err := pool.SendBatch(ctx, &live).Close(); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	example := []string{"orders", "payments"}
	for _, tc := range []struct {
		name  string
		names []string
		rate  float64
	}{
		{"example-sql", example, 0},
		{"example-all", []string{"event_log", "latest", "counters", "orders", "payments"}, 0},
		// A throttled run: events/s should be the rate.
		{"example-sql-rate-25000", example, 25_000},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				rb, err := makeRebuild(pool, brokers, shopv1.ExampleConfig, projection.RebuildConfig{Logger: log, Rate: tc.rate}, nil, tc.names...)
				if err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				res, err := rb.Run(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if res.Applied != int64(n) || res.Skipped != 0 {
					b.Fatalf("rebuild applied %d events and skipped %d, want %d and 0", res.Applied, res.Skipped, n)
				}
				took := time.Since(start)
				var payments int
				if err := pool.QueryRow(ctx, `SELECT count(*) FROM payments`).Scan(&payments); err != nil || payments != n/5 {
					b.Fatalf("payments holds %d rows (%v), want %d", payments, err, n/5)
				}
				b.ReportMetric(took.Seconds(), "s/rebuild")
				b.ReportMetric(float64(n)/took.Seconds(), "events/s")
			}
		})
	}
}
