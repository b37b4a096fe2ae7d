package projection_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

// redriveConfig has three projections of payments: event_log, payments,
// whose amount_not_negative constraint rejects a refund-like payment, and
// payment_totals, which counts (so applying an event twice shows).
const redriveConfig = `
projections:
  - name: event_log
    builtin: event_log
  - name: payments
    migrations:
      - CREATE TABLE payments (payment_id text PRIMARY KEY CHECK (payment_id <> ''), amount_cents bigint NOT NULL CONSTRAINT amount_not_negative CHECK (amount_cents >= 0))
    on:
      shop.payment.captured.v1: INSERT INTO payments VALUES (:data.payment_id, :data.amount_cents)
  - name: payment_totals
    migrations:
      - CREATE TABLE payment_totals (currency text PRIMARY KEY, payments bigint NOT NULL, amount_cents bigint NOT NULL)
    on:
      shop.payment.captured.v1: |
        INSERT INTO payment_totals VALUES (:data.currency, 1, :data.amount_cents)
        ON CONFLICT (currency) DO UPDATE SET payments = payment_totals.payments + 1, amount_cents = payment_totals.amount_cents + excluded.amount_cents
`

// readDLQ returns the first n records of the dead-letter topic of events,
// and checks that no more are there.
func readDLQ(t *testing.T, brokers []string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(consumers.DLQTopic("events")),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var dead []*kgo.Record
	spatetest.Eventually(t, 30*time.Second, func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		dead = append(dead, cl.PollFetches(ctx).Records()...)
		if len(dead) < n {
			return fmt.Sprintf("%d dead letters, want %d", len(dead), n)
		}
		return ""
	})
	if len(dead) != n {
		t.Fatalf("%d dead letters, want %d", len(dead), n)
	}
	return dead
}

// deadLetterAPayment publishes n payments of redriveConfig, the one at bad
// with a negative amount, and runs p's group until it consumed them all
// and dead-lettered that one. It returns the events' receipts, the sum of
// their amounts and the dead letter. With bad -1, every amount is positive
// and nothing is dead-lettered.
func deadLetterAPayment(t *testing.T, p *projection.Projector, pool *pgxpool.Pool, brokers []string, n, bad int) ([]*spatev1.Receipt, int64, *kgo.Record) {
	t.Helper()
	ctx := context.Background()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, producers.Opts()...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var evs []*spatev1.Event
	var want int64
	for i := range n {
		amount := int64(100 + i)
		if i == bad {
			amount = -5
		}
		want += amount
		evs = append(evs, shopEvent(t, fmt.Sprint("e", i), fmt.Sprint("o-", i%10), time.Duration(i)*time.Second,
			&shopv1.PaymentCaptured{PaymentId: fmt.Sprint("pay-", i), AmountCents: amount, Currency: "EUR"}))
	}
	receipts, err := producers.Publish(ctx, cl, "events", evs)
	if err != nil {
		t.Fatal(err)
	}
	runLiveGroup(t, p, pool, brokers, int64(n))
	if bad < 0 {
		readDLQ(t, brokers, 0)
		return receipts, want, nil
	}
	return receipts, want, readDLQ(t, brokers, 1)[0]
}

// TestRedriveAppliesOnceAfterFix: a real group dead-letters one event of
// 200 for a constraint; re-driving it before the fix commits nothing;
// after the fix (the constraint dropped) eight concurrent re-drives apply
// it exactly once, to every projection, at its original offset; later
// re-drives, also of a second dead letter of the same event, apply nothing.
func TestRedriveAppliesOnceAfterFix(t *testing.T) {
	t.Parallel()
	const n = 200
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 2, "events", consumers.DLQTopic("events"))
	p, pool := newConfigured(t, []byte(redriveConfig))
	receipts, want, dl := deadLetterAPayment(t, p, pool, brokers, n, 50)
	totals := fmt.Sprintf("EUR|%d|%d", n-1, want+5)
	wantRows(t, pool, `SELECT currency, payments, amount_cents FROM payment_totals`, totals)
	wantRows(t, pool, `SELECT count(*) FROM event_log WHERE id = 'e50'`, "0")

	if ok, err := p.Redriven(ctx, dl); ok || err != nil {
		t.Fatalf("Redriven before any re-drive = %v, %v; want false", ok, err)
	}
	wantRows(t, pool, `SELECT to_regclass('spate_redrives') IS NULL`, "true") // Redriven created nothing

	// Before the fix: the projection still rejects it; nothing is committed.
	applied, err := p.Redrive(ctx, dl)
	var pe *consumers.PoisonError
	if applied || !errors.As(err, &pe) || pe.Sink != "payments" || pe.Class != "integrity-constraint-violation" {
		t.Fatalf("Redrive before the fix = %v, %v; want a PoisonError of payments, integrity-constraint-violation", applied, err)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log WHERE id = 'e50'`, "0") // event_log applied it before payments failed: rolled back
	wantRows(t, pool, `SELECT count(*) FROM spate_redrives`, "0")
	wantRows(t, pool, `SELECT currency, payments, amount_cents FROM payment_totals`, totals)

	// The fix.
	if _, err := pool.Exec(ctx, `ALTER TABLE payments DROP CONSTRAINT amount_not_negative`); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	results := make(chan error, 8)
	var appliedN sync.Map
	for i := range 8 {
		wg.Go(func() {
			ok, err := p.Redrive(ctx, dl)
			if ok {
				appliedN.Store(i, true)
			}
			results <- err
		})
	}
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Fatal(err)
		}
	}
	count := 0
	appliedN.Range(func(any, any) bool { count++; return true })
	if count != 1 {
		t.Fatalf("%d of 8 concurrent re-drives applied the event, want exactly 1", count)
	}

	r := receipts[50]
	wantRows(t, pool, `SELECT topic, partition, "offset" FROM event_log WHERE id = 'e50'`,
		fmt.Sprintf("events|%d|%d", r.Partition, r.Offset))
	wantRows(t, pool, `SELECT amount_cents FROM payments WHERE payment_id = 'pay-50'`, "-5")
	wantRows(t, pool, `SELECT count(*) FROM payments`, strconv.Itoa(n))
	totals = fmt.Sprintf("EUR|%d|%d", n, want)
	wantRows(t, pool, `SELECT currency, payments, amount_cents FROM payment_totals`, totals)
	wantRows(t, pool, `SELECT consumer_group, dlq_topic, dlq_partition, dlq_offset, topic, partition, "offset", event_id FROM spate_redrives`,
		fmt.Sprintf("spate-project|events.dlq|%d|%d|events|%d|%d|e50", dl.Partition, dl.Offset, r.Partition, r.Offset))
	if ok, err := p.Redriven(ctx, dl); !ok || err != nil {
		t.Fatalf("Redriven after the re-drive = %v, %v; want true", ok, err)
	}

	// Again, and a second dead letter of the same event (the group crashed
	// between writing it and moving its offset): nothing more.
	again := *dl
	again.Offset += 100
	for _, rec := range []*kgo.Record{dl, &again} {
		if ok, err := p.Redriven(ctx, rec); !ok || err != nil {
			t.Errorf("Redriven(%d) = %v, %v; want true", rec.Offset, ok, err)
		}
		if ok, err := p.Redrive(ctx, rec); ok || err != nil {
			t.Fatalf("Redrive(%d) once more = %v, %v; want false, nil", rec.Offset, ok, err)
		}
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log WHERE id = 'e50'`, "1")
	wantRows(t, pool, `SELECT currency, payments, amount_cents FROM payment_totals`, totals)
	wantRows(t, pool, `SELECT count(*) FROM spate_redrives`, "1")
}

// asDeadLetter returns r as the group named group would write it to the
// dead-letter topic of events, at DLQ offset 0.
func asDeadLetter(r *kgo.Record, group, class string) *kgo.Record {
	dl := *r
	dl.Topic, dl.Partition, dl.Offset = consumers.DLQTopic("events"), 0, 0
	dl.Headers = append(r.Headers[:len(r.Headers):len(r.Headers)],
		kgo.RecordHeader{Key: consumers.HeaderDLQGroup, Value: []byte(group)},
		kgo.RecordHeader{Key: consumers.HeaderDLQClass, Value: []byte(class)},
		kgo.RecordHeader{Key: consumers.HeaderDLQTopic, Value: []byte(r.Topic)},
		kgo.RecordHeader{Key: consumers.HeaderDLQPartition, Value: []byte(strconv.Itoa(int(r.Partition)))},
		kgo.RecordHeader{Key: consumers.HeaderDLQOffset, Value: []byte(strconv.FormatInt(r.Offset, 10))},
	)
	return &dl
}

// TestRedriveRefuses: a dead letter of another group, a record that is
// not a dead letter, an event that still does not decode and one the group
// has not moved past are refused, and nothing is written.
func TestRedriveRefuses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p, pool := newProjector(t)
	recs := records(t, 0, 3)

	fanout := asDeadLetter(recs[0], "spate-fanout", "stream-key")
	if ok, err := p.Redrive(ctx, fanout); ok || err == nil || errors.Is(err, consumers.ErrPoison) {
		t.Errorf("Redrive of a spate-fanout dead letter = %v, %v; want a refusal", ok, err)
	}
	if _, err := p.Redriven(ctx, fanout); err == nil {
		t.Errorf("Redriven of a spate-fanout dead letter: no error")
	}
	if ok, err := p.Redrive(ctx, recs[1]); ok || !errors.Is(err, consumers.ErrNotDeadLetter) {
		t.Errorf("Redrive of a plain record = %v, %v; want ErrNotDeadLetter", ok, err)
	}
	unknown := asDeadLetter(recs[2], projection.DefaultGroup, "unknown-type")
	for i, h := range unknown.Headers {
		if h.Key == cekafka.HeaderType {
			unknown.Headers[i].Value = []byte("shop.order.vanished.v1")
		}
	}
	ok, err := p.Redrive(ctx, unknown)
	var pe *consumers.PoisonError
	if ok || !errors.As(err, &pe) || pe.Class != "unknown-type" || pe.Record.Topic != "events" || pe.Record.Offset != 2 {
		t.Errorf("Redrive of an unknown type = %v, %v; want a PoisonError of class unknown-type for events@2", ok, err)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "0")
	if ok, err := p.Redriven(ctx, unknown); ok || err != nil {
		t.Errorf("Redriven = %v, %v; want false", ok, err)
	}

	// A dead letter the group has not moved past yet (it crashed after
	// writing it): the group will apply it, so a re-drive must not.
	early := asDeadLetter(recs[1], projection.DefaultGroup, "data-exception")
	for _, next := range []int64{0, 1} {
		if next > 0 {
			if err := p.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Next: next}); err != nil {
				t.Fatal(err)
			}
		}
		if ok, err := p.Redrive(ctx, early); ok || !errors.Is(err, projection.ErrNotPassed) {
			t.Errorf("Redrive of events@1 with the stored offset at %d = %v, %v; want ErrNotPassed", next, ok, err)
		}
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "0")
	wantRows(t, pool, `SELECT count(*) FROM spate_redrives`, "0")
	if err := p.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Next: 2}); err != nil {
		t.Fatal(err)
	}
	if ok, err := p.Redrive(ctx, early); !ok || err != nil {
		t.Errorf("Redrive of events@1 once the group moved past it = %v, %v; want applied", ok, err)
	}
	wantRows(t, pool, `SELECT "offset" FROM event_log`, "1")

	// A dead letter of a projection this projector lacks: applied to
	// event_log alone, it would be marked re-driven and never reach it.
	other := asDeadLetter(recs[2], projection.DefaultGroup, "integrity-constraint-violation")
	other.Headers = append(other.Headers, kgo.RecordHeader{Key: consumers.HeaderDLQSink, Value: []byte("payments")})
	if err := p.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Next: 3}); err != nil { // the group moved past it
		t.Fatal(err)
	}
	var missing *projection.MissingProjectionError
	if ok, err := p.Redrive(ctx, other); ok || !errors.As(err, &missing) || missing.Projection != "payments" {
		t.Errorf("Redrive of a dead letter of payments = %v, %v; want a MissingProjectionError", ok, err)
	}
	wantRows(t, pool, `SELECT "offset" FROM event_log`, "1")
	wantRows(t, pool, `SELECT count(*) FROM spate_redrives`, "1")
}

// TestRedriveOfAGoProjectionsPoison: a Go projection that rejects an event
// itself is named in the PoisonError, with its class.
func TestRedriveOfAGoProjectionsPoison(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, spatetest.Postgres(t))
	p := projection.New(pool, schemas.Builtin(), projection.Config{Projections: []projection.Projection{projection.EventLog(), rejecter{}}})
	if err := p.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Next: 1}); err != nil { // the group moved past it
		t.Fatal(err)
	}
	ok, err := p.Redrive(ctx, asDeadLetter(records(t, 0, 1)[0], projection.DefaultGroup, "picky"))
	var pe *consumers.PoisonError
	if ok || !errors.As(err, &pe) || pe.Sink != "rejecter" || pe.Class != "picky" {
		t.Fatalf("Redrive = %v, %v; want a PoisonError of rejecter, class picky", ok, err)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "0")
	wantRows(t, pool, `SELECT count(*) FROM spate_redrives`, "0")
}

// rejecter is a Go projection that rejects every event.
type rejecter struct{}

func (rejecter) Name() string { return "rejecter" }

func (rejecter) Apply(_ context.Context, _ pgx.Tx, evs []*projection.Event) error {
	return consumers.Poison(evs[0].Record, "picky", errors.New("no, thanks"))
}

// paymentDeadLettered is a projector of redriveConfig whose group applied
// paymentsN payments, dead-lettering the sixth (e5, offset 5) for its
// negative amount.
type paymentDeadLettered struct {
	p       *projection.Projector
	pool    *pgxpool.Pool
	brokers []string
	want    int64 // the sum of the amounts, the negative one included
	dl      *kgo.Record
}

const paymentsN = 20

func newPaymentDeadLettered(t *testing.T) paymentDeadLettered {
	t.Helper()
	x := paymentDeadLettered{brokers: spatetest.Kafka(t, 1, "events", consumers.DLQTopic("events"))}
	x.p, x.pool = newConfigured(t, []byte(redriveConfig))
	_, x.want, x.dl = deadLetterAPayment(t, x.p, x.pool, x.brokers, paymentsN, 5)
	return x
}

// fixedRedriveConfig is redriveConfig without the constraint that rejects
// a negative payment.
var fixedRedriveConfig = strings.Replace(redriveConfig, " CONSTRAINT amount_not_negative CHECK (amount_cents >= 0)", "", 1)

// rebuildPayments rebuilds payments and payment_totals of config, with the
// changes set makes to the rebuild's configuration.
func rebuildPayments(t *testing.T, pool *pgxpool.Pool, brokers []string, config string, set ...func(*projection.RebuildConfig)) (*projection.RebuildResult, error) {
	t.Helper()
	projs, err := projection.Load("spate.yaml", []byte(config), schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	chosen, err := projection.Select(projs, "payments", "payment_totals")
	if err != nil {
		t.Fatal(err)
	}
	cfg := projection.RebuildConfig{Projections: chosen, Topic: "events"}
	for _, f := range set {
		f(&cfg)
	}
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), cfg, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	return rb.Run(context.Background())
}

// TestRedriveAfterARebuild: the fix is a new definition of payments (no
// constraint on the amount), and a rebuild of payments and payment_totals
// applies the dead-lettered event to their new tables. Re-driving it then
// applies it to event_log alone: the rebuilt tables hold it already.
func TestRedriveAfterARebuild(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	x := newPaymentDeadLettered(t)

	if res, err := rebuildPayments(t, x.pool, x.brokers, fixedRedriveConfig); err != nil || res.Skipped != 0 {
		t.Fatalf("rebuild with the fix = %+v, %v; want every event applied", res, err)
	}
	totals := fmt.Sprintf("EUR|%d|%d", paymentsN, x.want)
	wantRows(t, x.pool, `SELECT currency, payments, amount_cents FROM payment_totals`, totals)

	projs, err := projection.Load("spate.yaml", []byte(fixedRedriveConfig), schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := projection.New(x.pool, schemas.Builtin(), projection.Config{Projections: projs}).Redrive(ctx, x.dl); !ok || err != nil {
		t.Fatalf("Redrive after the rebuild = %v, %v; want true, nil", ok, err)
	}
	wantRows(t, x.pool, `SELECT count(*) FROM event_log WHERE id = 'e5'`, "1")
	wantRows(t, x.pool, `SELECT count(*) FROM payments`, strconv.Itoa(paymentsN))
	wantRows(t, x.pool, `SELECT currency, payments, amount_cents FROM payment_totals`, totals)
}

// TestRedriveAfterARebuildThatSkippedTheEvent: a rebuild with the same
// definitions skips the event, as the live projector did; the fix comes
// after. Re-driving then applies it to every projection.
func TestRedriveAfterARebuildThatSkippedTheEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	x := newPaymentDeadLettered(t)
	if res, err := rebuildPayments(t, x.pool, x.brokers, redriveConfig); err != nil || res.Skipped != 1 {
		t.Fatalf("rebuild = %+v, %v; want one event skipped", res, err)
	}
	if _, err := x.pool.Exec(ctx, `ALTER TABLE payments DROP CONSTRAINT amount_not_negative`); err != nil {
		t.Fatal(err)
	}
	if ok, err := x.p.Redrive(ctx, x.dl); !ok || err != nil {
		t.Fatalf("Redrive after the fix = %v, %v; want true, nil", ok, err)
	}
	wantRows(t, x.pool, `SELECT count(*) FROM event_log WHERE id = 'e5'`, "1")
	wantRows(t, x.pool, `SELECT amount_cents FROM payments WHERE payment_id = 'pay-5'`, "-5")
	wantRows(t, x.pool, `SELECT currency, payments, amount_cents FROM payment_totals`, fmt.Sprintf("EUR|%d|%d", paymentsN, x.want))
}

// TestRebuildThatSkipsARedrivenEvent: the fix was made in the live table
// and the event re-driven; a rebuild with the definitions unchanged skips
// it, and would swap in tables that lack an event counted as re-driven. It
// refuses to, leaving the live tables as they were. A rebuild with
// definitions that accept the event swaps in.
func TestRebuildThatSkipsARedrivenEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	x := newPaymentDeadLettered(t)
	if _, err := x.pool.Exec(ctx, `ALTER TABLE payments DROP CONSTRAINT amount_not_negative`); err != nil {
		t.Fatal(err)
	}
	if ok, err := x.p.Redrive(ctx, x.dl); !ok || err != nil {
		t.Fatalf("Redrive after the fix = %v, %v; want true, nil", ok, err)
	}
	totals := fmt.Sprintf("EUR|%d|%d", paymentsN, x.want)
	wantRows(t, x.pool, `SELECT currency, payments, amount_cents FROM payment_totals`, totals)

	if _, err := rebuildPayments(t, x.pool, x.brokers, redriveConfig); !errors.Is(err, projection.ErrRedrivenSkipped) || !strings.Contains(err.Error(), "partition 0 offset 5") {
		t.Fatalf("rebuild that skips a re-driven event = %v, want ErrRedrivenSkipped naming it", err)
	}
	wantRows(t, x.pool, `SELECT amount_cents FROM payments WHERE payment_id = 'pay-5'`, "-5")
	wantRows(t, x.pool, `SELECT currency, payments, amount_cents FROM payment_totals`, totals)

	if res, err := rebuildPayments(t, x.pool, x.brokers, fixedRedriveConfig); err != nil || res.Skipped != 0 {
		t.Fatalf("rebuild with the fix = %+v, %v; want every event applied", res, err)
	}
	wantRows(t, x.pool, `SELECT amount_cents FROM payments WHERE payment_id = 'pay-5'`, "-5")
	wantRows(t, x.pool, `SELECT currency, payments, amount_cents FROM payment_totals`, totals)
}

// TestRebuildThatSkipsAnEventTheLiveProjectorApplied: the new definitions
// reject an event the live projector applied (it did not dead-letter it).
// Swapped in, the new tables would lack it: the rebuild refuses, unless
// told to skip what they reject.
func TestRebuildThatSkipsAnEventTheLiveProjectorApplied(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "events", consumers.DLQTopic("events"))
	p, pool := newConfigured(t, []byte(redriveConfig))
	deadLetterAPayment(t, p, pool, brokers, paymentsN, -1)
	// Amounts are 100 to 119: the stricter check rejects the last.
	stricter := strings.Replace(redriveConfig, "CHECK (amount_cents >= 0)", "CHECK (amount_cents < 119)", 1)
	_, err := rebuildPayments(t, pool, brokers, stricter)
	if !errors.Is(err, projection.ErrSkippedApplied) || !strings.Contains(err.Error(), "partition 0 offset 19") {
		t.Fatalf("rebuild that rejects an applied event = %v, want ErrSkippedApplied naming it", err)
	}
	wantRows(t, pool, `SELECT count(*) FROM payments`, strconv.Itoa(paymentsN))
	// It resumes the shadow tables the refused run left.
	if _, err := rebuildPayments(t, pool, brokers, stricter, func(c *projection.RebuildConfig) { c.SkipRejected = true }); err != nil {
		t.Fatalf("rebuild with SkipRejected: %v", err)
	}
	wantRows(t, pool, `SELECT count(*) FROM payments`, strconv.Itoa(paymentsN-1))
	// The live tables now lack the event: a rebuild that skips it again
	// loses nothing.
	if _, err := rebuildPayments(t, pool, brokers, stricter); err != nil {
		t.Fatalf("rebuild after a rebuild with SkipRejected: %v", err)
	}
}

// fkConfig keeps payments with a foreign key to their orders. An order and
// its payment have different subjects, so they may lie in different
// partitions.
const fkConfig = `
projections:
  - name: fk
    migrations:
      - CREATE TABLE fk_orders (order_id text PRIMARY KEY)
      - CREATE TABLE fk_payments (payment_id text PRIMARY KEY, order_id text NOT NULL REFERENCES fk_orders)
    on:
      shop.order.placed.v1: INSERT INTO fk_orders VALUES (:data.order_id) ON CONFLICT DO NOTHING
      shop.payment.captured.v1: INSERT INTO fk_payments VALUES (:data.payment_id, :data.order_id) ON CONFLICT DO NOTHING
`

// runLiveGroup runs the live group on p until its offsets sum to n.
func runLiveGroup(t *testing.T, p *projection.Projector, pool *pgxpool.Pool, brokers []string, n int64) {
	t.Helper()
	ctx := context.Background()
	g, err := consumers.New(p, consumers.Config{Group: projection.DefaultGroup, Topics: []string{"events"}, MaxBackoff: 100 * time.Millisecond},
		kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	gctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- g.Run(gctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	spatetest.Eventually(t, time.Minute, func() string {
		var got int64
		err := pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM spate_offsets WHERE consumer_group = $1`, projection.DefaultGroup).Scan(&got)
		if err != nil || got < n {
			return fmt.Sprintf("the group consumed %d of %d events (%v)", got, n, err)
		}
		return ""
	})
}

// fkEvents are 50 orders, then order o-x, for partition 0, and the
// payment of o-x for partition 1. A rebuild in batches of 5 applies the
// payment long before partition 0 reaches o-x: its foreign key fails.
func fkEvents(t *testing.T) (p0 []*kgo.Record, pay *kgo.Record) {
	for i := range 50 {
		id := fmt.Sprint("o-", i)
		p0 = append(p0, cekafka.Record("events", shopEvent(t, id, id, 0, &shopv1.OrderPlaced{OrderId: id, CustomerId: "c", AmountCents: 1, Currency: "EUR"})))
	}
	p0 = append(p0, cekafka.Record("events", shopEvent(t, "o-x", "o-x", time.Second, &shopv1.OrderPlaced{OrderId: "o-x", CustomerId: "c", AmountCents: 1, Currency: "EUR"})))
	pay = cekafka.Record("events", shopEvent(t, "pay-x", "pay-x", 2*time.Second, &shopv1.PaymentCaptured{PaymentId: "pay-x", OrderId: "o-x", AmountCents: 1, Currency: "EUR"}))
	pay.Partition = 1
	return p0, pay
}

// produceManually writes recs to the partitions they name.
func produceManually(t *testing.T, brokers []string, recs ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// rebuildFK rebuilds the projections projs of the events topic in batches
// of 5, with the changes set makes to its configuration.
func rebuildFK(t *testing.T, pool *pgxpool.Pool, brokers []string, projs []projection.Projection, set ...func(*projection.RebuildConfig)) (*projection.RebuildResult, error) {
	t.Helper()
	cfg := projection.RebuildConfig{Projections: projs, Topic: "events", BatchSize: 5}
	for _, f := range set {
		f(&cfg)
	}
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), cfg, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return rb.Run(ctx)
}

func retrySkipped(c *projection.RebuildConfig) { c.RetrySkipped = true }

// TestRebuildAcrossPartitionsWithAForeignKey: the live projector applied
// an order and then its payment. A rebuild with the same definitions
// applies the payment first, and its foreign key fails: the swap refuses,
// and with RetrySkipped tries the payment again once caught up, and swaps
// in tables that hold it.
func TestRebuildAcrossPartitionsWithAForeignKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 2, "events", consumers.DLQTopic("events"))
	p, pool := newConfigured(t, []byte(fkConfig))
	p0, pay := fkEvents(t)
	produceManually(t, brokers, append(p0, pay)...)
	// The live projector, in the order the events arrived.
	if err := p.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Records: p0, Next: int64(len(p0))}); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, consumers.Batch{Topic: "events", Partition: 1, Records: []*kgo.Record{pay}, Next: 1}); err != nil {
		t.Fatal(err)
	}
	projs, err := projection.Load("spate.yaml", []byte(fkConfig), schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rebuildFK(t, pool, brokers, projs); !errors.Is(err, projection.ErrSkippedApplied) || !strings.Contains(err.Error(), "partition 1 offset 0") {
		t.Fatalf("rebuild = %v; want ErrSkippedApplied naming the payment", err)
	}
	res, err := rebuildFK(t, pool, brokers, projs, retrySkipped)
	if err != nil {
		t.Fatalf("rebuild with RetrySkipped: %v", err)
	}
	// Retried shows that the payment did fail in its turn. (The run resumed
	// the refused one's shadow tables: it applied what that one's swap had
	// applied, and the payment.)
	if res.Skipped != 0 || res.Retried != 1 || res.Applied < 1 {
		t.Fatalf("rebuild with RetrySkipped = %+v; want the payment applied late, none skipped", res)
	}
	wantRows(t, pool, `SELECT payment_id, order_id FROM fk_payments`, "pay-x|o-x")
	wantRows(t, pool, `SELECT count(*) FROM fk_orders`, "51")
	wantRows(t, pool, `SELECT partition, skipped FROM spate_rebuilt ORDER BY 1`, "0|[]", "1|[]")
}

// TestRebuildRetryingAReDrivenEvent: live, the payment came before its
// order, was dead-lettered for its foreign key, and re-driven once the
// order was there. A rebuild skips it again: the swap refuses, as the live
// tables hold it, and with RetrySkipped applies it once caught up.
func TestRebuildRetryingAReDrivenEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 2, "events", consumers.DLQTopic("events"))
	p, pool := newConfigured(t, []byte(fkConfig))
	p0, pay := fkEvents(t)
	produceManually(t, brokers, pay)
	runLiveGroup(t, p, pool, brokers, 1)
	dl := readDLQ(t, brokers, 1)[0]
	produceManually(t, brokers, p0...)
	runLiveGroup(t, p, pool, brokers, int64(len(p0))+1)
	if ok, err := p.Redrive(ctx, dl); !ok || err != nil {
		t.Fatalf("Redrive = %v, %v", ok, err)
	}
	projs, err := projection.Load("spate.yaml", []byte(fkConfig), schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rebuildFK(t, pool, brokers, projs); !errors.Is(err, projection.ErrRedrivenSkipped) {
		t.Fatalf("rebuild = %v; want ErrRedrivenSkipped", err)
	}
	if res, err := rebuildFK(t, pool, brokers, projs, retrySkipped); err != nil || res.Retried != 1 || res.Skipped != 0 {
		t.Fatalf("rebuild with RetrySkipped = %+v, %v; want the re-driven payment applied late", res, err)
	}
	wantRows(t, pool, `SELECT payment_id FROM fk_payments`, "pay-x")
}

// strictOnPayX is a projection in Go that rejects the event pay-x as
// poison when strict is set.
type strictOnPayX struct{ strict bool }

func (strictOnPayX) Name() string { return "strict" }

func (strictOnPayX) Migrate(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS strict (id text PRIMARY KEY)`)
	return err
}

func (r strictOnPayX) Apply(ctx context.Context, tx pgx.Tx, evs []*projection.Event) error {
	for _, ev := range evs {
		if r.strict && ev.Id == "pay-x" {
			return consumers.Poison(ev.Record, "rejected", errors.New("the new version rejects it"))
		}
		if _, err := tx.Exec(ctx, `INSERT INTO strict VALUES ($1)`, ev.Id); err != nil {
			return err
		}
	}
	return nil
}

// TestRebuildRetryingAnEventAGoProjectionRejects: the new version of a
// projection in Go rejects, as poison, an event the old one applied. With
// RetrySkipped it rejects it again: the swap refuses (it tried that once
// in a loop), and with SkipRejected too swaps in without it.
func TestRebuildRetryingAnEventAGoProjectionRejects(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 2, "events", consumers.DLQTopic("events"))
	pool, err := pgxpool.New(context.Background(), spatetest.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	live := projection.New(pool, schemas.Builtin(), projection.Config{Projections: []projection.Projection{strictOnPayX{}}})
	if err := live.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	p0, pay := fkEvents(t)
	produceManually(t, brokers, append(p0, pay)...)
	runLiveGroup(t, live, pool, brokers, int64(len(p0))+1)
	projs := []projection.Projection{strictOnPayX{strict: true}}
	if _, err := rebuildFK(t, pool, brokers, projs, retrySkipped); !errors.Is(err, projection.ErrSkippedApplied) {
		t.Fatalf("rebuild with RetrySkipped = %v; want ErrSkippedApplied", err)
	}
	res, err := rebuildFK(t, pool, brokers, projs, retrySkipped, func(c *projection.RebuildConfig) { c.SkipRejected = true })
	if err != nil || res.Skipped != 1 || res.Retried != 0 {
		t.Fatalf("rebuild with RetrySkipped and SkipRejected = %+v, %v; want a swap without pay-x", res, err)
	}
	wantRows(t, pool, `SELECT count(*) FROM strict WHERE id = 'pay-x'`, "0")
}

// TestRebuildAfterTheDeadLetterTopicsRetention: the live projector noted
// its dead letter in spate_dead_letters, so a rebuild with the same
// definitions, which skips the event too, swaps in after the dead-letter
// topic's retention deleted it.
func TestRebuildAfterTheDeadLetterTopicsRetention(t *testing.T) {
	t.Parallel()
	x := newPaymentDeadLettered(t)
	deleteRecordsBelow(t, x.brokers, consumers.DLQTopic("events"), x.dl.Offset+1)
	res, err := rebuildPayments(t, x.pool, x.brokers, redriveConfig)
	if err != nil || res.Skipped != 1 {
		t.Fatalf("rebuild = %+v, %v; want a swap that skipped the dead-lettered event", res, err)
	}
	wantRows(t, x.pool, `SELECT count(*) FROM payments`, strconv.Itoa(paymentsN-1))
	// The note stays with the live tables: the swap does not take the
	// shadow schema's (empty) spate_dead_letters for a projection's table.
	wantRows(t, x.pool, `SELECT "offset" FROM spate_dead_letters`, "5")
}

// TestDeadLetterNotesOfEventsKafkaDeleted: once retention deleted e5, its
// note in spate_dead_letters goes with the next dead letter of the
// partition, since no rebuild can read e5 again; a rebuild of what Kafka
// keeps still finds the new one's note.
func TestDeadLetterNotesOfEventsKafkaDeleted(t *testing.T) {
	t.Parallel()
	x := newPaymentDeadLettered(t)
	deleteRecordsBelow(t, x.brokers, "events", 10)
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(x.brokers...)}, producers.Opts()...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	bad := shopEvent(t, "e-bad", "o-1", time.Hour, &shopv1.PaymentCaptured{PaymentId: "pay-bad", AmountCents: -1, Currency: "EUR"})
	if _, err := producers.Publish(context.Background(), cl, "events", []*spatev1.Event{bad}); err != nil {
		t.Fatal(err)
	}
	runLiveGroup(t, x.p, x.pool, x.brokers, paymentsN+1)
	readDLQ(t, x.brokers, 2)
	wantRows(t, x.pool, `SELECT "offset" FROM spate_dead_letters ORDER BY 1`, strconv.Itoa(paymentsN))
	res, err := rebuildPayments(t, x.pool, x.brokers, redriveConfig, func(c *projection.RebuildConfig) { c.PartialHistory = true })
	if err != nil || res.Skipped != 1 {
		t.Fatalf("rebuild of what Kafka keeps = %+v, %v; want a swap that skipped the new dead letter", res, err)
	}
}

// TestRebuildOfAnEventAnEarlierRebuildApplied: the live projector
// dead-lettered e5, and a rebuild with the fix applied it, so the live
// tables hold it. A rebuild whose definitions reject e5 again must refuse,
// whether the dead letter is still in the topic or its retention deleted it.
func TestRebuildOfAnEventAnEarlierRebuildApplied(t *testing.T) {
	t.Parallel()
	for _, deleted := range []bool{false, true} {
		t.Run(fmt.Sprint("dead letter deleted ", deleted), func(t *testing.T) {
			t.Parallel()
			x := newPaymentDeadLettered(t)
			if res, err := rebuildPayments(t, x.pool, x.brokers, fixedRedriveConfig); err != nil || res.Skipped != 0 {
				t.Fatalf("rebuild with the fix = %+v, %v", res, err)
			}
			if deleted {
				deleteRecordsBelow(t, x.brokers, consumers.DLQTopic("events"), x.dl.Offset+1)
			}
			if _, err := rebuildPayments(t, x.pool, x.brokers, redriveConfig); !errors.Is(err, projection.ErrSkippedApplied) {
				t.Fatalf("rebuild that rejects e5, which the live tables hold = %v; want ErrSkippedApplied", err)
			}
			wantRows(t, x.pool, `SELECT count(*) FROM payments`, strconv.Itoa(paymentsN))
		})
	}
}

// TestRebuildWithDeadLettersOfAnEarlierRelease: dead letters written
// before spate_dead_letters noted them (its comment says since when) count
// as the group's from the dead-letter topic alone; a later one not noted
// there is of an event the group applied after all (it stopped between
// writing the dead letter and moving past the event).
func TestRebuildWithDeadLettersOfAnEarlierRelease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("before the table", func(t *testing.T) {
		t.Parallel()
		x := newPaymentDeadLettered(t)
		later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano)
		if _, err := x.pool.Exec(ctx, `DELETE FROM spate_dead_letters;
			COMMENT ON TABLE spate_dead_letters IS '`+projection.DeadLettersSince+later+`'`); err != nil {
			t.Fatal(err)
		}
		if res, err := rebuildPayments(t, x.pool, x.brokers, redriveConfig); err != nil || res.Skipped != 1 {
			t.Fatalf("rebuild = %+v, %v; want a swap that skips the event dead-lettered before the table", res, err)
		}
	})
	t.Run("applied after its dead letter", func(t *testing.T) {
		t.Parallel()
		brokers := spatetest.Kafka(t, 1, "events", consumers.DLQTopic("events"))
		p, pool := newConfigured(t, []byte(redriveConfig))
		deadLetterAPayment(t, p, pool, brokers, paymentsN, -1)
		// The dead letter of e19, as a group that stopped before moving
		// past it leaves it; restarted, it applied e19.
		e19 := readRecord(t, brokers, "events", 0, 19)
		produceManually(t, brokers, asDeadLetter(e19, projection.DefaultGroup, "integrity-constraint-violation"))
		stricter := strings.Replace(redriveConfig, "CHECK (amount_cents >= 0)", "CHECK (amount_cents < 119)", 1)
		if _, err := rebuildPayments(t, pool, brokers, stricter); !errors.Is(err, projection.ErrSkippedApplied) {
			t.Fatalf("rebuild that rejects e19, which the live tables hold = %v; want ErrSkippedApplied", err)
		}
	})
}

// readRecord reads the record of topic at partition and offset.
func readRecord(t *testing.T, brokers []string, topic string, partition int32, offset int64) *kgo.Record {
	t.Helper()
	var rec *kgo.Record
	err := consumers.ReadRange(context.Background(), []kgo.Opt{kgo.SeedBrokers(brokers...)}, topic,
		map[int32]int64{partition: offset}, map[int32]int64{partition: offset + 1}, func(r *kgo.Record) error {
			rec = r
			return nil
		})
	if err != nil || rec == nil {
		t.Fatalf("read %s/%d@%d: %v, %v", topic, partition, offset, rec, err)
	}
	return rec
}

// TestDeadLettersOfASchemaBesidePublic: a projector whose schema comes
// before public in the search path, where another has its tables, notes
// its dead letters in its own schema, where its rebuilds read them.
func TestDeadLettersOfASchemaBesidePublic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := spatetest.Postgres(t)
	projs, err := projection.Load("spate.yaml", []byte(redriveConfig), schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	public, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(public.Close)
	if err := projection.New(public, schemas.Builtin(), projection.Config{Projections: projs}).Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := public.Exec(ctx, `CREATE SCHEMA app`); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = "app, public"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	p := projection.New(pool, schemas.Builtin(), projection.Config{Projections: projs})
	if err := p.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	brokers := spatetest.Kafka(t, 1, "events", consumers.DLQTopic("events"))
	deadLetterAPayment(t, p, pool, brokers, paymentsN, 5)
	wantRows(t, pool, `SELECT (SELECT count(*) FROM app.spate_dead_letters), (SELECT count(*) FROM public.spate_dead_letters)`, "1|0")
	if res, err := rebuildPayments(t, pool, brokers, redriveConfig); err != nil || res.Skipped != 1 {
		t.Fatalf("rebuild = %+v, %v; want a swap that skips the dead-lettered event", res, err)
	}
}

// TestRebuildWhenTheDeadLetterIsGone: the dead-letter topic's retention
// deleted the dead letter of an event the rebuild skips. The rebuild cannot
// tell it from an event the live projector applied, and says why it might
// be either.
func TestRebuildWhenTheDeadLetterIsGone(t *testing.T) {
	t.Parallel()
	x := newPaymentDeadLettered(t)
	deleteRecordsBelow(t, x.brokers, consumers.DLQTopic("events"), x.dl.Offset+1)
	// As an earlier release left it: not noted in spate_dead_letters.
	if _, err := x.pool.Exec(context.Background(), `DELETE FROM spate_dead_letters`); err != nil {
		t.Fatal(err)
	}
	_, err := rebuildPayments(t, x.pool, x.brokers, redriveConfig)
	if !errors.Is(err, projection.ErrSkippedApplied) || !strings.Contains(err.Error(), "the retention of events.dlq deleted") {
		t.Fatalf("rebuild whose dead letter is gone = %v, want ErrSkippedApplied saying the dead letters may be deleted", err)
	}
}

// TestRedriveOfAnEventTheGroupAppliedAfterAll: the group wrote a dead
// letter and stopped before it moved its offset past the event (so it
// noted none in spate_dead_letters); restarted after the fix, it applied
// the event itself. Re-driving that dead letter is refused, where a dead
// letter the group moved past is re-driven.
func TestRedriveOfAnEventTheGroupAppliedAfterAll(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const config = `
projections:
  - name: payment_totals
    migrations:
      - CREATE TABLE payment_totals (currency text PRIMARY KEY, payments bigint NOT NULL, amount_cents bigint NOT NULL CHECK (amount_cents < 1000))
    on:
      shop.payment.captured.v1: |
        INSERT INTO payment_totals VALUES (:data.currency, 1, :data.amount_cents)
        ON CONFLICT (currency) DO UPDATE SET payments = payment_totals.payments + 1, amount_cents = payment_totals.amount_cents + excluded.amount_cents
`
	for _, noted := range []bool{false, true} {
		t.Run(fmt.Sprint("noted ", noted), func(t *testing.T) {
			p, pool := newConfigured(t, []byte(config))
			b := asBatch(
				shopEvent(t, "e0", "o-0", 0, &shopv1.PaymentCaptured{PaymentId: "pay-0", OrderId: "o-0", AmountCents: 100, Currency: "EUR"}),
				shopEvent(t, "e1", "o-1", time.Second, &shopv1.PaymentCaptured{PaymentId: "pay-1", OrderId: "o-1", AmountCents: 5000, Currency: "EUR"}),
			)
			if err := p.Apply(ctx, consumers.Batch{Topic: "events", Records: b.Records[:1], Next: 1}); err != nil {
				t.Fatal(err)
			}
			var pe *consumers.PoisonError
			for try := 0; try < 3 && pe == nil; try++ {
				if err := p.Apply(ctx, consumers.Batch{Topic: "events", Records: b.Records[1:], Next: 2}); !errors.As(err, &pe) && try == 2 {
					t.Fatalf("no poison for e1: %v", err)
				}
			}
			dl := asDeadLetter(pe.Record, projection.DefaultGroup, pe.Class)
			dl.Headers = append(dl.Headers, kgo.RecordHeader{Key: consumers.HeaderDLQSink, Value: []byte(pe.Sink)},
				kgo.RecordHeader{Key: consumers.HeaderDLQTime, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))})
			if noted { // the group moved past it
				if err := p.Apply(ctx, consumers.Batch{Topic: "events", Next: 2, DeadLettered: pe}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := pool.Exec(ctx, `ALTER TABLE payment_totals DROP CONSTRAINT payment_totals_amount_cents_check`); err != nil {
				t.Fatal(err)
			}
			projs, err := projection.Load("spate.yaml", []byte(config), schemas.Builtin())
			if err != nil {
				t.Fatal(err)
			}
			inKafka := func(context.Context, string, int32) (int64, error) { return 0, nil }
			restarted := projection.New(pool, schemas.Builtin(), projection.Config{Projections: projs, LogStart: inKafka})
			if !noted { // the restarted group applies it itself
				if err := restarted.Apply(ctx, consumers.Batch{Topic: "events", Records: b.Records[1:], Next: 2}); err != nil {
					t.Fatal(err)
				}
			}
			applied, err := restarted.Redrive(ctx, dl)
			switch {
			case noted && (err != nil || !applied):
				t.Fatalf("Redrive = %v, %v; want it applied", applied, err)
			case !noted && !errors.Is(err, projection.ErrAppliedByGroup):
				t.Fatalf("Redrive = %v, %v; want ErrAppliedByGroup", applied, err)
			}
			wantRows(t, pool, `SELECT payments, amount_cents FROM payment_totals`, "2|5100")
		})
	}
}

// A re-drive checks, in its transaction, that the tables are still built
// from its definitions: one whose projection a rebuild changed since it
// started (its spate.yaml is out of date) applies nothing.
func TestRedriveRefusesAChangedDefinition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p, pool := newProjector(t)
	if err := p.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Next: 1}); err != nil { // the group moved past it
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE spate_projections SET checksum = 'rebuilt-since' WHERE projection = 'event_log'`); err != nil {
		t.Fatal(err)
	}
	ok, err := p.Redrive(ctx, asDeadLetter(records(t, 0, 1)[0], projection.DefaultGroup, "data-exception"))
	if ok || !errors.Is(err, projection.ErrDefinitionChanged) {
		t.Fatalf("Redrive = %v, %v; want ErrDefinitionChanged", ok, err)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "0")
	wantRows(t, pool, `SELECT count(*) FROM spate_redrives`, "0")
}
