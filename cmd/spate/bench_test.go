package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

// benchEvents is how many events each consumer benchmark drains: enough
// that the group's join is a small part of a drain (at 100,000 it was a
// sixth).
const benchEvents = 300_000

// BenchmarkConsume measures each consumer (one group member, four
// partitions) draining benchEvents events that are already in Kafka: the
// projector with event_log alone, with the example's SQL projections
// (orders, which keeps customer_totals too, and payments) and with all of
// the example's, and the fan-out; and in the same run the raw ceiling of
// each sink: pgx COPY of the event_log rows (over one connection, and over
// one a partition), pipelined XADDs of the stream entries through go-redis,
// and redis-benchmark's pipelined XADDs (Redis alone, no Go client). Run with
// -benchtime=1x or 3x:
//
//	go test -run '^$' -bench Consume -benchtime 3x ./cmd/spate/
//
// The garbage collector runs as in spate project and spate fanout (tuneGC),
// though here the broker's records share the heap.
func BenchmarkConsume(b *testing.B) {
	defer debug.SetGCPercent(tuneGC())
	log := slog.New(slog.DiscardHandler)
	e := &env{log: log, kafkaLog: log, reg: schemas.Builtin(), metrics: newMetrics(),
		brokers: spatetest.Kafka(b, 4, "spate.events", "spate.events.dlq"), topic: "spate.events"}
	evs := benchPublish(b, e)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, spatetest.Postgres(b))
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	redisURL := spatetest.Redis(b)
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		b.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()

	exampleCfg, err := e.loadConfig("", shopv1.ExampleConfig)
	if err != nil {
		b.Fatal(err)
	}
	exampleSQL, err := projection.Select(exampleCfg.projections, "orders", "payments")
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		projs []projection.Projection
	}{{"project-event_log", nil}, {"project-example-sql", exampleSQL}, {"project-example", exampleCfg.projections}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				e := freshEnv(e)
				url := spatetest.Postgres(b) // a fresh database each time
				proj, ppool, err := e.newProjector(ctx, url, projection.DefaultGroup, tc.projs)
				if err != nil {
					b.Fatal(err)
				}
				benchDrain(b, e, projection.DefaultGroup, proj, func() int64 {
					var n int64
					if err := ppool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM spate_offsets`).Scan(&n); err != nil {
						b.Fatal(err)
					}
					return n
				}, nil)
				ppool.Close()
			}
		})
	}
	b.Run("fanout", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			e := freshEnv(e)
			group, prefix := fmt.Sprint("bench-fanout-", i), fmt.Sprintf("bench%d:", i)
			w, wrdb, err := e.newFanout(ctx, redisURL, fanout.Config{Group: group, Prefix: prefix})
			if err != nil {
				b.Fatal(err)
			}
			benchDrain(b, e, group, w, func() int64 {
				var n int64
				for _, t := range []string{"shop.order.placed.v1", "shop.order.cancelled.v1", "shop.payment.captured.v1"} {
					n += rdb.XLen(ctx, prefix+t).Val()
				}
				return n
			}, func() time.Duration { return redisCPU(b, rdb) })
			wrdb.Close()
			rdb.FlushDB(ctx)
		}
	})
	// event_log's shape: the same columns, key and index.
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS copy_ceiling (
		topic text NOT NULL, partition int NOT NULL, "offset" bigint NOT NULL, id text NOT NULL, type text NOT NULL,
		source text NOT NULL, subject text NOT NULL, time timestamptz NOT NULL, payload jsonb NOT NULL,
		PRIMARY KEY (topic, partition, "offset"));
		CREATE INDEX IF NOT EXISTS copy_ceiling_id ON copy_ceiling (id)`); err != nil {
		b.Fatal(err)
	}
	// The rows of each partition, as the producer keyed them.
	parts := make([][][]any, 4)
	for i, ev := range evs {
		payload, err := e.reg.JSON(ev.Type, ev.Datacontenttype, ev.Data)
		if err != nil {
			b.Fatal(err)
		}
		p := i % len(parts)
		parts[p] = append(parts[p], []any{"spate.events", int32(p), int64(len(parts[p])), ev.Id, ev.Type, ev.Source, ev.Subject, ev.Time.AsTime(), payload})
	}
	// COPY over one connection, and over one a partition as the
	// projector's workers use.
	for _, conns := range []int{1, len(parts)} {
		b.Run(fmt.Sprint("ceiling-pgx-copy-conns-", conns), func(b *testing.B) {
			for b.Loop() {
				if _, err := pool.Exec(ctx, `TRUNCATE copy_ceiling`); err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				var g errgroup.Group
				for c := range conns {
					g.Go(func() error {
						for p := c; p < len(parts); p += conns {
							for i := 0; i < len(parts[p]); i += 10000 {
								_, err := pool.CopyFrom(ctx, pgx.Identifier{"copy_ceiling"}, []string{"topic", "partition", "offset", "id", "type", "source", "subject", "time", "payload"},
									pgx.CopyFromRows(parts[p][i:min(i+10000, len(parts[p]))]))
								if err != nil {
									return err
								}
							}
						}
						return nil
					})
				}
				if err := g.Wait(); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(len(evs))/time.Since(start).Seconds(), "events/s")
			}
		})
	}
	b.Run("ceiling-redis-xadd-pipelined", func(b *testing.B) {
		for b.Loop() {
			rdb.FlushDB(ctx)
			start := time.Now()
			for i := 0; i < len(evs); i += 1000 {
				p := rdb.Pipeline()
				for _, ev := range evs[i:min(i+1000, len(evs))] {
					p.XAdd(ctx, &redis.XAddArgs{Stream: "ceiling:" + ev.Type, Values: []any{
						"id", ev.Id, "source", ev.Source, "type", ev.Type, "subject", ev.Subject,
						"time", ev.Time.AsTime().Format(time.RFC3339Nano), "datacontenttype", "application/json", "data", ev.Data,
					}})
				}
				if _, err := p.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(evs))/time.Since(start).Seconds(), "events/s")
		}
	})
	// Redis's own ceiling, without a Go client: redis-benchmark's pipelined
	// XADDs of one entry as the fan-out writes it (a placed order, its
	// payload as JSON), and of an entry of one small field, which Redis
	// takes 1.6 to 1.9 times as fast here: what an entry holds sets the
	// ceiling.
	placed, err := e.reg.JSON(evs[0].Type, evs[0].Datacontenttype, evs[0].Data)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		entry []string
	}{
		{"fanout-entry", []string{"id", evs[0].Id, "source", evs[0].Source, "type", evs[0].Type, "subject", evs[0].Subject,
			"time", evs[0].Time.AsTime().Format(time.RFC3339Nano), "datacontenttype", "application/json", "data", string(placed)}},
		{"one-field", []string{"f", "v"}},
	} {
		b.Run("ceiling-redis-benchmark-xadd-"+c.name, func(b *testing.B) {
			for b.Loop() {
				rdb.FlushDB(ctx)
				b.ReportMetric(redisBenchmark(b, opts, append([]string{"XADD", "ceiling", "*"}, c.entry...)), "events/s")
			}
		})
	}
}

// redisBenchmark runs redis-benchmark against the Redis of opts: 200,000
// times cmd, 10 connections, 100 commands a round trip. It returns the
// commands a second it reports.
func redisBenchmark(b *testing.B, opts *redis.Options, cmd []string) float64 {
	b.Helper()
	host, port, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		b.Fatal(err)
	}
	args := []string{"-h", host, "-p", port, "--dbnum", strconv.Itoa(opts.DB), "-n", "200000", "-c", "10", "-P", "100", "--csv"}
	if opts.Username != "" {
		args = append(args, "--user", opts.Username)
	}
	if opts.Password != "" {
		args = append(args, "-a", opts.Password)
	}
	if opts.TLSConfig != nil {
		args = append(args, "--tls")
	}
	args = append(args, cmd...)
	out, err := exec.Command("redis-benchmark", args...).Output()
	if err != nil {
		b.Fatalf("redis-benchmark (Debian: apt-get install redis-tools): %v", err)
	}
	// The last line: "command","rps", then six latencies. The command is
	// not escaped (the payload holds commas): count from the end.
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	fields := strings.Split(lines[len(lines)-1], ",")
	if len(fields) < 8 {
		b.Fatalf("redis-benchmark printed %q", out)
	}
	rps, err := strconv.ParseFloat(strings.Trim(fields[len(fields)-7], `"`), 64)
	if err != nil {
		b.Fatalf("redis-benchmark printed %q: %v", out, err)
	}
	return rps
}

// benchPublish writes benchEvents events of the shop domain (the mix of
// spatetest.ShopMix: distinct orders over many customers) to Kafka as the
// edge would, and returns them.
func benchPublish(b *testing.B, e *env) []*spatev1.Event {
	b.Helper()
	cl, err := kgo.NewClient(append(e.kafkaOpts("bench"), producers.Opts()...)...)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	evs := spatetest.ShopMix(benchEvents, time.Now())
	for i := 0; i < len(evs); i += 1000 {
		if _, err := producers.Publish(context.Background(), cl, e.topic, evs[i:min(i+1000, len(evs))]); err != nil {
			b.Fatal(err)
		}
	}
	return evs
}

// freshEnv is e with a metrics registry of its own, as a new process has.
func freshEnv(e *env) *env {
	c := *e
	c.metrics = newMetrics()
	return &c
}

// benchDrain runs a group into h from the earliest offset until count
// reaches benchEvents, and reports two rates. events/s is the rate of
// applying, taken between a tenth and nine tenths of the events applied:
// it leaves out the group's join and first fetch at the start (0.15 to
// 0.2 s here) and, at the end, the last batches, when fewer partitions are
// left than the workers could apply. drain-events/s counts the whole
// drain.
//
// It also reports the CPU time the drain took an event, which varies far
// less than the rates on a shared machine: cpu-µs/event of this process
// (the consumer, and the embedded broker serving its fetches), and, when
// sinkCPU is not nil, sink-cpu-µs/event of the sink's server as sinkCPU
// reads it.
func benchDrain(b *testing.B, e *env, group string, h sink, count func() int64, sinkCPU func() time.Duration) {
	b.Helper()
	g, err := e.newGroup("bench", group, "earliest", 0, h)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cpu0, sink0 := processCPU(b), time.Duration(0)
	if sinkCPU != nil {
		sink0 = sinkCPU()
	}
	start := time.Now()
	go func() { done <- g.Run(ctx) }()
	type sample struct {
		at time.Time
		n  int64
	}
	var from, to sample // the first samples at a tenth and at nine tenths
	for {
		s := sample{time.Now(), count()}
		if from.n == 0 && s.n >= benchEvents/10 {
			from = s
		}
		if to.n == 0 && s.n >= benchEvents*9/10 {
			to = s
		}
		if s.n >= benchEvents {
			break
		}
		select {
		case err := <-done:
			b.Fatalf("group stopped: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if to.n > from.n {
		b.ReportMetric(float64(to.n-from.n)/to.at.Sub(from.at).Seconds(), "events/s")
	} else {
		b.Log("events/s: not measured; a tenth to nine tenths of the events were applied at once")
	}
	b.ReportMetric(benchEvents/time.Since(start).Seconds(), "drain-events/s")
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/benchEvents, "cpu-µs/event")
	if sinkCPU != nil {
		b.ReportMetric(float64((sinkCPU()-sink0).Microseconds())/benchEvents, "sink-cpu-µs/event")
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// processCPU returns the CPU time this process has used (ownCPU).
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	d, err := ownCPU()
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// redisCPU returns the CPU time the Redis server of rdb has used, user and
// system, as INFO cpu reports it.
func redisCPU(b *testing.B, rdb *redis.Client) time.Duration {
	b.Helper()
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for line := range strings.Lines(info) {
		name, val, _ := strings.Cut(strings.TrimSpace(line), ":")
		if name != "used_cpu_sys" && name != "used_cpu_user" {
			continue
		}
		secs, err := strconv.ParseFloat(val, 64)
		if err != nil {
			b.Fatalf("INFO cpu: %s: %v", line, err)
		}
		total += time.Duration(secs * float64(time.Second))
	}
	if total == 0 {
		b.Fatalf("INFO cpu has no used_cpu_sys or used_cpu_user: %q", info)
	}
	return total
}
