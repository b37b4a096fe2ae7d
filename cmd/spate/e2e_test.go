package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/producers/edge"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

func TestMain(m *testing.M) { spatetest.Main(m) }

const (
	e2eClients  = 16
	e2eEvents   = 10000
	e2eSubjects = 8 // per client; a subject belongs to one client, so its order is the client's
)

// e2e is a whole pipeline on a fresh broker, database and key prefix.
type e2e struct {
	env      *env
	edge     string // base URL
	pgURL    string
	redisURL string
	pool     *pgxpool.Pool
	rdb      *redis.Client
	prefix   string
}

func newE2E(t *testing.T) *e2e {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	x := &e2e{
		env: &env{log: log, kafkaLog: log, reg: schemas.Builtin(), metrics: newMetrics(),
			brokers: spatetest.Kafka(t, 4, "spate.events", "spate.events.dlq"), topic: "spate.events"},
		pgURL:  spatetest.Postgres(t),
		prefix: spatetest.KeyPrefix(t),
	}
	srv, cl, err := x.env.newEdge(edge.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	x.edge = serveOnLoopback(t, srv)

	x.pool, err = pgxpool.New(context.Background(), x.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.pool.Close)
	x.redisURL = spatetest.Redis(t)
	opts, err := redis.ParseURL(x.redisURL)
	if err != nil {
		t.Fatal(err)
	}
	x.rdb = redis.NewClient(opts)
	t.Cleanup(func() { x.rdb.Close() })
	return x
}

// startConsumers runs a projector and a fan-out, each with its own
// connections as separate processes would have, until stop is called.
func (x *e2e) startConsumers(t *testing.T) (stop func()) {
	t.Helper()
	ctx := context.Background()
	e := freshEnv(x.env)
	proj, pool, err := e.newProjector(ctx, x.pgURL, projection.DefaultGroup, nil)
	if err != nil {
		t.Fatal(err)
	}
	fan, rdb, err := e.newFanout(context.Background(), x.redisURL, fanout.Config{Prefix: x.prefix})
	if err != nil {
		t.Fatal(err)
	}
	pg, err := e.newGroup("project", projection.DefaultGroup, "earliest", 0, proj)
	if err != nil {
		t.Fatal(err)
	}
	fg, err := e.newGroup("fanout", fanout.DefaultGroup, "earliest", 0, fan)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	var g errgroup.Group
	g.Go(func() error { return pg.Run(rctx) })
	g.Go(func() error { return fg.Run(rctx) })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := g.Wait(); err != nil {
				t.Errorf("consumers: %v", err)
			}
			pool.Close()
			rdb.Close()
		})
	}
	t.Cleanup(stop)
	if err := awaitStarted(ctx, pg, fg); err != nil {
		t.Fatal(err)
	}
	return stop
}

// send publishes e2eEvents events from e2eClients concurrent clients,
// rotating JSON single events, JSON batches and protobuf batches, and calls
// progress after each acknowledged request with the events acknowledged so far.
func (x *e2e) send(t *testing.T, progress func(acked int64)) {
	t.Helper()
	var acked atomic.Int64
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: e2eClients}}
	defer client.CloseIdleConnections()
	var g errgroup.Group
	for c := range e2eClients {
		g.Go(func() error {
			perClient := e2eEvents / e2eClients
			for seq := 0; seq < perClient; {
				n := min([]int{1, 5, 4}[seq%3], perClient-seq)
				ct, body, err := request(c, seq, n, seq%3 == 2)
				if err != nil {
					return err
				}
				resp, err := client.Post(x.edge+"/v1/events", ct, bytes.NewReader(body))
				if err != nil {
					return err
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					return fmt.Errorf("client %d seq %d: status %d: %s", c, seq, resp.StatusCode, b)
				}
				seq += n
				if progress != nil {
					progress(acked.Add(int64(n)))
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// request builds n events of client c from seq on: ids c<c>-<seq>, subjects
// owned by the client, types rotating over the shop domain.
func request(c, seq, n int, protobuf bool) (string, []byte, error) {
	var evs []*spatev1.Event
	var jsons []string
	for i := seq; i < seq+n; i++ {
		id := fmt.Sprintf("c%d-%d", c, i)
		subject := fmt.Sprintf("c%d-s%d", c, i%e2eSubjects)
		var m proto.Message
		var typ string
		switch i % 3 {
		case 0:
			typ, m = "shop.order.placed.v1", &shopv1.OrderPlaced{OrderId: subject, CustomerId: "cust", AmountCents: int64(i), Currency: "EUR",
				Items: []*shopv1.LineItem{{Sku: "sku", Quantity: 1, PriceCents: int64(i)}}}
		case 1:
			typ, m = "shop.order.cancelled.v1", &shopv1.OrderCancelled{OrderId: subject, Reason: "changed mind"}
		default:
			typ, m = "shop.payment.captured.v1", &shopv1.PaymentCaptured{PaymentId: id, OrderId: subject, AmountCents: int64(i), Currency: "EUR"}
		}
		if protobuf {
			data, err := proto.Marshal(m)
			if err != nil {
				return "", nil, err
			}
			evs = append(evs, &spatev1.Event{Id: id, Source: "/e2e", Type: typ, Subject: subject, Data: data})
			continue
		}
		data, err := protojson.Marshal(m)
		if err != nil {
			return "", nil, err
		}
		jsons = append(jsons, fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"/e2e","type":%q,"subject":%q,"data":%s}`, id, typ, subject, data))
	}
	switch {
	case protobuf:
		b, err := proto.Marshal(&spatev1.PublishRequest{Events: evs})
		return "application/x-protobuf", b, err
	case n == 1:
		return "application/cloudevents+json", []byte(jsons[0]), nil
	}
	return "application/cloudevents-batch+json", []byte("[" + strings.Join(jsons, ",") + "]"), nil
}

// seqOf returns the client and sequence number an id encodes.
func seqOf(t *testing.T, id string) (client string, seq int) {
	t.Helper()
	c, s, ok := strings.Cut(id, "-")
	n, err := strconv.Atoi(s)
	if !ok || err != nil {
		t.Fatalf("unexpected event id %q", id)
	}
	return c, n
}

// orderChecker checks that each subject's events come in sending order.
type orderChecker struct {
	t    *testing.T
	last map[string]int
}

func (o *orderChecker) see(where, subject, id string) {
	_, seq := seqOf(o.t, id)
	if prev, ok := o.last[subject]; ok && seq <= prev {
		o.t.Fatalf("%s: subject %s has event %s after seq %d: order per subject broken", where, subject, id, prev)
	}
	o.last[subject] = seq
}

// verify waits until every event reached both sinks, then checks each id is
// in event_log exactly once and in its stream exactly once, in order per subject.
func (x *e2e) verify(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	streams := []string{"shop.order.placed.v1", "shop.order.cancelled.v1", "shop.payment.captured.v1"}
	spatetest.Eventually(t, 2*time.Minute, func() string {
		var rows int64
		if err := x.pool.QueryRow(ctx, `SELECT count(*) FROM event_log`).Scan(&rows); err != nil {
			return err.Error()
		}
		var entries int64
		for _, s := range streams {
			entries += x.rdb.XLen(ctx, x.prefix+s).Val()
		}
		if rows < e2eEvents || entries < e2eEvents {
			return fmt.Sprintf("event_log has %d rows and the streams %d entries, want %d each", rows, entries, e2eEvents)
		}
		return ""
	})

	// event_log: every id once; per subject, Kafka order is sending order.
	rows, err := x.pool.Query(ctx, `SELECT id, subject FROM event_log ORDER BY partition, "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	order := &orderChecker{t: t, last: map[string]int{}}
	for rows.Next() {
		var id, subject string
		if err := rows.Scan(&id, &subject); err != nil {
			t.Fatal(err)
		}
		seen[id]++
		order.see("event_log", subject, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	checkOnce(t, "event_log", seen)

	// Streams: every id once across them; per subject in order within each.
	seen = map[string]int{}
	for _, s := range streams {
		order := &orderChecker{t: t, last: map[string]int{}}
		msgs, err := x.rdb.XRange(ctx, x.prefix+s, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			id, _ := m.Values["id"].(string)
			subject, _ := m.Values["subject"].(string)
			if typ, _ := m.Values["type"].(string); typ != s {
				t.Fatalf("stream %s holds an event of type %s", s, typ)
			}
			seen[id]++
			order.see("stream "+s, subject, id)
		}
	}
	checkOnce(t, "streams", seen)
}

func checkOnce(t *testing.T, where string, seen map[string]int) {
	t.Helper()
	for c := range e2eClients {
		for seq := range e2eEvents / e2eClients {
			id := fmt.Sprintf("c%d-%d", c, seq)
			if n := seen[id]; n != 1 {
				t.Fatalf("%s holds event %s %d times, want exactly once", where, id, n)
			}
		}
	}
	if len(seen) != e2eEvents {
		t.Fatalf("%s holds %d distinct events, want %d", where, len(seen), e2eEvents)
	}
}

func TestEndToEnd(t *testing.T) {
	x := newE2E(t)
	x.startConsumers(t)
	start := time.Now()
	x.send(t, nil)
	t.Logf("sent %d events in %v", e2eEvents, time.Since(start))
	x.verify(t)
	t.Logf("all in both sinks after %v", time.Since(start))
}

func TestEndToEndConsumersRestartMidStream(t *testing.T) {
	x := newE2E(t)
	stop := x.startConsumers(t)
	var mu sync.Mutex
	restarts := 0
	x.send(t, func(acked int64) {
		mu.Lock()
		defer mu.Unlock()
		// Stop both sinks at a third and two thirds of the way, while
		// producers keep sending, and start them again.
		if restarts < 2 && acked >= int64(restarts+1)*e2eEvents/3 {
			restarts++
			stop()
			stop = x.startConsumers(t)
		}
	})
	if restarts != 2 {
		t.Fatalf("restarted %d times, want 2", restarts)
	}
	x.verify(t)
}
