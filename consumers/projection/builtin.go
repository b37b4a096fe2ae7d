package projection

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// EventLog returns the built-in event_log projection: one row per event
// with its envelope and its payload as JSONB, keyed by its Kafka
// coordinates, written with COPY.
func EventLog() Projection { return eventLog{} }

type eventLog struct{}

func (eventLog) Name() string { return "event_log" }

func (eventLog) Migrate(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `
CREATE TABLE IF NOT EXISTS event_log (
	topic      text        NOT NULL,
	partition  int         NOT NULL,
	"offset"   bigint      NOT NULL,
	id         text        NOT NULL,
	type       text        NOT NULL,
	source     text        NOT NULL,
	subject    text        NOT NULL,
	time       timestamptz NOT NULL,
	payload    jsonb       NOT NULL,
	PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS event_log_id ON event_log (id);`)
	return err
}

var eventLogColumns = []string{"topic", "partition", "offset", "id", "type", "source", "subject", "time", "payload"}

func (eventLog) Apply(ctx context.Context, tx pgx.Tx, evs []*Event) error {
	rows := make([][]any, len(evs))
	for i, ev := range evs {
		payload, err := ev.JSON()
		if err != nil {
			return err
		}
		rows[i] = []any{ev.Topic, ev.Partition, ev.Offset, ev.Id, ev.Type, ev.Source, ev.Subject, ev.Time.AsTime(), payload}
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"event_log"}, eventLogColumns, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("copy event_log: %w", err)
	}
	return nil
}

// Latest returns the built-in latest projection: in table (zero:
// spate_latest), the newest payload of each (type, subject). It is version
// guarded: a row is replaced only by an event with a later time (or, at the
// same time, a later offset), so replays and reordered deliveries never
// move it back.
func Latest(table string) Projection {
	if table == "" {
		table = "spate_latest"
	}
	return latest{table: pgx.Identifier{table}.Sanitize()}
}

type latest struct{ table string }

func (latest) Name() string { return "latest" }

func (l latest) Migrate(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, fmt.Sprintf(`
CREATE TABLE IF NOT EXISTS %s (
	type      text        NOT NULL,
	subject   text        NOT NULL,
	id        text        NOT NULL,
	time      timestamptz NOT NULL,
	payload   jsonb       NOT NULL,
	topic     text        NOT NULL,
	partition int         NOT NULL,
	"offset"  bigint      NOT NULL,
	PRIMARY KEY (type, subject)
)`, l.table))
	return err
}

func (l latest) Apply(ctx context.Context, tx pgx.Tx, evs []*Event) error {
	// One row per (type, subject): the newest of the batch. A statement may
	// not touch a row twice, and the older ones would lose anyway.
	type key struct{ typ, subject string }
	newest := map[key]*Event{}
	var order []key
	for _, ev := range evs {
		k := key{ev.Type, ev.Subject}
		prev, ok := newest[k]
		if !ok {
			order = append(order, k)
		}
		if !ok || newer(ev, prev) {
			newest[k] = ev
		}
	}
	n := len(order)
	types, subjects, ids, payloads, topics := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	times, partitions, offsets := make([]time.Time, n), make([]int32, n), make([]int64, n)
	for i, k := range order {
		ev := newest[k]
		payload, err := ev.JSON()
		if err != nil {
			return err
		}
		types[i], subjects[i], ids[i], payloads[i], topics[i] = ev.Type, ev.Subject, ev.Id, string(payload), ev.Topic
		times[i], partitions[i], offsets[i] = ev.Time.AsTime(), ev.Partition, ev.Offset
	}
	_, err := tx.Exec(ctx, fmt.Sprintf(`
INSERT INTO %[1]s AS l (type, subject, id, time, payload, topic, partition, "offset")
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::jsonb[], $6::text[], $7::int[], $8::bigint[])
ON CONFLICT (type, subject) DO UPDATE SET
	id = excluded.id, time = excluded.time, payload = excluded.payload,
	topic = excluded.topic, partition = excluded.partition, "offset" = excluded."offset"
WHERE (l.time, l."offset") < (excluded.time, excluded."offset")`, l.table),
		types, subjects, ids, times, payloads, topics, partitions, offsets)
	return err
}

// newer reports whether a comes after b: a later time, or the same time and
// a later offset. Times count in microseconds, as Postgres keeps them and
// so compares them with what a table holds: in one batch or across two,
// the same events win.
func newer(a, b *Event) bool {
	at, bt := a.Time.AsTime().Truncate(time.Microsecond), b.Time.AsTime().Truncate(time.Microsecond)
	return at.After(bt) || at.Equal(bt) && a.Offset > b.Offset
}

// Counters returns the built-in counters projection: in table (zero:
// spate_counters), the number of events of each type in each minute of
// event time.
func Counters(table string) Projection {
	if table == "" {
		table = "spate_counters"
	}
	return counters{table: pgx.Identifier{table}.Sanitize()}
}

type counters struct{ table string }

func (counters) Name() string { return "counters" }

func (c counters) Migrate(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, fmt.Sprintf(`
CREATE TABLE IF NOT EXISTS %s (
	type   text        NOT NULL,
	minute timestamptz NOT NULL,
	events bigint      NOT NULL,
	PRIMARY KEY (type, minute)
)`, c.table))
	return err
}

func (c counters) Apply(ctx context.Context, tx pgx.Tx, evs []*Event) error {
	type key struct {
		typ    string
		minute time.Time
	}
	counts := map[key]int64{}
	for _, ev := range evs {
		counts[key{ev.Type, ev.Time.AsTime().Truncate(time.Minute)}]++
	}
	var types []string
	var minutes []time.Time
	var ns []int64
	// In key order: batches of other partitions upsert the same rows, and
	// locking them in one order keeps them from deadlocking.
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b key) int {
		return cmp.Or(strings.Compare(a.typ, b.typ), a.minute.Compare(b.minute))
	})
	for _, k := range keys {
		types, minutes, ns = append(types, k.typ), append(minutes, k.minute), append(ns, counts[k])
	}
	_, err := tx.Exec(ctx, fmt.Sprintf(`
INSERT INTO %[1]s AS c (type, minute, events)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[])
ON CONFLICT (type, minute) DO UPDATE SET events = c.events + excluded.events`, c.table), types, minutes, ns)
	return err
}
