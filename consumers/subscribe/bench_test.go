package subscribe_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/spate-io/spate/consumers/subscribe"
	"github.com/spate-io/spate/spatetest"
)

// BenchmarkSubscriber reports events/s handled and acknowledged by a
// Subscriber with a handler that does nothing, reading 100k entries already
// in a stream, and in the same run the ceiling: raw XREADGROUP of 100 entries
// a call with their XACKs pipelined.
//
//	go test -run '^$' -bench Subscriber -benchtime 3x ./consumers/subscribe/
func BenchmarkSubscriber(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	opts, err := redis.ParseURL(spatetest.Redis(b))
	if err != nil {
		b.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	fill := func(stream string) {
		for i := 0; i < n; i += 1000 {
			p := rdb.Pipeline()
			for range 1000 {
				p.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"id", "e", "type", "shop.order.placed.v1", "subject", "o-1",
					"data", `{"order_id":"o-1","customer_id":"c-1","amount_cents":"1","currency":"EUR","items":[]}`}})
			}
			if _, err := p.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}

	b.Run("subscriber", func(b *testing.B) {
		for b.Loop() {
			rdb.FlushDB(ctx)
			fill("bench")
			var handled atomic.Int64
			done := make(chan struct{})
			sub, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{"bench"}, Block: 100 * time.Millisecond},
				func(context.Context, subscribe.Message) error {
					if handled.Add(1) == n {
						close(done)
					}
					return nil
				})
			if err != nil {
				b.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			errc := make(chan error, 1)
			start := time.Now()
			go func() { errc <- sub.Run(rctx) }()
			select {
			case <-done:
			case err := <-errc:
				b.Fatalf("Run stopped: %v", err)
			}
			b.ReportMetric(n/time.Since(start).Seconds(), "events/s")
			cancel()
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ceiling-xreadgroup-xack", func(b *testing.B) {
		for b.Loop() {
			rdb.FlushDB(ctx)
			fill("bench")
			if err := rdb.XGroupCreate(ctx, "bench", "g", "0").Err(); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			for read := 0; read < n; {
				res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{"bench", ">"}, Count: 100}).Result()
				if err != nil {
					b.Fatal(err)
				}
				p := rdb.Pipeline()
				for _, m := range res[0].Messages {
					p.XAck(ctx, "bench", "g", m.ID)
				}
				if _, err := p.Exec(ctx); err != nil {
					b.Fatal(err)
				}
				read += len(res[0].Messages)
			}
			b.ReportMetric(n/time.Since(start).Seconds(), "events/s")
		}
	})
}
