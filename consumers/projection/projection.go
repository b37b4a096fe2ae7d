// Package projection applies events to Postgres read models exactly once.
//
// A Projector runs projections: the built-in event_log, latest and counters,
// projections declared in SQL in spate.yaml (see Load), and any Projection
// written in Go. Each partition batch is applied to every projection in one
// transaction that also advances the partition's offset in the
// spate_offsets table. The transaction first locks that row and skips records
// below the stored offset, so a batch delivered twice (after a crash, a
// restart or a rebalance that moved the partition to another projector)
// changes nothing the second time, and two projectors racing for one
// partition are serialised by the row lock. On assignment the consumer group
// resumes from these offsets (see package consumers).
//
// Errors: connection loss, serialization failures, deadlocks and Postgres
// restarting are retried by the group, forever, without skipping anything.
// An event that a projection cannot apply (a constraint violation, a bad
// cast) is retried a few times, then reported as poison, which sends it to
// the dead-letter topic with the projection's name and the error.
package projection

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
)

// DefaultGroup is the consumer group of projectors unless configured otherwise.
const DefaultGroup = "spate-project"

// Projection is a read model. The projector calls Apply with the events of
// one partition batch that the projection consumes, in offset order, inside
// the transaction that will also store the partition's offset; Apply must
// do all its writes through tx and must not commit it. To reject one event
// for good, return an error wrapping consumers.Poison(ev.Record, class, err).
type Projection interface {
	// Name identifies the projection in metrics, logs and dead letters.
	Name() string
	Apply(ctx context.Context, tx pgx.Tx, events []*Event) error
}

// Event is an event as projections see it.
type Event struct {
	*spatev1.Event // the envelope; Data is the canonical protobuf payload
	Topic          string
	Partition      int32
	Offset         int64
	// Payload is the decoded payload, of the type's registered message.
	Payload proto.Message
	// Record is the Kafka record the event came in.
	Record *kgo.Record

	json []byte
}

// JSON returns the payload as schemas.MarshalJSON writes it: protojson with
// the .proto field names and every field present.
func (ev *Event) JSON() ([]byte, error) {
	if ev.json == nil {
		b, err := schemas.MarshalJSON(ev.Payload)
		if err != nil {
			return nil, err
		}
		ev.json = b
	}
	return ev.json, nil
}

// Config tunes a Projector. Its zero value works.
type Config struct {
	// Group is the consumer group whose offsets the projector stores; it
	// must match the group consuming into it. Zero: DefaultGroup.
	Group string
	// Projections to apply, in order. Zero: event_log alone.
	Projections []Projection
	// PoisonAfter is how many times an event that fails deterministically
	// (SQLSTATE classes 22 and 23) is tried before it is dead-lettered.
	// Zero: 3.
	PoisonAfter int
	// Logger receives migrations and failures. Zero: none.
	Logger *slog.Logger
	// Metrics registers the projector's metrics. Zero: not registered.
	Metrics prometheus.Registerer
	// LogStart returns where Kafka's log of a partition starts. Redrive
	// uses it to tell a dead letter of an event the group applied after
	// all (it stopped between writing the dead letter and moving past the
	// event), which it then refuses with ErrAppliedByGroup. Zero: Redrive
	// cannot tell such a dead letter from others.
	LogStart func(ctx context.Context, topic string, partition int32) (int64, error)
}

// Projector is a consumers.Handler that writes projections to Postgres.
type Projector struct {
	pool  *pgxpool.Pool
	reg   *schemas.Registry
	cfg   Config
	log   *slog.Logger
	projs []Projection
	// defs holds the definition checksum of each projection that has one,
	// by name; defNames and defSums the same as two lists, in name order.
	defs              map[string]string
	defNames, defSums []string

	mu       sync.Mutex
	failures map[failureKey]int // deterministic failures per event, toward PoisonAfter

	applied  *prometheus.CounterVec
	duration *prometheus.HistogramVec

	// hook, if set (by tests), is called with "applied" once a batch's
	// projections were applied, before its offset is stored and the
	// transaction commits, and with "committed" once it committed.
	hook func(point string)
	// inTx, if set (by a rebuild), is called in each batch's transaction
	// that moves the offset, before it stores it.
	inTx func(ctx context.Context, tx pgx.Tx, b consumers.Batch) error
}

type failureKey struct {
	topic     string
	partition int32
	offset    int64
}

// New returns a projector writing through pool and decoding with reg.
func New(pool *pgxpool.Pool, reg *schemas.Registry, cfg Config) *Projector {
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	if cfg.PoisonAfter == 0 {
		cfg.PoisonAfter = 3
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	projs := cfg.Projections
	if len(projs) == 0 {
		projs = []Projection{EventLog()}
	}
	p := &Projector{pool: pool, reg: reg, cfg: cfg, log: log, projs: projs, failures: map[failureKey]int{}, defs: definitions(projs),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spate_projection_events_total", Help: "Events of committed batches handed to each projection (a projection ignores the types it does not take).",
		}, []string{"projection"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "spate_projection_apply_duration_seconds", Help: "Time each projection takes to apply a batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}, []string{"projection"}),
	}
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(p.applied, p.duration)
	}
	for _, name := range slices.Sorted(maps.Keys(p.defs)) {
		p.defNames, p.defSums = append(p.defNames, name), append(p.defSums, p.defs[name])
	}
	return p
}

const offsetsDDL = `
CREATE TABLE IF NOT EXISTS spate_offsets (
	consumer_group text   NOT NULL,
	topic          text   NOT NULL,
	partition      int    NOT NULL,
	next_offset    bigint NOT NULL,
	updated_at     timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer_group, topic, partition)
);
CREATE TABLE IF NOT EXISTS spate_migrations (
	projection text        NOT NULL,
	version    int         NOT NULL,
	checksum   text        NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (projection, version)
);
CREATE TABLE IF NOT EXISTS spate_projections (
	projection text        PRIMARY KEY,
	checksum   text        NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
);
DO $$ BEGIN
	-- Its comment says since when dead letters are noted (deadLettersSince).
	IF to_regclass(format('%I.spate_dead_letters', current_schema())) IS NULL THEN
		CREATE TABLE spate_dead_letters (
			consumer_group   text        NOT NULL,
			topic            text        NOT NULL,
			partition        int         NOT NULL,
			"offset"         bigint      NOT NULL,
			projection       text        NOT NULL,
			class            text        NOT NULL,
			dead_lettered_at timestamptz NOT NULL DEFAULT now(),
			PRIMARY KEY (consumer_group, topic, partition, "offset")
		);
		EXECUTE format('COMMENT ON TABLE spate_dead_letters IS %L',
			'` + deadLettersSince + `' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
	END IF;
END $$;`

// deadLettersSince starts the comment of spate_dead_letters, followed by
// the time (RFC 3339) it was created: dead letters written before then
// were not noted in it.
const deadLettersSince = "Events the projector dead-lettered, noted since "

// Migrator is a Projection with tables of its own to create or change.
// Migrate runs once per projector start, in a transaction, serialised with
// other projectors starting at the same time.
type Migrator interface {
	Migrate(ctx context.Context, tx pgx.Tx) error
}

// Migrate creates Spate's tables and runs every projection's migrations.
func (p *Projector) Migrate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('spate_migrate'))`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, offsetsDDL); err != nil {
			return err
		}
		for _, pr := range p.projs {
			if m, ok := pr.(Migrator); ok {
				if err := m.Migrate(ctx, tx); err != nil {
					return fmt.Errorf("projection %s: %w", pr.Name(), err)
				}
			}
		}
		return p.registerDefinitions(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// Ping checks that Postgres answers.
func (p *Projector) Ping(ctx context.Context) error { return p.pool.Ping(ctx) }

// Offsets implements consumers.Handler.
func (p *Projector) Offsets(ctx context.Context, topic string, partitions []int32) (map[int32]int64, error) {
	rows, err := p.pool.Query(ctx,
		`SELECT partition, next_offset FROM spate_offsets WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)`,
		p.cfg.Group, topic, partitions)
	if err != nil {
		return nil, fmt.Errorf("load offsets of %s: %w", topic, err)
	}
	offs := make(map[int32]int64, len(partitions))
	var part int32
	var next int64
	_, err = pgx.ForEachRow(rows, []any{&part, &next}, func() error {
		offs[part] = next
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load offsets of %s: %w", topic, err)
	}
	return offs, nil
}

// Apply implements consumers.Handler: one transaction applies the batch's
// new events to every projection and stores the partition's next offset.
func (p *Projector) Apply(ctx context.Context, b consumers.Batch) error {
	evs := make([]*Event, 0, len(b.Records))
	var bad []error // poison: records that do not decode, in offset order
	for _, r := range b.Records {
		ev, err := p.decode(r)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		evs = append(evs, ev)
	}

	// What each projection did, observed once the transaction committed.
	var took []time.Duration
	var fresh []*Event
	run := func(find bool) error {
		return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
			var err error
			fresh, took, err = p.applyIn(ctx, tx, b, evs, bad, find)
			return err
		})
	}
	err := run(false)
	var ee *EventError
	if err != nil && deterministic(err) && !errors.As(err, &ee) {
		// A projection failed on data but did not say which event: find it.
		err = run(true)
	}
	if err != nil {
		return fmt.Errorf("apply %s/%d@%d: %w", b.Topic, b.Partition, b.Next, err)
	}
	p.forgetFailures(b)
	if p.hook != nil {
		p.hook("committed")
	}
	for i, d := range took {
		// SQL projections of "on" statements apply together, as one set:
		// their time is the set's, their events each one's.
		p.duration.WithLabelValues(p.projs[i].Name()).Observe(d.Seconds())
		for _, pr := range each(p.projs[i : i+1]) {
			p.applied.WithLabelValues(pr.Name()).Add(float64(len(fresh)))
		}
	}
	return nil
}

// applyIn applies evs, the decoded records of b, in tx and stores b.Next
// as the partition's offset. bad holds the PoisonErrors of b's records that
// did not decode: the first at or past the stored offset is returned, those
// below it were applied before (by a projector that could decode them) and
// are skipped like the others. It returns the events that were new, and the
// time each projection took. With find, each projection applies through
// findFailing, which names the event a failure on data comes from.
func (p *Projector) applyIn(ctx context.Context, tx pgx.Tx, b consumers.Batch, evs []*Event, bad []error, find bool) (fresh []*Event, took []time.Duration, err error) {
	// Lock the partition's offset row (creating it at 0 if new) and read
	// it; then, in a statement of its own, so that it sees a rebuild that
	// committed while this one waited for the lock, check that the
	// projections in Postgres are still the ones this projector applies.
	var q pgx.Batch
	var stored int64
	q.Queue(`
		INSERT INTO spate_offsets AS o (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, 0)
		ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = o.next_offset
		RETURNING next_offset`, p.cfg.Group, b.Topic, b.Partition).QueryRow(func(row pgx.Row) error {
		if err := row.Scan(&stored); err != nil {
			return fmt.Errorf("lock offset: %w", err)
		}
		return nil
	})
	var changed string
	if len(p.defNames) > 0 {
		q.Queue(checkDefinitionsSQL, p.defNames, p.defSums).QueryRow(func(row pgx.Row) error {
			return row.Scan(&changed)
		})
	}
	if err := tx.SendBatch(ctx, &q).Close(); err != nil {
		return nil, nil, err
	}
	if changed != "" {
		return nil, nil, definitionChanged(changed, "restart it")
	}
	if b.Next <= stored {
		return nil, nil, nil // all applied before
	}
	for _, err := range bad {
		if pe, ok := errors.AsType[*consumers.PoisonError](err); !ok || pe.Record.Offset >= stored {
			return nil, nil, err
		}
	}
	// Records are in offset order: skip those applied before.
	skip, _ := slices.BinarySearchFunc(evs, stored, func(ev *Event, o int64) int { return cmp.Compare(ev.Offset, o) })
	fresh = evs[skip:]
	if len(fresh) > 0 {
		for _, pr := range p.projs {
			start := time.Now()
			apply := pr.Apply
			if find {
				apply = func(ctx context.Context, tx pgx.Tx, evs []*Event) error {
					return findFailing(checkEncoding(ctx), tx, pr.Apply, evs)
				}
			}
			if err := apply(ctx, tx, fresh); err != nil {
				return nil, nil, p.classify(pr, err)
			}
			took = append(took, time.Since(start))
		}
	}
	if p.hook != nil {
		p.hook("applied")
	}
	if p.inTx != nil {
		if err := p.inTx(ctx, tx, b); err != nil {
			return nil, nil, err
		}
	}
	// The event the offset moves past is in the dead-letter topic: note it
	// where a rebuild finds it, whatever that topic's retention deletes.
	// The notes of events Kafka no longer has go: no rebuild reads those
	// events again. So the notes of a partition grow with its dead letters
	// only as far back as Kafka's retention keeps its events.
	if d := b.DeadLettered; d != nil && d.Record.Offset >= stored {
		var q pgx.Batch
		q.Queue(`INSERT INTO spate_dead_letters (consumer_group, topic, partition, "offset", projection, class)
			VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`, p.cfg.Group, b.Topic, b.Partition, d.Record.Offset, d.Sink, d.Class)
		q.Queue(`DELETE FROM spate_dead_letters WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND "offset" < $4`,
			p.cfg.Group, b.Topic, b.Partition, b.LogStart)
		if err := tx.SendBatch(ctx, &q).Close(); err != nil {
			return nil, nil, fmt.Errorf("note dead letter: %w", err)
		}
	}
	_, err = tx.Exec(ctx, `UPDATE spate_offsets SET next_offset = $4, updated_at = now()
		WHERE consumer_group = $1 AND topic = $2 AND partition = $3`, p.cfg.Group, b.Topic, b.Partition, b.Next)
	if err != nil {
		return nil, nil, fmt.Errorf("store offset: %w", err)
	}
	return fresh, took, nil
}

// definitionChanged is ErrDefinitionChanged for the projections changed,
// which the projector (or the re-drive) cannot apply: what to do, says do.
func definitionChanged(changed, do string) error {
	return fmt.Errorf("%w: the definition of %s recorded in spate_projections (by a rebuild, a dlq redrive or a projector started with another spate.yaml) is not this projector's: %s with the spate.yaml the tables were built from", ErrDefinitionChanged, changed, do)
}

// findFailing applies evs with apply in a savepoint. On a failure on data
// (see deterministic) that names no event, it applies the halves of evs in
// savepoints of their own, down to the one event at fault, which it reports
// as an EventError. Only the failing path pays for this. A failure to
// encode a parameter (see encodeFailure) lost the connection, unless ctx
// had the applies check their parameters first (checkEncoding): it is
// returned as is, for the projector to find the event in a new
// transaction with applies that do.
func findFailing(ctx context.Context, tx pgx.Tx, apply func(context.Context, pgx.Tx, []*Event) error, evs []*Event) error {
	careful := ctx.Value(checkEncodingKey{}) != nil
	sp, err := tx.Begin(ctx) // a savepoint
	if err != nil {
		return err
	}
	err = apply(ctx, sp, evs)
	if err == nil {
		return sp.Commit(ctx)
	}
	if encodeFailure(err) && !careful {
		return err // pgx closed the connection, and with it tx
	}
	if rerr := sp.Rollback(ctx); rerr != nil {
		return rerr
	}
	var ee *EventError
	switch {
	case !deterministic(err), errors.As(err, &ee):
		return err
	case len(evs) == 1:
		return &EventError{Event: evs[0], Err: err}
	}
	mid := len(evs) / 2
	if err := findFailing(ctx, tx, apply, evs[:mid]); err != nil {
		return err
	}
	return findFailing(ctx, tx, apply, evs[mid:])
}

// EventError attributes a projection's failure to one of its events.
// Projection may name the projection, when several apply together.
type EventError struct {
	Event      *Event
	Projection string
	Err        error
}

func (e *EventError) Error() string {
	return fmt.Sprintf("event %s at %s/%d@%d: %v", e.Event.Id, e.Event.Topic, e.Event.Partition, e.Event.Offset, e.Err)
}

func (e *EventError) Unwrap() error { return e.Err }

// classify decides what a projection's error means: a deterministic
// failure of one event (see failureClass) becomes poison once it has
// failed PoisonAfter times; anything else is returned to be retried.
func (p *Projector) classify(pr Projection, err error) error {
	name := pr.Name()
	var ee *EventError
	if errors.As(err, &ee) && ee.Projection != "" {
		name = ee.Projection
	}
	err = fmt.Errorf("projection %s: %w", name, err)
	class, ok := failureClass(err)
	if errors.Is(err, consumers.ErrPoison) || ee == nil || !ok {
		return err
	}
	key := failureKey{ee.Event.Topic, ee.Event.Partition, ee.Event.Offset}
	p.mu.Lock()
	p.failures[key]++
	n := p.failures[key]
	if n >= p.cfg.PoisonAfter {
		delete(p.failures, key)
	}
	p.mu.Unlock()
	if n < p.cfg.PoisonAfter {
		return err
	}
	pe := &consumers.PoisonError{Record: ee.Event.Record, Sink: name, Class: class, Err: err}
	return pe
}

// forgetFailures drops the failure counts of events below b.Next, which
// are applied: an event that failed now and then (a foreign key another
// partition had not yet written, say) is not counted towards poison for
// ever, nor kept in memory.
func (p *Projector) forgetFailures(b consumers.Batch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.failures {
		if k.topic == b.Topic && k.partition == b.Partition && k.offset < b.Next {
			delete(p.failures, k)
		}
	}
}

// deterministic reports whether err is an error that the same event will
// meet again, unlike a lost connection or a deadlock (see failureClass).
func deterministic(err error) bool {
	_, ok := failureClass(err)
	return ok
}

// failureClass returns the dead-letter class of a deterministic failure: a
// Postgres data exception (SQLSTATE class 22) or integrity constraint
// violation (class 23), or a value the driver cannot encode for its
// parameter's type (an int64 beyond an integer column's range), which
// Postgres would have refused as a data exception. ok is false for any
// other error.
func failureClass(err error) (class string, ok bool) {
	var pge *pgconn.PgError
	switch {
	case errors.As(err, &pge) && strings.HasPrefix(pge.Code, "22"):
		return "data-exception", true
	case errors.As(err, &pge) && strings.HasPrefix(pge.Code, "23"):
		return "integrity-constraint-violation", true
	case encodeFailure(err):
		return "data-exception", true
	}
	return "", false
}

// encodeFailure reports whether err is a failure to encode a parameter for
// its type: pgx's, which fails a whole pipeline (the "build" step of its
// preprocessing) and closes the connection when the pipeline holds queries
// before the one that failed, or encodable's, which sent nothing.
func encodeFailure(err error) bool {
	var ue *unencodableError
	var pe pgx.ErrPreprocessingBatch
	var pge *pgconn.PgError
	return errors.As(err, &ue) ||
		errors.As(err, &pe) && !errors.As(err, &pge) && strings.HasPrefix(pe.Error(), "error preprocessing batch (build)")
}

// checkEncodingKey marks a context whose applies check their parameters
// before sending them: see checkEncoding.
type checkEncodingKey struct{}

// checkEncoding returns ctx marked so that the applies given it call
// encodable before they send a pipeline: slower, but a parameter that
// cannot be encoded is then found without losing the connection. The
// projector applies so only when it looks for the event at fault of a
// failure (findFailing), and a rebuild so retries skipped events one at a
// time.
func checkEncoding(ctx context.Context) context.Context {
	return context.WithValue(ctx, checkEncodingKey{}, true)
}

// encodable reports, when ctx asks for it (checkEncoding), the first query
// of b whose arguments pgx cannot encode for their parameters' types, with
// an unencodableError; -1 and nil when it can encode them all.
func encodable(ctx context.Context, tx pgx.Tx, b *pgx.Batch) (int, error) {
	if ctx.Value(checkEncodingKey{}) == nil {
		return -1, nil
	}
	var eqb pgx.ExtendedQueryBuilder
	described := map[string]*pgconn.StatementDescription{} // a round trip a statement, not a query
	for i, q := range b.QueuedQueries {
		sd := described[q.SQL]
		if sd == nil {
			// Described as the unnamed statement: nothing stays prepared
			// on the connection for later batches to use.
			var err error
			if sd, err = tx.Conn().PgConn().Prepare(ctx, "", q.SQL, nil); err != nil {
				return i, err
			}
			described[q.SQL] = sd
		}
		if err := eqb.Build(tx.Conn().TypeMap(), sd, q.Arguments); err != nil {
			return i, &unencodableError{err}
		}
	}
	return -1, nil
}

// unencodableError is encodable's failure.
type unencodableError struct{ err error }

func (e *unencodableError) Error() string { return e.err.Error() }
func (e *unencodableError) Unwrap() error { return e.err }

// decode turns a record into an Event. A record that is not a Spate event,
// or whose payload does not decode, is poison.
func (p *Projector) decode(r *kgo.Record) (*Event, error) {
	ce, err := cekafka.Event(r)
	if err != nil {
		return nil, consumers.Poison(r, "envelope", err)
	}
	payload, err := p.reg.Parse(ce.Type, ce.Datacontenttype, ce.Data)
	switch {
	case errors.Is(err, schemas.ErrUnknownType):
		return nil, consumers.Poison(r, "unknown-type", err)
	case err != nil:
		return nil, consumers.Poison(r, "payload", err)
	}
	if ce.Time == nil {
		ce.Time = timestamppb.New(r.Timestamp)
	}
	return &Event{Event: ce, Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Payload: payload, Record: r}, nil
}
