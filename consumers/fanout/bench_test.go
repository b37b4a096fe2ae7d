package fanout_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

// BenchmarkApply reports events/s written by Writer.Apply in batches of
// 1000 (as the consumer group hands them over), and in the same run the
// ceiling: the same entries as pipelined XADDs, 1000 a round trip, with no
// offset bookkeeping and no exactly-once; and the way of a sink that writes
// at least once, one XADD a round trip.
//
//	go test -run '^$' -bench Apply -benchtime 3x ./consumers/fanout/
func BenchmarkApply(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	opts, err := redis.ParseURL(spatetest.Redis(b))
	if err != nil {
		b.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	t := &testing.T{}
	recs := records(t, 0, n)
	if t.Failed() {
		b.Fatal("building records failed")
	}

	b.Run("writer", func(b *testing.B) {
		for b.Loop() {
			rdb.FlushDB(ctx)
			w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{})
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			for i := 0; i < n; i += 1000 {
				if err := w.Apply(ctx, batch(recs[i:i+1000])); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(n/time.Since(start).Seconds(), "events/s")
		}
	})
	values := []any{"id", "e-1", "source", "/test", "type", "shop.order.placed.v1", "subject", "o-1",
		"time", "2026-11-01T12:00:00Z", "datacontenttype", "application/json",
		"data", `{"order_id":"o-1","customer_id":"","amount_cents":"1","currency":"","items":[]}`, "tenant", "acme"}
	b.Run("ceiling-xadd-pipelined", func(b *testing.B) {
		for b.Loop() {
			rdb.FlushDB(ctx)
			start := time.Now()
			for i := 0; i < n; i += 1000 {
				p := rdb.Pipeline()
				for range 1000 {
					p.XAdd(ctx, &redis.XAddArgs{Stream: "ceiling", Values: values})
				}
				if _, err := p.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(n/time.Since(start).Seconds(), "events/s")
		}
	})
	b.Run("baseline-xadd-a-round-trip", func(b *testing.B) {
		const n = n / 10 // the rate is what counts, and this way is slow
		for b.Loop() {
			rdb.FlushDB(ctx)
			start := time.Now()
			for range n {
				if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: "baseline", Values: values}).Err(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(n/time.Since(start).Seconds(), "events/s")
		}
	})
}
