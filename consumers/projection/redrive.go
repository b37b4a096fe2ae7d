package projection

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/consumers"
)

// Re-driving: once the cause of a dead letter is fixed (a constraint
// relaxed, a schema registered), Redrive applies the dead-lettered event
// to every projection. The group skipped the event as a whole, so none of
// its projections holds it, unless a rebuild applied it since: the swap
// records in spate_rebuilt what the rebuilt tables hold, and Redrive
// leaves those projections out. Each re-drive inserts a marker row into
// spate_redrives in the transaction that applies the event, keyed by the
// dead letter and, uniquely, by the event's original position: a dead
// letter re-driven twice, twice at the same time, or dead-lettered twice
// (a crash between the dead-letter write and the offset) is applied once.

const redrivesDDL = `
CREATE TABLE IF NOT EXISTS spate_redrives (
	consumer_group text        NOT NULL,
	dlq_topic      text        NOT NULL,
	dlq_partition  int         NOT NULL,
	dlq_offset     bigint      NOT NULL,
	topic          text        NOT NULL,
	partition      int         NOT NULL,
	"offset"       bigint      NOT NULL,
	event_id       text        NOT NULL,
	redriven_at    timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer_group, dlq_topic, dlq_partition, dlq_offset),
	UNIQUE (consumer_group, topic, partition, "offset")
)`

// rebuiltDDL creates spate_rebuilt: what the last rebuild of each
// projection swapped in. Its tables hold the events of each partition from
// from_offset up to to_offset, except those it skipped. Redrive does not
// apply an event to a projection whose tables hold it.
const rebuiltDDL = `
CREATE TABLE IF NOT EXISTS spate_rebuilt (
	projection  text     NOT NULL,
	topic       text     NOT NULL,
	partition   int      NOT NULL,
	from_offset bigint   NOT NULL,
	to_offset   bigint   NOT NULL,
	skipped     bigint[] NOT NULL,
	PRIMARY KEY (projection, topic, partition)
)`

// ErrNotPassed is returned by Redrive for a dead letter whose event the
// group has not yet moved past: the group will apply it itself, or
// dead-letter it again (a crash came between writing the dead letter and
// storing the offset past it). Re-driving it would apply it twice.
var ErrNotPassed = errors.New("the group has not moved past the event yet")

// ErrAppliedByGroup is returned by Redrive for a dead letter of an event the
// group applied itself after all: it wrote the dead letter, then stopped
// before it moved past the event, and applied it when it started again.
// Re-driving it would apply it twice.
var ErrAppliedByGroup = errors.New("the group applied the event itself after it wrote the dead letter")

// MissingProjectionError is returned by Redrive for a dead letter of a
// projection that the projector does not have.
type MissingProjectionError struct {
	Projection string
}

func (e *MissingProjectionError) Error() string {
	return fmt.Sprintf("the dead letter is of projection %s, which this projector does not have: re-drive it with the projections the group runs", e.Projection)
}

// Redrive applies the event of dl, a record of a dead-letter topic written
// by this projector's consumer group, to every projection whose tables
// lack it (all but those a rebuild applied it to), exactly once.
// The event is applied at its original topic, partition and offset. One
// transaction records the re-drive in spate_redrives and applies the event;
// if the dead letter, or another dead letter of the same event, was
// re-driven before, it applies nothing and returns false. It returns
// ErrNotPassed, applying nothing, while the group's stored offset of the
// event's partition is not past the event.
//
// A dead letter of a projection the projector does not have returns a
// *MissingProjectionError and applies nothing.
//
// A record that still cannot be decoded, or that a projection still
// rejects with a data exception or a constraint violation, commits nothing
// and returns an error wrapping a consumers.PoisonError naming the
// projection (Sink) and the class. Other errors (a lost connection, a
// deadlock) are worth retrying.
func (p *Projector) Redrive(ctx context.Context, dl *kgo.Record) (applied bool, err error) {
	d, err := p.deadLetter(dl)
	if err != nil {
		return false, err
	}
	where := fmt.Sprintf("redrive %s/%d@%d", dl.Topic, dl.Partition, dl.Offset)
	if _, ok := named(p.projs)[d.Sink]; d.Sink != "" && !ok {
		// Applied to the others alone, the event would be marked re-driven
		// and never reach the projection that failed on it.
		return false, fmt.Errorf("%s: %w", where, &MissingProjectionError{Projection: d.Sink})
	}
	ev, err := p.decode(d.Original())
	if err != nil {
		return false, fmt.Errorf("%s: %w", where, err)
	}
	if err := p.migrateRedrives(ctx); err != nil {
		return false, fmt.Errorf("%s: %w", where, err)
	}
	var to []Projection // the projections the event was applied to
	err = pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		applied = false
		to = to[:0]
		tag, err := tx.Exec(ctx, `
			INSERT INTO spate_redrives (consumer_group, dlq_topic, dlq_partition, dlq_offset, topic, partition, "offset", event_id)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT DO NOTHING`,
			p.cfg.Group, dl.Topic, dl.Partition, dl.Offset, d.Topic, d.Partition, d.Offset, ev.Id)
		if err != nil {
			return fmt.Errorf("mark re-driven: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return nil // re-driven before
		}
		// The group's offset must be past the event, and stay there until
		// this commits (a projector storing it waits on the lock).
		var next int64
		err = tx.QueryRow(ctx, `SELECT next_offset FROM spate_offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3 FOR SHARE`,
			p.cfg.Group, d.Topic, d.Partition).Scan(&next)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			next = 0
		case err != nil:
			return fmt.Errorf("load offset: %w", err)
		}
		if next <= d.Offset {
			return fmt.Errorf("%w: its next offset in %s/%d is %d, the event is at %d", ErrNotPassed, d.Topic, d.Partition, next, d.Offset)
		}
		if err := p.checkNoted(ctx, tx, d); err != nil {
			return err
		}
		// The tables must still be those of this projector's definitions:
		// a rebuild may have swapped in others since it started. Read after
		// the offset's lock, as the rebuilds below.
		if len(p.defNames) > 0 {
			var changed string
			if err := tx.QueryRow(ctx, checkDefinitionsSQL, p.defNames, p.defSums).Scan(&changed); err != nil {
				return fmt.Errorf("check definitions: %w", err)
			}
			if changed != "" {
				return definitionChanged(changed, "re-drive")
			}
		}
		// A rebuild that applied the event swapped in tables that hold it.
		// Read after the offset's lock: a swap holds the offset rows, so
		// one that committed meanwhile is seen here.
		rows, err := tx.Query(ctx, `SELECT projection FROM spate_rebuilt
			WHERE projection = ANY ($1) AND topic = $2 AND partition = $3
			  AND from_offset <= $4 AND $4 < to_offset AND NOT $4 = ANY (skipped)`,
			Names(p.projs), d.Topic, d.Partition, d.Offset)
		if err != nil {
			return fmt.Errorf("load rebuilds: %w", err)
		}
		rebuilt, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("load rebuilds: %w", err)
		}
		for _, pr := range each(p.projs) {
			if slices.Contains(rebuilt, pr.Name()) {
				continue
			}
			if err := pr.Apply(ctx, tx, []*Event{ev}); err != nil {
				return redriveError(pr, ev, err)
			}
			to = append(to, pr)
		}
		applied = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("%s (event %s): %w", where, ev.Id, err)
	}
	for _, pr := range to {
		p.applied.WithLabelValues(pr.Name()).Inc()
	}
	return applied, nil
}

// Redriven reports whether dl, or another dead letter of the same event,
// was re-driven for this projector's group. It changes nothing, not even
// to create spate_redrives.
func (p *Projector) Redriven(ctx context.Context, dl *kgo.Record) (bool, error) {
	d, err := p.deadLetter(dl)
	if err != nil {
		return false, err
	}
	var done bool
	err = p.pool.QueryRow(ctx, `
		SELECT EXISTS (SELECT FROM spate_redrives WHERE consumer_group = $1 AND (
			(dlq_topic, dlq_partition, dlq_offset) = ($2, $3, $4) OR (topic, partition, "offset") = ($5, $6, $7)))`,
		p.cfg.Group, dl.Topic, dl.Partition, dl.Offset, d.Topic, d.Partition, d.Offset).Scan(&done)
	if err != nil {
		var pge *pgconn.PgError
		if errors.As(err, &pge) && pge.Code == "42P01" { // undefined_table: nothing was ever re-driven
			return false, nil
		}
		return false, fmt.Errorf("redriven %s/%d@%d: %w", dl.Topic, dl.Partition, dl.Offset, err)
	}
	return done, nil
}

// deadLetter parses dl and checks that this projector's group wrote it.
func (p *Projector) deadLetter(dl *kgo.Record) (*consumers.DeadLetter, error) {
	d, err := consumers.ParseDeadLetter(dl)
	if err != nil {
		return nil, fmt.Errorf("redrive: %w", err)
	}
	if d.Group != p.cfg.Group {
		return nil, fmt.Errorf("redrive %s/%d@%d: dead letter of group %s, not of this projector's group %s", dl.Topic, dl.Partition, dl.Offset, d.Group, p.cfg.Group)
	}
	return d, nil
}

// migrateRedrives creates spate_redrives if it does not exist, serialised
// with Migrate and other projectors.
func (p *Projector) migrateRedrives(ctx context.Context) error {
	var exists bool
	if err := p.pool.QueryRow(ctx, `SELECT to_regclass('spate_redrives') IS NOT NULL AND to_regclass('spate_rebuilt') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("create spate_redrives: %w", err)
	}
	if exists {
		return nil
	}
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('spate_migrate'))`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, redrivesDDL+";"+rebuiltDDL)
		return err
	})
	if err != nil {
		return fmt.Errorf("create spate_redrives: %w", err)
	}
	return nil
}

// redriveError names the projection that rejected a re-driven event and,
// when the rejection is deterministic, says so with a PoisonError of its
// class, as the projector would have on the way to the dead-letter topic.
func redriveError(pr Projection, ev *Event, err error) error {
	name := pr.Name()
	var ee *EventError
	if errors.As(err, &ee) && ee.Projection != "" {
		name = ee.Projection
	}
	err = fmt.Errorf("projection %s: %w", name, err)
	var pe *consumers.PoisonError
	if errors.As(err, &pe) {
		if pe.Sink != "" {
			return err
		}
		return &consumers.PoisonError{Record: ev.Record, Sink: name, Class: pe.Class, Err: err}
	}
	class, ok := failureClass(err)
	if !ok {
		return err
	}
	return &consumers.PoisonError{Record: ev.Record, Sink: name, Class: class, Err: err}
}

// checkNoted returns ErrAppliedByGroup for a dead letter of an event the
// group applied after all. The group notes in spate_dead_letters, in the
// transaction that moves past it, each event it dead-letters; a dead letter
// written since spate_dead_letters notes them, of an event with no note,
// is of one the group did not move past so, but applied. Notes go once
// Kafka's retention passes their events: a dead letter of an event Kafka
// no longer holds is taken as it is (without Config.LogStart, every one).
func (p *Projector) checkNoted(ctx context.Context, tx pgx.Tx, d *consumers.DeadLetter) error {
	if p.cfg.LogStart == nil {
		return nil
	}
	var comment *string
	var noted bool
	err := tx.QueryRow(ctx, `SELECT obj_description(to_regclass('spate_dead_letters'), 'pg_class'),
		EXISTS (SELECT FROM spate_dead_letters WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND "offset" = $4)`,
		p.cfg.Group, d.Topic, d.Partition, d.Offset).Scan(&comment, &noted)
	if err != nil {
		return fmt.Errorf("load dead-letter notes: %w", err)
	}
	if noted || comment == nil {
		return nil
	}
	t, ok := strings.CutPrefix(*comment, deadLettersSince)
	since, err := time.Parse(time.RFC3339Nano, t)
	if !ok || err != nil || d.Time.Before(since) {
		return nil
	}
	start, err := p.cfg.LogStart(ctx, d.Topic, d.Partition)
	if err != nil {
		return fmt.Errorf("log start of %s/%d: %w", d.Topic, d.Partition, err)
	}
	if d.Offset < start {
		return nil
	}
	return fmt.Errorf("%w: %s/%d@%d has no note in spate_dead_letters", ErrAppliedByGroup, d.Topic, d.Partition, d.Offset)
}
