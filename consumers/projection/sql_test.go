package projection_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// shopEvent returns an event of the shop domain happening at t0+at.
func shopEvent(t *testing.T, id, subject string, at time.Duration, m proto.Message) *spatev1.Event {
	t.Helper()
	types := map[string]string{
		"shop.v1.OrderPlaced": "shop.order.placed.v1", "shop.v1.OrderCancelled": "shop.order.cancelled.v1",
		"shop.v1.PaymentCaptured": "shop.payment.captured.v1",
	}
	data, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return &spatev1.Event{Id: id, Source: "/test", Type: types[string(m.ProtoReflect().Descriptor().FullName())],
		Subject: subject, Time: timestamppb.New(t0.Add(at)), Datacontenttype: schemas.ContentTypeProtobuf, Data: data}
}

// asBatch returns the events as one batch of partition 0 from offset 0.
func asBatch(evs ...*spatev1.Event) consumers.Batch {
	b := consumers.Batch{Topic: "events"}
	for i, ev := range evs {
		r := cekafka.Record("events", ev)
		r.Offset = int64(i)
		b.Records = append(b.Records, r)
	}
	b.Next = int64(len(evs))
	return b
}

func newConfigured(t *testing.T, config []byte) (*projection.Projector, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	projs, err := projection.Load("spate.yaml", config, schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, spatetest.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	p := projection.New(pool, schemas.Builtin(), projection.Config{Projections: projs})
	if err := p.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return p, pool
}

// rows returns a query's rows, each as a string, for comparing.
func rows(t *testing.T, pool *pgxpool.Pool, sql string) []string {
	t.Helper()
	rs, err := pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		vals, err := rs.Values()
		if err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = fmt.Sprint(v)
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func wantRows(t *testing.T, pool *pgxpool.Pool, sql string, want ...string) {
	t.Helper()
	got := rows(t, pool, sql)
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("%s\n got %q\nwant %q", sql, got, want)
	}
}

func TestExampleProjections(t *testing.T) {
	t.Parallel()
	p, pool := newConfigured(t, shopv1.ExampleConfig)
	b := asBatch(
		shopEvent(t, "e1", "o-1", 0, &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 4200, Currency: "EUR"}),
		shopEvent(t, "e2", "o-2", time.Second, &shopv1.OrderPlaced{OrderId: "o-2", CustomerId: "c-1", AmountCents: 100, Currency: "EUR"}),
		shopEvent(t, "e3", "o-3", 2*time.Second, &shopv1.OrderPlaced{OrderId: "o-3", CustomerId: "c-2", AmountCents: 7, Currency: "EUR"}),
		shopEvent(t, "e4", "o-2", 3*time.Second, &shopv1.OrderCancelled{OrderId: "o-2", Reason: "late"}),
		shopEvent(t, "e5", "o-2", 4*time.Second, &shopv1.OrderCancelled{OrderId: "o-2", Reason: "cancelled twice"}),
		shopEvent(t, "e6", "o-1", 5*time.Second, &shopv1.PaymentCaptured{PaymentId: "pay-1", OrderId: "o-1", AmountCents: 4200, Currency: "EUR"}),
		shopEvent(t, "e7", "o-1", 6*time.Second, &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 4200, Currency: "EUR"}), // a producer retry
	)
	if err := p.Apply(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	wantRows(t, pool, `SELECT order_id, customer_id, amount_cents, status FROM orders ORDER BY order_id`,
		"o-1|c-1|4200|placed", "o-2|c-1|100|cancelled", "o-3|c-2|7|placed")
	wantRows(t, pool, `SELECT customer_id, orders, amount_cents FROM customer_totals ORDER BY customer_id`,
		"c-1|1|4200", "c-2|1|7")
	wantRows(t, pool, `SELECT payment_id, order_id, amount_cents FROM payments`, "pay-1|o-1|4200")
	wantRows(t, pool, `SELECT type, subject, id FROM spate_latest ORDER BY type, subject`,
		"shop.order.cancelled.v1|o-2|e5", "shop.order.placed.v1|o-1|e7", "shop.order.placed.v1|o-2|e2", "shop.order.placed.v1|o-3|e3",
		"shop.payment.captured.v1|o-1|e6")
	wantRows(t, pool, `SELECT type, events FROM spate_counters ORDER BY type`,
		"shop.order.cancelled.v1|2", "shop.order.placed.v1|4", "shop.payment.captured.v1|1")
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "7")
}

func TestOutOfOrderDeliveryKeepsTheNewest(t *testing.T) {
	t.Parallel()
	p, pool := newConfigured(t, shopv1.ExampleConfig)
	// Offsets run opposite to event time: the newest events come first.
	b := asBatch(
		shopEvent(t, "cancel", "o-1", 10*time.Second, &shopv1.OrderCancelled{OrderId: "o-1", Reason: "r"}),
		shopEvent(t, "place", "o-1", 0, &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 50, Currency: "EUR"}),
		shopEvent(t, "pay-new", "o-1", 9*time.Second, &shopv1.PaymentCaptured{PaymentId: "pay-1", OrderId: "o-1", AmountCents: 2}),
		shopEvent(t, "pay-old", "o-1", 8*time.Second, &shopv1.PaymentCaptured{PaymentId: "pay-1", OrderId: "o-1", AmountCents: 1}),
	)
	// Applied in two batches too: across transactions as within one.
	for _, bb := range []consumers.Batch{{Topic: b.Topic, Records: b.Records[:1], Next: 1}, {Topic: b.Topic, Records: b.Records[1:], Next: 4}} {
		if err := p.Apply(context.Background(), bb); err != nil {
			t.Fatal(err)
		}
	}
	wantRows(t, pool, `SELECT order_id, customer_id, amount_cents, status, version = $$2026-11-01 12:00:10Z$$ FROM orders`,
		"o-1|c-1|50|cancelled|true")
	wantRows(t, pool, `SELECT customer_id, orders FROM customer_totals`, "c-1|0") // a cancelled order is never counted
	wantRows(t, pool, `SELECT type, id FROM spate_latest ORDER BY type`,
		"shop.order.cancelled.v1|cancel", "shop.order.placed.v1|place", "shop.payment.captured.v1|pay-new")
}

// Events of one order at the same time: the example applies them alike in
// one batch or in two, whichever comes first.
func TestSameTimeEventsApplyAlikeInOneBatchOrTwo(t *testing.T) {
	t.Parallel()
	placed := shopEvent(t, "place", "o-1", 0, &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 100, Currency: "EUR"})
	cancelled := shopEvent(t, "cancel", "o-1", 0, &shopv1.OrderCancelled{OrderId: "o-1", Reason: "r"})
	for _, tc := range []struct {
		name string
		evs  []*spatev1.Event
	}{{"placed first", []*spatev1.Event{placed, cancelled}}, {"cancelled first", []*spatev1.Event{cancelled, placed}}} {
		t.Run(tc.name, func(t *testing.T) {
			b := asBatch(tc.evs...)
			state := func(batches ...consumers.Batch) []string {
				p, pool := newConfigured(t, shopv1.ExampleConfig)
				for _, bb := range batches {
					if err := p.Apply(context.Background(), bb); err != nil {
						t.Fatal(err)
					}
				}
				return rows(t, pool, `SELECT o.status || ' ' || t.orders || ' ' || t.amount_cents
					FROM orders AS o JOIN customer_totals AS t USING (customer_id)`)
			}
			one := state(b)
			two := state(consumers.Batch{Topic: b.Topic, Records: b.Records[:1], Next: 1}, consumers.Batch{Topic: b.Topic, Records: b.Records[1:], Next: 2})
			if fmt.Sprint(one) != fmt.Sprint(two) {
				t.Errorf("in one batch %v, in two %v", one, two)
			}
		})
	}
}

// Two placed events of one order, the newer first: the newer one's
// customer and amount stand, in one batch or in two.
func TestOlderPlacedEventNeverOverwrites(t *testing.T) {
	t.Parallel()
	newer := shopEvent(t, "newer", "o-1", time.Minute, &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-2", AmountCents: 200, Currency: "EUR"})
	older := shopEvent(t, "older", "o-1", 0, &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 100, Currency: "EUR"})
	b := asBatch(newer, older)
	for _, batches := range [][]consumers.Batch{
		{b},
		{{Topic: b.Topic, Records: b.Records[:1], Next: 1}, {Topic: b.Topic, Records: b.Records[1:], Next: 2}},
	} {
		p, pool := newConfigured(t, shopv1.ExampleConfig)
		for _, bb := range batches {
			if err := p.Apply(context.Background(), bb); err != nil {
				t.Fatal(err)
			}
		}
		wantRows(t, pool, `SELECT order_id, customer_id, amount_cents FROM orders`, "o-1|c-2|200")
		wantRows(t, pool, `SELECT customer_id, orders, amount_cents FROM customer_totals WHERE orders <> 0 ORDER BY customer_id`, "c-2|1|200")
	}
}

func TestParametersAreNeverSQL(t *testing.T) {
	t.Parallel()
	p, pool := newConfigured(t, []byte(`
projections:
  - name: notes
    migrations:
      - CREATE TABLE notes (order_id text, reason text, subject text, tenant text)
    on:
      shop.order.cancelled.v1: |
        INSERT INTO notes VALUES (:data.order_id, :data.reason, :subject, :ext.tenant) -- ':id' stays text
`))
	hostile := []string{
		`'); DROP TABLE notes; --`,
		`x', (SELECT current_user)) --`,
		`$1 :id $$ \'`,
		"odd \u2028 line",
	}
	var evs []*spatev1.Event
	for i, h := range hostile {
		ev := shopEvent(t, fmt.Sprint("e", i), h, 0, &shopv1.OrderCancelled{OrderId: h, Reason: h})
		ev.Extensions = map[string]string{"tenant": h}
		evs = append(evs, ev)
	}
	if err := p.Apply(context.Background(), asBatch(evs...)); err != nil {
		t.Fatal(err)
	}
	got := rows(t, pool, `SELECT order_id, reason, subject, tenant FROM notes`)
	if len(got) != len(hostile) {
		t.Fatalf("notes holds %d rows, want %d", len(got), len(hostile))
	}
	for i, r := range got {
		h := evs[i].Subject
		if want := strings.Join([]string{h, h, h, h}, "|"); r != want {
			t.Errorf("row %d = %q, want the value stored verbatim four times: %q", i, r, want)
		}
	}
}

func TestPoisonEventGoesToDeadLetterTopic(t *testing.T) {
	t.Parallel()
	const migration = `
projections:
  - name: payments
    migrations:
      - CREATE TABLE payments (payment_id text PRIMARY KEY, amount_cents bigint NOT NULL CHECK (amount_cents >= 0))
`
	for name, config := range map[string]string{
		"per event": migration + `
    on:
      shop.payment.captured.v1: INSERT INTO payments VALUES (:data.payment_id, :data.amount_cents)
`,
		// A set statement fails as a whole: the projector finds the event.
		"batch": migration + `
    batch:
      - type: shop.payment.captured.v1
        sql: INSERT INTO payments SELECT :data.payment_id, :data.amount_cents FROM batch
`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testPoison(t, []byte(config))
		})
	}
}

func testPoison(t *testing.T, config []byte) {
	const n = 10_000
	brokers := spatetest.Kafka(t, 2, "events", consumers.DLQTopic("events"))
	p, pool := newConfigured(t, config)
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, producers.Opts()...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var evs []*spatev1.Event
	for i := range n {
		amount := int64(i)
		if i == 4321 {
			amount = -1 // violates the CHECK constraint
		}
		evs = append(evs, shopEvent(t, fmt.Sprint("e", i), fmt.Sprint("o-", i%100), 0,
			&shopv1.PaymentCaptured{PaymentId: fmt.Sprint("pay-", i), AmountCents: amount}))
	}
	if _, err := producers.Publish(context.Background(), cl, "events", evs); err != nil {
		t.Fatal(err)
	}

	runLiveGroup(t, p, pool, brokers, n)
	wantRows(t, pool, `SELECT count(*) FROM payments`, fmt.Sprint(n-1))
	wantRows(t, pool, `SELECT count(*) FROM payments WHERE payment_id = 'pay-4321'`, "0")

	dl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(consumers.DLQTopic("events")),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	var dead []*kgo.Record
	spatetest.Eventually(t, 30*time.Second, func() string {
		fctx, fcancel := context.WithTimeout(context.Background(), time.Second)
		defer fcancel()
		dead = append(dead, dl.PollFetches(fctx).Records()...)
		if len(dead) == 0 {
			return "no dead letter yet"
		}
		return ""
	})
	// Nothing more arrives: exactly one.
	fctx, fcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer fcancel()
	dead = append(dead, dl.PollFetches(fctx).Records()...)
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want exactly 1", len(dead))
	}
	h := map[string]string{}
	for _, kv := range dead[0].Headers {
		h[kv.Key] = string(kv.Value)
	}
	ev, err := cekafka.Event(dead[0])
	if err != nil || ev.Id != "e4321" {
		t.Fatalf("dead letter is %v (%v), want event e4321", ev, err)
	}
	for k, want := range map[string]string{
		consumers.HeaderDLQSink:  "payments",
		consumers.HeaderDLQClass: "integrity-constraint-violation",
		consumers.HeaderDLQTopic: "events",
	} {
		if h[k] != want {
			t.Errorf("header %s = %q, want %q", k, h[k], want)
		}
	}
	if h[consumers.HeaderDLQReason] == "" || h[consumers.HeaderDLQOffset] == "" {
		t.Errorf("headers %v lack the reason or the original offset", h)
	}
	// Noted in Postgres too, where a rebuild finds it after the topic's
	// retention deleted it.
	wantRows(t, pool, `SELECT consumer_group, topic, partition, "offset", projection, class FROM spate_dead_letters`,
		fmt.Sprintf("%s|events|%d|%d|payments|integrity-constraint-violation", projection.DefaultGroup, dead[0].Partition, mustAtoi(t, h[consumers.HeaderDLQOffset])))
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMetricsCountCommittedEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, spatetest.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	reg := prometheus.NewRegistry()
	projs, err := projection.Load("spate.yaml", []byte(`
projections:
  - name: event_log     # succeeds in the failing batch's transaction, which rolls back
    builtin: event_log
  - name: payments
    migrations:
      - CREATE TABLE payments (payment_id text PRIMARY KEY, amount_cents bigint CHECK (amount_cents >= 0))
    on:
      shop.payment.captured.v1: INSERT INTO payments VALUES (:data.payment_id, :data.amount_cents)
  - name: payment_ids   # applied together with payments, counted on its own
    migrations:
      - CREATE TABLE payment_ids (payment_id text PRIMARY KEY)
    on:
      shop.payment.captured.v1: INSERT INTO payment_ids VALUES (:data.payment_id)
`), schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	p := projection.New(pool, schemas.Builtin(), projection.Config{Projections: projs, Metrics: reg})
	if err := p.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	good := asBatch(
		shopEvent(t, "e0", "o-0", 0, &shopv1.PaymentCaptured{PaymentId: "p0", AmountCents: 1}),
		shopEvent(t, "e1", "o-1", 0, &shopv1.PaymentCaptured{PaymentId: "p1", AmountCents: 2}),
	)
	if err := p.Apply(ctx, good); err != nil {
		t.Fatal(err)
	}
	bad := asBatch(shopEvent(t, "e2", "o-2", 0, &shopv1.PaymentCaptured{PaymentId: "p2", AmountCents: -1}))
	bad.Records[0].Offset, bad.Next = 2, 3
	if err := p.Apply(ctx, bad); err == nil {
		t.Fatal("Apply of a constraint violation succeeded")
	}
	for _, name := range []string{"event_log", "payments", "payment_ids"} {
		if got := projectionEvents(t, reg, name); got != 2 {
			t.Errorf("spate_projection_events_total{projection=%s} = %v, want 2: the rolled-back batch must not count", name, got)
		}
	}
}

// projectionEvents gathers spate_projection_events_total of one projection.
func projectionEvents(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "spate_projection_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == name {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no spate_projection_events_total{projection=%q}", name)
	return 0
}

// TestBatchStatementWithCommentsBeforeItsWith: a batch statement of its own
// WITH clause after comments (nested ones too) gets the relation batch
// merged into that WITH, not put before it as a second one.
func TestBatchStatementWithCommentsBeforeItsWith(t *testing.T) {
	t.Parallel()
	const config = `
projections:
  - name: pays
    migrations:
      - CREATE TABLE pays (payment_id text PRIMARY KEY, amount_cents bigint)
    batch:
      - type: shop.payment.captured.v1
        sql: |
          -- the newest event of each payment
          /* a comment /* nested */ WITH is not a keyword here */
          WITH fresh AS (
            SELECT DISTINCT ON (:data.payment_id) :data.payment_id AS id, :data.amount_cents AS amount
            FROM batch ORDER BY :data.payment_id, :offset DESC)
          INSERT INTO pays SELECT id, amount FROM fresh ON CONFLICT DO NOTHING
`
	p, pool := newConfigured(t, []byte(config))
	b := asBatch(shopEvent(t, "e1", "o-1", 0, &shopv1.PaymentCaptured{PaymentId: "pay-1", OrderId: "o-1", AmountCents: 42, Currency: "EUR"}))
	if err := p.Apply(context.Background(), b); err != nil {
		t.Fatalf("Apply = %v", err)
	}
	wantRows(t, pool, `SELECT payment_id, amount_cents FROM pays`, "pay-1|42")
}

// TestLatestAlikeInOneBatchOrTwo: two events of one subject less than a
// microsecond apart (Postgres keeps microseconds) leave the same event in
// latest whether they come in one batch or in two.
func TestLatestAlikeInOneBatchOrTwo(t *testing.T) {
	t.Parallel()
	const config = "projections:\n  - name: latest\n    builtin: latest\n"
	first := shopEvent(t, "first", "o-1", 400*time.Nanosecond, &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 1, Currency: "EUR"})
	second := shopEvent(t, "second", "o-1", 300*time.Nanosecond, &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 2, Currency: "EUR"})
	b := asBatch(first, second)
	state := func(batches ...consumers.Batch) []string {
		p, pool := newConfigured(t, []byte(config))
		for _, bb := range batches {
			if err := p.Apply(context.Background(), bb); err != nil {
				t.Fatal(err)
			}
		}
		return rows(t, pool, `SELECT id FROM spate_latest`)
	}
	one := state(b)
	two := state(consumers.Batch{Topic: b.Topic, Records: b.Records[:1], Next: 1}, consumers.Batch{Topic: b.Topic, Records: b.Records[1:], Next: 2})
	if fmt.Sprint(one) != fmt.Sprint(two) || fmt.Sprint(one) != "[second]" {
		t.Errorf("latest holds %v after one batch, %v after two; want [second] both times (same microsecond, later offset)", one, two)
	}
}

// TestBuiltinsGoByTheirDeclaredName: built-ins declared under names of
// their own (two latest projections, one a table) are known by those
// names, Select finds them, and each applies to its own table.
func TestBuiltinsGoByTheirDeclaredName(t *testing.T) {
	t.Parallel()
	const config = `
projections:
  - name: recent_orders
    builtin: latest
    table: recent_orders
    types: ["shop.order.*"]
  - name: recent_payments
    builtin: latest
    table: recent_payments
    types: ["shop.payment.*"]
`
	projs, err := projection.Load("spate.yaml", []byte(config), schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(projection.Names(projs)); got != "[recent_orders recent_payments]" {
		t.Errorf("Names = %s, want [recent_orders recent_payments]", got)
	}
	if _, err := projection.Select(projs, "recent_payments"); err != nil {
		t.Errorf("Select(recent_payments) = %v", err)
	}
	p, pool := newConfigured(t, []byte(config))
	b := asBatch(
		shopEvent(t, "e1", "o-1", 0, &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 1, Currency: "EUR"}),
		shopEvent(t, "e2", "pay-1", 0, &shopv1.PaymentCaptured{PaymentId: "pay-1", OrderId: "o-1", AmountCents: 1, Currency: "EUR"}))
	if err := p.Apply(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	wantRows(t, pool, `SELECT (SELECT string_agg(id, ',') FROM recent_orders) || '|' || (SELECT string_agg(id, ',') FROM recent_payments)`, "e1|e2")
	wantRows(t, pool, `SELECT string_agg(projection, ',' ORDER BY projection) FROM spate_projections`, "recent_orders,recent_payments")
}

// TestEmptyBatchStoresItsOffset: a batch of no records (a group that
// starts at the latest offset stores the end so) moves the offset.
func TestEmptyBatchStoresItsOffset(t *testing.T) {
	t.Parallel()
	p, _ := newConfigured(t, []byte("projections:\n  - name: event_log\n    builtin: event_log\n"))
	ctx := context.Background()
	if err := p.Apply(ctx, consumers.Batch{Topic: "events", Partition: 3, Next: 42}); err != nil {
		t.Fatal(err)
	}
	if offs, err := p.Offsets(ctx, "events", []int32{3}); err != nil || offs[3] != 42 {
		t.Fatalf("Offsets = %v, %v; want partition 3 at 42", offs, err)
	}
}

// TestFailuresAreForgottenOnceApplied: an event that failed on data once
// (a row another partition had not written yet, say) and then applied is
// not counted towards poison any more.
func TestFailuresAreForgottenOnceApplied(t *testing.T) {
	t.Parallel()
	const config = `
projections:
  - name: pays
    migrations:
      - CREATE TABLE pays (payment_id text PRIMARY KEY, amount_cents bigint CHECK (amount_cents < 1000))
    on:
      shop.payment.captured.v1: INSERT INTO pays VALUES (:data.payment_id, :data.amount_cents)
`
	p, pool := newConfigured(t, []byte(config))
	ctx := context.Background()
	b := asBatch(shopEvent(t, "e1", "o-1", 0, &shopv1.PaymentCaptured{PaymentId: "pay-1", OrderId: "o-1", AmountCents: 5000, Currency: "EUR"}))
	if err := p.Apply(ctx, b); err == nil {
		t.Fatal("Apply: no error for an amount the table refuses")
	}
	if n := projection.FailuresCounted(p); n != 1 {
		t.Fatalf("%d events with failures counted, want 1", n)
	}
	if _, err := pool.Exec(ctx, `ALTER TABLE pays DROP CONSTRAINT pays_amount_cents_check`); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if n := projection.FailuresCounted(p); n != 0 {
		t.Fatalf("%d events with failures counted once applied, want 0", n)
	}
}
