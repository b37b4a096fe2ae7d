package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

// dlqConfig declares event_log and two projections of payments: payments,
// with two constraints, and payment_totals, which counts, so that an event
// applied twice shows. The route sends payments to a stream per tenant.
// fix is "" or a migration appended to payments.
func dlqConfig(prefix, fix string) string {
	return `
projections:
  - name: event_log
    builtin: event_log
  - name: payments
    migrations:
      - CREATE TABLE payments (payment_id text PRIMARY KEY CONSTRAINT payment_id_given CHECK (payment_id <> ''), amount_cents bigint NOT NULL CONSTRAINT amount_not_negative CHECK (amount_cents >= 0))
` + fix + `
    on:
      shop.payment.captured.v1: INSERT INTO payments VALUES (:data.payment_id, :data.amount_cents)
  - name: payment_totals
    migrations:
      - CREATE TABLE payment_totals (currency text PRIMARY KEY, payments bigint NOT NULL, amount_cents bigint NOT NULL)
    on:
      shop.payment.captured.v1: |
        INSERT INTO payment_totals VALUES (:data.currency, 1, :data.amount_cents)
        ON CONFLICT (currency) DO UPDATE SET payments = payment_totals.payments + 1, amount_cents = payment_totals.amount_cents + excluded.amount_cents
routes:
  - types: ["shop.payment.*"]
    stream: "` + prefix + `payments:{ext.tenant}"
`
}

// dlqFixture is a pipeline that dead-lettered three of twelve payments:
// e3 (a negative amount: payments' amount_not_negative, which the fix
// drops) and e7 (no payment id: payment_id_given, which stays) by the
// projector, e9 (a tenant that cannot be part of a stream key) by the
// fan-out. The projector keeps running.
type dlqFixture struct {
	brokers  []string
	pgURL    string
	pool     *pgxpool.Pool
	broken   string // spate.yaml files
	fixed    string
	receipts map[string]*spatev1.Receipt // by event id
	total    int64                       // amount of the payments
}

func newDLQFixture(t *testing.T) *dlqFixture {
	t.Helper()
	ctx := context.Background()
	x := &dlqFixture{
		brokers:  spatetest.Kafka(t, 2, "spate.events", "spate.events.dlq"),
		pgURL:    spatetest.Postgres(t),
		receipts: map[string]*spatev1.Receipt{},
	}
	prefix, dir := spatetest.KeyPrefix(t), t.TempDir()
	x.broken, x.fixed = filepath.Join(dir, "broken.yaml"), filepath.Join(dir, "fixed.yaml")
	for file, config := range map[string]string{
		x.broken: dlqConfig(prefix, ""),
		x.fixed:  dlqConfig(prefix, "      - ALTER TABLE payments DROP CONSTRAINT amount_not_negative"),
	} {
		if err := os.WriteFile(file, []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if x.pool, err = pgxpool.New(ctx, x.pgURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.pool.Close)

	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	e := &env{log: log, kafkaLog: log, reg: schemas.Builtin(), metrics: newMetrics(), brokers: x.brokers, topic: "spate.events"}
	cfg, err := e.loadConfig(x.broken, nil)
	if err != nil {
		t.Fatal(err)
	}
	proj, pool, err := e.newProjector(ctx, x.pgURL, projection.DefaultGroup, cfg.projections)
	if err != nil {
		t.Fatal(err)
	}
	fan, rdb, err := e.newFanout(ctx, spatetest.Redis(t), fanout.Config{Prefix: prefix, Routes: cfg.routes})
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
	t.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Errorf("consumers: %v", err)
		}
		pool.Close()
		rdb.Close()
	})

	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(x.brokers...)}, producers.Opts()...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var evs []*spatev1.Event
	for i := range 12 {
		pay := &shopv1.PaymentCaptured{PaymentId: fmt.Sprint("pay-", i), OrderId: fmt.Sprint("o-", i), AmountCents: int64(100 + i), Currency: "EUR"}
		tenant := "acme"
		switch i {
		case 3:
			pay.AmountCents = -5
		case 7:
			pay.PaymentId = ""
		case 9:
			tenant = "bad tenant"
		}
		if i != 7 {
			x.total += pay.AmountCents
		}
		data, err := proto.Marshal(pay)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, &spatev1.Event{Id: fmt.Sprint("e", i), Source: "/test", Type: "shop.payment.captured.v1", Subject: pay.OrderId,
			Time: timestamppb.Now(), Datacontenttype: schemas.ContentTypeProtobuf, Data: data, Extensions: map[string]string{"tenant": tenant}})
	}
	rs, err := producers.Publish(ctx, cl, "spate.events", evs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		x.receipts[evs[i].Id] = r
	}

	adm := kadm.NewClient(cl)
	spatetest.Eventually(t, time.Minute, func() string {
		var consumed int64
		if err := x.pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM spate_offsets`).Scan(&consumed); err != nil {
			return err.Error()
		}
		_, ends, err := bounds(ctx, adm, "spate.events.dlq")
		if err != nil {
			return err.Error()
		}
		var dead int64
		for _, o := range ends {
			dead += o
		}
		if consumed < 12 || dead < 3 {
			return fmt.Sprintf("projector consumed %d of 12 events; %d of 3 dead letters written", consumed, dead)
		}
		return ""
	})
	return x
}

// runSpate runs the command line args and returns what it wrote to stdout
// and to stderr.
func runSpate(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	var out, errs lockedBuffer
	root := newRoot(&out, &errs)
	root.SetArgs(args)
	err = root.ExecuteContext(ctx)
	return out.String(), errs.String(), err
}

// dlq runs spate dlq args against the fixture's broker and returns stdout.
func (x *dlqFixture) dlq(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, errs, err := runSpate(context.Background(), append(append([]string{"dlq"}, args...), "--kafka-brokers", strings.Join(x.brokers, ","))...)
	if err != nil {
		t.Logf("spate dlq %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errs)
	}
	return out, err
}

// must runs spate dlq args, failing the test on an error.
func (x *dlqFixture) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := x.dlq(t, args...)
	if err != nil {
		t.Fatalf("spate dlq %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// ndjson parses the NDJSON lines of out.
func ndjson(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for line := range strings.Lines(out) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		objs = append(objs, m)
	}
	return objs
}

// field returns each object's key as a string, in order.
func field(objs []map[string]any, key string) []string {
	var out []string
	for _, o := range objs {
		out = append(out, fmt.Sprint(o[key]))
	}
	return out
}

// byEventID returns the object of each event id; results of redrive are
// checked by id.
func byEventID(objs []map[string]any) map[string]map[string]any {
	m := map[string]map[string]any{}
	for _, o := range objs {
		m[fmt.Sprint(o["event_id"])] = o
	}
	return m
}

// state is the projections' tables, spate_migrations and spate_redrives, as
// text, to compare.
func (x *dlqFixture) state(t *testing.T) map[string][]string {
	t.Helper()
	ctx := context.Background()
	st := map[string][]string{}
	for name, sql := range map[string]string{
		"payments":         `SELECT payment_id || '|' || amount_cents FROM payments ORDER BY 1`,
		"payment_totals":   `SELECT currency || '|' || payments || '|' || amount_cents FROM payment_totals ORDER BY 1`,
		"event_log":        `SELECT id || '|' || topic || '|' || partition || '|' || "offset" FROM event_log ORDER BY 1`,
		"spate_migrations": `SELECT projection || '|' || version || '|' || checksum FROM spate_migrations ORDER BY 1`,
		"spate_redrives": `SELECT CASE WHEN to_regclass('spate_redrives') IS NULL THEN 'no table'
			ELSE (xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM spate_redrives', false, true, '')))[1]::text || ' rows' END`,
	} {
		rows, err := x.pool.Query(ctx, sql)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			st[name] = append(st[name], s)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// where returns the topic/partition@offset of event id, as list prints it.
func (x *dlqFixture) where(id string) string {
	r := x.receipts[id]
	return fmt.Sprintf("%s/%d@%d", r.Topic, r.Partition, r.Offset)
}

func TestDLQListAndShow(t *testing.T) {
	t.Parallel()
	x := newDLQFixture(t)

	out, errs, err := runSpate(context.Background(), "dlq", "list", "--kafka-brokers", strings.Join(x.brokers, ","))
	if err != nil {
		t.Fatal(err)
	}
	// Not a terminal: NDJSON, and progress as log lines.
	if !strings.Contains(errs, "msg=done") || !strings.Contains(errs, `task="reading spate.events.dlq"`) || !strings.Contains(errs, "done=3 total=3") {
		t.Errorf("stderr lacks the progress line of reading 3 records:\n%s", errs)
	}
	objs := ndjson(t, out)
	if got := field(objs, "event_id"); !slices.Equal(slices.Sorted(slices.Values(got)), []string{"e3", "e7"}) {
		t.Fatalf("list: events %v, want e3 and e7 (the projector's dead letters)", got)
	}
	e3 := byEventID(objs)["e3"]
	r3 := x.receipts["e3"]
	for k, want := range map[string]any{
		"dlq_topic": "spate.events.dlq", "group": "spate-project", "sink": "payments", "class": "integrity-constraint-violation",
		"event_type": "shop.payment.captured.v1", "subject": "o-3", "topic": "spate.events", "partition": float64(r3.Partition), "offset": float64(r3.Offset),
	} {
		if e3[k] != want {
			t.Errorf("list: e3 %s = %v, want %v", k, e3[k], want)
		}
	}
	if reason := fmt.Sprint(e3["reason"]); !strings.Contains(reason, "amount_not_negative") {
		t.Errorf("list: e3 reason %q does not name the constraint", reason)
	}
	if _, ok := e3["redriven"]; ok {
		t.Errorf("list without --postgres-url says whether it was re-driven: %v", e3)
	}
	at3 := fmt.Sprintf("%v:%v", e3["dlq_partition"], e3["dlq_offset"])

	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--all-groups"}, []string{"e3", "e7", "e9"}},
		{[]string{"--group", "spate-fanout"}, []string{"e9"}},
		{[]string{"--id", "e7"}, []string{"e7"}},
		{[]string{"--id", "e9"}, nil},
		{[]string{"--projection", "payments"}, []string{"e3", "e7"}},
		{[]string{"--projection", "payment_totals"}, nil},
		{[]string{"--error-class", "integrity-constraint-violation"}, []string{"e3", "e7"}},
		{[]string{"--error-class", "stream-key", "--all-groups"}, []string{"e9"}},
		{[]string{"--since", "-1h"}, []string{"e3", "e7"}},
		{[]string{"--since", "earliest", "--projection", "payments", "--id", "e3"}, []string{"e3"}},
		{[]string{"--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, nil},
	} {
		got := field(ndjson(t, x.must(t, append([]string{"list"}, tc.args...)...)), "event_id")
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("list %s: events %v, want %v", strings.Join(tc.args, " "), got, tc.want)
		}
	}

	// For people: aligned columns, the reason shortened to Postgres's message.
	text := x.must(t, "list", "--json=false")
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "DLQ ") || !strings.Contains(lines[0], "REASON") {
		t.Fatalf("list --json=false:\n%s\nwant a header and 2 lines", text)
	}
	line3 := lines[slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, " e3 ") })]
	for _, want := range []string{at3 + " ", " spate-project ", " payments ", " integrity-constraint-violation ", " shop.payment.captured.v1 ",
		" " + x.where("e3") + " ", `new row for relation "payments" violates check constraint "amount_not_negative"`} {
		if !strings.Contains(line3, want) {
			t.Errorf("list --json=false: line %q lacks %q", line3, want)
		}
	}

	// show, by place and by id: everything, the payload decoded.
	for _, args := range [][]string{{"show", at3}, {"show", "--id", "e3"}} {
		shown := ndjson(t, x.must(t, args...))
		if len(shown) != 1 {
			t.Fatalf("%v: %d objects, want 1", args, len(shown))
		}
		s := shown[0]
		data, _ := s["data"].(map[string]any)
		ev, _ := s["event"].(map[string]any)
		if data["payment_id"] != "pay-3" || data["amount_cents"] != "-5" || data["currency"] != "EUR" {
			t.Errorf("%v: data %v, want payment pay-3 of -5 EUR", args, s["data"])
		}
		if ev["id"] != "e3" || ev["source"] != "/test" || fmt.Sprint(ev["extensions"]) != "map[tenant:acme]" {
			t.Errorf("%v: event %v, want e3 from /test with its tenant", args, ev)
		}
		if s["sink"] != "payments" || s["class"] != "integrity-constraint-violation" || s["offset"] != float64(r3.Offset) || s["key"] != "o-3" ||
			fmt.Sprintf("%v:%v", s["dlq_partition"], s["dlq_offset"]) != at3 {
			t.Errorf("%v: %v", args, s)
		}
		if hs := fmt.Sprint(s["headers"]); !strings.Contains(hs, "spate_dlq_reason") || !strings.Contains(hs, "ce_id") {
			t.Errorf("%v: headers %s lack the dead-letter and CloudEvents ones", args, hs)
		}
	}
	// e9 is the fan-out's: not found in spate-project, found in all groups.
	if _, err := x.dlq(t, "show", "--id", "e9"); err == nil || !strings.Contains(err.Error(), "spate-fanout: 1") || !strings.Contains(err.Error(), "--all-groups") {
		t.Errorf("show --id e9: %v, want an error pointing at spate-fanout and --all-groups", err)
	}
	if s := ndjson(t, x.must(t, "show", "--id", "e9", "--all-groups")); len(s) != 1 || s[0]["class"] != "stream-key" || s[0]["group"] != "spate-fanout" {
		t.Errorf("show --id e9 --all-groups: %v, want the fan-out's stream-key dead letter", s)
	}

	// Ambiguous or wrong input is refused with a clear message.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"show"}, "PARTITION:OFFSET"},
		{[]string{"show", at3, "--id", "e3"}, "not both"},
		{[]string{"show", "3"}, "PARTITION:OFFSET"},
		{[]string{"show", "0:999"}, "no record at 0:999"},
		{[]string{"show", "7:0"}, "no record at 7:0"},
		{[]string{"show", "--projection", "payments"}, "spate dlq list"},
		{[]string{"list", "--all-groups", "--group", "x"}, "--all-groups and --group"},
		{[]string{"list", "--since", "latest"}, "select nothing"},
		{[]string{"list", "--since", "yesterday"}, "--since"},
		{[]string{"list", "extra"}, "unknown command"},
	} {
		if _, err := x.dlq(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spate dlq %s: %v, want an error mentioning %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// TestDLQRedriveAfterFix: after fixing the projection, a dry run changes
// nothing; redrive applies the event exactly once to every projection, at
// its original offset; running it again applies nothing; an event that a
// projection still rejects commits nothing and fails the command.
func TestDLQRedriveAfterFix(t *testing.T) {
	t.Parallel()
	x := newDLQFixture(t)
	pg := []string{"--postgres-url", x.pgURL}
	before := x.state(t)
	if diff := cmp.Diff([]string{fmt.Sprintf("EUR|10|%d", x.total+5)}, before["payment_totals"]); diff != "" {
		t.Fatalf("payment_totals before (-want +got):\n%s", diff)
	}

	// Dry run, with the fix: what would be re-driven; nothing changes, not
	// even the fix's migration or the table of re-drives.
	out := x.must(t, append([]string{"redrive", "--projection", "payments", "--config", x.fixed, "--dry-run"}, pg...)...)
	res := byEventID(ndjson(t, out))
	if len(res) != 2 || res["e3"]["result"] != "would-redrive" || res["e7"]["result"] != "would-redrive" {
		t.Fatalf("redrive --dry-run: %s\nwant e3 and e7 would-redrive", out)
	}
	if diff := cmp.Diff(before, x.state(t)); diff != "" {
		t.Fatalf("redrive --dry-run changed the database (-before +after):\n%s", diff)
	}

	// Re-drive e3: applied to every projection, once, where it was.
	res = byEventID(ndjson(t, x.must(t, append([]string{"redrive", "--id", "e3", "--config", x.fixed}, pg...)...)))
	if len(res) != 1 || res["e3"]["result"] != "redriven" {
		t.Fatalf("redrive --id e3: %v, want e3 redriven", res)
	}
	after := x.state(t)
	r3 := x.receipts["e3"]
	want := map[string][]string{
		"payments":       append(slices.Clone(before["payments"]), "pay-3|-5"),
		"payment_totals": {fmt.Sprintf("EUR|11|%d", x.total)},
		"event_log":      append(slices.Clone(before["event_log"]), fmt.Sprintf("e3|spate.events|%d|%d", r3.Partition, r3.Offset)),
		"spate_redrives": {"1 rows"},
	}
	for name, rows := range want {
		slices.Sort(rows)
		if diff := cmp.Diff(rows, after[name]); diff != "" {
			t.Errorf("%s after re-driving e3 (-want +got):\n%s", name, diff)
		}
	}
	if len(after["spate_migrations"]) != len(before["spate_migrations"])+1 {
		t.Errorf("spate_migrations: %v, want the fix's migration added to %v", after["spate_migrations"], before["spate_migrations"])
	}

	// Both payments dead letters: e3 was re-driven, e7 still violates
	// payment_id_given: reported with its projection and class, nothing of
	// it committed, and the command fails.
	out, err := x.dlq(t, append([]string{"redrive", "--projection", "payments", "--config", x.fixed}, pg...)...)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 dead letters could not be re-driven") {
		t.Fatalf("redrive --projection payments: %v, want 1 of 2 failed", err)
	}
	res = byEventID(ndjson(t, out))
	if res["e3"]["result"] != "already-redriven" || res["e7"]["result"] != "failed" || res["e7"]["failed_sink"] != "payments" ||
		res["e7"]["failed_class"] != "integrity-constraint-violation" || !strings.Contains(fmt.Sprint(res["e7"]["error"]), "payment_id_given") {
		t.Fatalf("redrive --projection payments:\n%s\nwant e3 already-redriven, e7 failed in payments (integrity-constraint-violation, payment_id_given)", out)
	}
	if diff := cmp.Diff(after, x.state(t)); diff != "" {
		t.Errorf("a second redrive changed the database (-before +after):\n%s", diff)
	}

	// By place too; and the dry run and list now say e3 was re-driven.
	listed := byEventID(ndjson(t, x.must(t, append([]string{"list"}, pg...)...)))
	if listed["e3"]["redriven"] != true || listed["e7"]["redriven"] != false {
		t.Errorf("list --postgres-url: e3 redriven=%v, e7 redriven=%v; want true, false", listed["e3"]["redriven"], listed["e7"]["redriven"])
	}
	at3 := fmt.Sprintf("%v:%v", listed["e3"]["dlq_partition"], listed["e3"]["dlq_offset"])
	res = byEventID(ndjson(t, x.must(t, append([]string{"redrive", at3, "--config", x.fixed}, pg...)...)))
	if res["e3"]["result"] != "already-redriven" {
		t.Errorf("redrive %s: %v, want already-redriven", at3, res)
	}
	res = byEventID(ndjson(t, x.must(t, append([]string{"redrive", "--all", "--dry-run", "--config", x.fixed}, pg...)...)))
	if len(res) != 2 || res["e3"]["result"] != "already-redriven" || res["e7"]["result"] != "would-redrive" {
		t.Errorf("redrive --all --dry-run: %v, want e3 already-redriven, e7 would-redrive", res)
	}
	if diff := cmp.Diff(after, x.state(t)); diff != "" {
		t.Errorf("the database changed (-before +after):\n%s", diff)
	}

	// For people: one line each and a summary.
	text, _ := x.dlq(t, append([]string{"redrive", "--projection", "payments", "--config", x.fixed, "--json=false"}, pg...)...)
	for _, want := range []string{"already-redriven  " + at3, "failed", "payments integrity-constraint-violation", "2 dead letters: 0 re-driven, 1 already re-driven, 1 failed"} {
		if !strings.Contains(text, want) {
			t.Errorf("redrive --json=false:\n%s\nlacks %q", text, want)
		}
	}
}

// TestDLQRedriveRefuses: ambiguous selections, the fan-out's dead letters
// and missing settings are refused with a message saying what to do, and
// change nothing.
func TestDLQRedriveRefuses(t *testing.T) {
	t.Parallel()
	x := newDLQFixture(t)
	before := x.state(t)
	e9 := ndjson(t, x.must(t, "list", "--group", "spate-fanout"))[0]
	at9 := fmt.Sprintf("%v:%v", e9["dlq_partition"], e9["dlq_offset"])
	e3 := ndjson(t, x.must(t, "list", "--id", "e3"))[0]
	at3 := fmt.Sprintf("%v:%v", e3["dlq_partition"], e3["dlq_offset"])
	pg := []string{"--postgres-url", x.pgURL, "--config", x.fixed}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{pg, "or --all for every dead letter"},
		{append([]string{"--all", "--id", "e3"}, pg...), "drop it, or drop the selection"},
		{append([]string{"0:0", "--id", "e3"}, pg...), "not both"},
		{append([]string{"0:0", "0:0"}, pg...), "given twice"},
		{append([]string{"zero"}, pg...), "PARTITION:OFFSET"},
		{append([]string{"--all", "--group", "spate-fanout"}, pg...), "spate replay stream"},
		{append([]string{"--id", "e9"}, pg...), "spate replay stream"},
		{append([]string{at9}, pg...), "spate replay stream"},
		{append([]string{at9, "--group", "other"}, pg...), "spate replay stream"},
		{[]string{"--id", "e3", "--config", x.fixed}, "--postgres-url is required"},
		{append([]string{"--id", "e3", "--since", "latest"}, pg...), "select nothing"},
		// e3 is a dead letter of payments: applied to event_log alone, it
		// would be marked re-driven and never reach payments.
		{[]string{"--id", "e3", "--postgres-url", x.pgURL}, "the dead letters of payments (" + at3 + "): event_log alone runs without --config, not them"},
	} {
		if _, err := x.dlq(t, append([]string{"redrive"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spate dlq redrive %s: %v, want an error mentioning %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	if diff := cmp.Diff(before, x.state(t)); diff != "" {
		t.Errorf("refused redrives changed the database (-before +after):\n%s", diff)
	}
	// Nothing matches: nothing to do, not an error.
	out := x.must(t, append([]string{"redrive", "--id", "no-such-event"}, pg...)...)
	if strings.TrimSpace(out) != "" {
		t.Errorf("redrive of nothing printed %q", out)
	}
}

func TestDLQHelpHasExamples(t *testing.T) {
	t.Parallel()
	for _, sub := range []string{"list", "show", "redrive"} {
		out, _, err := runSpate(context.Background(), "dlq", sub, "--help")
		if err != nil || !strings.Contains(out, "Examples:\n  spate dlq "+sub) || !strings.Contains(out, "[SPATE_KAFKA_BROKERS]") {
			t.Errorf("spate dlq %s --help: %v\n%s\nwant examples and the environment of each flag", sub, err, out)
		}
		// show takes one dead letter: it refuses the filters, so it does
		// not offer them.
		if offered := strings.Contains(out, "--error-class"); offered != (sub != "show") {
			t.Errorf("spate dlq %s --help offers --error-class: %v, want %v", sub, offered, sub != "show")
		}
	}
}

// TestDLQGroupFromEnvironment: SPATE_GROUP, set for spate project or
// fanout, is the default group, and does not contradict --all-groups as
// --group on the command line does; SPATE_ALL and SPATE_ID choose nothing.
func TestDLQGroupFromEnvironment(t *testing.T) {
	t.Setenv("SPATE_GROUP", "spate-fanout")
	brokers := strings.Join(spatetest.Kafka(t, 1, "spate.events", "spate.events.dlq"), ",")
	// Choices are the command line's: the environment cannot make them.
	t.Setenv("SPATE_ALL", "true")
	t.Setenv("SPATE_ID", "e1")
	_, _, err := runSpate(context.Background(), "dlq", "redrive", "--postgres-url", "postgres://unused", "--kafka-brokers", brokers)
	if err == nil || !strings.Contains(err.Error(), "redrive which dead letters?") {
		t.Errorf("redrive with SPATE_ALL and SPATE_ID set: %v, want a refusal to choose", err)
	}

	if _, _, err := runSpate(context.Background(), "dlq", "list", "--all-groups", "--kafka-brokers", brokers); err != nil {
		t.Errorf("list --all-groups with SPATE_GROUP set: %v", err)
	}
	if _, _, err := runSpate(context.Background(), "dlq", "list", "--all-groups", "--group", "g", "--kafka-brokers", brokers); err == nil {
		t.Errorf("list --all-groups --group g: no error")
	}
	_, _, err = runSpate(context.Background(), "dlq", "redrive", "--all", "--postgres-url", "postgres://unused", "--kafka-brokers", brokers)
	if err == nil || !strings.Contains(err.Error(), "spate replay stream") {
		t.Errorf("redrive with SPATE_GROUP=spate-fanout: %v, want the fan-out's advice", err)
	}
}

func TestParseDLQAt(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want dlqAt
		ok   bool
	}{
		{"0:42", dlqAt{0, 42}, true},
		{"12:0", dlqAt{12, 0}, true},
		{"42", dlqAt{}, false},
		{"a:1", dlqAt{}, false},
		{"1:b", dlqAt{}, false},
		{"-1:3", dlqAt{}, false},
		{"1:-3", dlqAt{}, false},
		{"1:2:3", dlqAt{}, false},
		{"4294967296:1", dlqAt{}, false},
		{"", dlqAt{}, false},
	} {
		got, err := parseDLQAt(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseDLQAt(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("parseDLQAt(%q).String() = %q", tc.in, got.String())
		}
	}
}

func TestShortReason(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 150)
	for _, tc := range []struct{ in, want string }{
		{"", "-"},
		{"cursed", "cursed"},
		{"projection p: event e at t/0@1: statement at line 3: ERROR: value too long (SQLSTATE 22001)", "value too long (SQLSTATE 22001)"},
		{"two\n  lines", "two lines"},
		{long, strings.Repeat("x", 99) + "…"},
	} {
		if got := shortReason(tc.in); got != tc.want {
			t.Errorf("shortReason(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRedriveStopPrintsWhatWasDone: a re-drive that stops part way (at a
// changed definition, say) still prints the results before the stop, whose
// re-drives are committed, and a summary saying it stopped.
func TestRedriveStopPrintsWhatWasDone(t *testing.T) {
	t.Parallel()
	var chosen []*consumers.DeadLetter
	for i := range 3 {
		chosen = append(chosen, &consumers.DeadLetter{Record: &kgo.Record{Topic: "spate.events.dlq", Offset: int64(i)},
			Group: projection.DefaultGroup, EventID: fmt.Sprint("e", i), EventType: "t", Topic: "spate.events", Offset: int64(10 + i)})
	}
	results := []string{"redriven", "already-redriven"}
	one := func(_ context.Context, d *consumers.DeadLetter, _ *dlqLine) (string, error) {
		if int(d.Record.Offset) < len(results) {
			return results[d.Record.Offset], nil
		}
		return "", projection.ErrDefinitionChanged
	}
	for _, jsonOut := range []bool{false, true} {
		var out strings.Builder
		prog := startProgress(io.Discard, slog.New(slog.DiscardHandler), "re-driving", int64(len(chosen)))
		counts, err := redriveEach(context.Background(), chosen, one, &out, jsonOut, prog)
		if !errors.Is(err, projection.ErrDefinitionChanged) {
			t.Errorf("json %t: redriveEach: %v, want ErrDefinitionChanged", jsonOut, err)
		}
		for _, want := range []string{"redriven", "already-redriven", `e0`, `e1`} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("json %t: redriveEach wrote\n%s\nlacking %q", jsonOut, out.String(), want)
			}
		}
		if strings.Contains(out.String(), "e2") {
			t.Errorf("json %t: redriveEach wrote\n%s\nwith e2, which it did not re-drive", jsonOut, out.String())
		}
		const want = "stopped after 2 of 3 dead letters: 1 re-driven, 1 already re-driven, 0 failed"
		if got := redriveSummary(counts, len(chosen), false, err != nil); got != want {
			t.Errorf("json %t: summary %q, want %q", jsonOut, got, want)
		}
	}
}
