// Package projection applies events to Postgres read models exactly once.
//
// Each partition batch is applied in one transaction that also advances the
// partition's offset in the spate_offsets table. The transaction first locks
// that row and skips records below the stored offset, so a batch delivered
// twice (after a crash, a restart or a rebalance that moved the partition to
// another projector) changes nothing the second time, and two projectors
// racing for one partition are serialised by the row lock. On assignment the
// consumer group resumes from these offsets (see package consumers).
//
// The built-in projection is event_log: one row per event with its envelope
// and its payload as JSONB, keyed by its Kafka coordinates.
package projection

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/schemas"
)

// DefaultGroup is the consumer group of projectors unless configured otherwise.
const DefaultGroup = "spate-project"

// Config tunes a Projector. Its zero value works.
type Config struct {
	// Group is the consumer group whose offsets the projector stores; it
	// must match the group consuming into it. Zero: DefaultGroup.
	Group string
	// Logger receives migrations. Zero: none.
	Logger *slog.Logger
}

// Projector is a consumers.Handler that writes projections to Postgres.
type Projector struct {
	pool  *pgxpool.Pool
	reg   *schemas.Registry
	group string
	log   *slog.Logger
}

// New returns a projector writing through pool and decoding with reg.
func New(pool *pgxpool.Pool, reg *schemas.Registry, cfg Config) *Projector {
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Projector{pool: pool, reg: reg, group: cfg.Group, log: log}
}

const schemaDDL = `
CREATE TABLE IF NOT EXISTS spate_offsets (
	consumer_group text   NOT NULL,
	topic          text   NOT NULL,
	partition      int    NOT NULL,
	next_offset    bigint NOT NULL,
	updated_at     timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer_group, topic, partition)
);
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
CREATE INDEX IF NOT EXISTS event_log_id ON event_log (id);
`

// Migrate creates Spate's tables if they are missing. Projectors starting
// together take turns through an advisory lock.
func (p *Projector) Migrate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('spate_migrate'))`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, schemaDDL)
		return err
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
		p.group, topic, partitions)
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

var eventLogColumns = []string{"topic", "partition", "offset", "id", "type", "source", "subject", "time", "payload"}

// Apply implements consumers.Handler: one transaction writes the batch's new
// events and the partition's next offset.
func (p *Projector) Apply(ctx context.Context, b consumers.Batch) error {
	rows := make([][]any, 0, len(b.Records))
	for _, r := range b.Records {
		row, err := p.eventLogRow(r)
		if err != nil {
			return err
		}
		rows = append(rows, row)
	}

	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var stored int64
		// Lock the partition's offset row (creating it at 0 if new) and read it.
		err := tx.QueryRow(ctx, `
			INSERT INTO spate_offsets AS o (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, 0)
			ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = o.next_offset
			RETURNING next_offset`, p.group, b.Topic, b.Partition).Scan(&stored)
		if err != nil {
			return fmt.Errorf("lock offset: %w", err)
		}
		if b.Next <= stored {
			return nil // all applied before
		}
		// Records are in offset order: skip those applied before.
		skip, _ := slices.BinarySearchFunc(b.Records, stored, func(r *kgo.Record, o int64) int { return cmp.Compare(r.Offset, o) })
		fresh := rows[skip:]
		if len(fresh) > 0 {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"event_log"}, eventLogColumns, pgx.CopyFromRows(fresh)); err != nil {
				return fmt.Errorf("copy event_log: %w", err)
			}
		}
		_, err = tx.Exec(ctx, `UPDATE spate_offsets SET next_offset = $4, updated_at = now()
			WHERE consumer_group = $1 AND topic = $2 AND partition = $3`, p.group, b.Topic, b.Partition, b.Next)
		if err != nil {
			return fmt.Errorf("store offset: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("apply %s/%d@%d: %w", b.Topic, b.Partition, b.Next, err)
	}
	return nil
}

// eventLogRow decodes a record into an event_log row. A record that is not a
// Spate event, or whose payload does not decode, is poison.
func (p *Projector) eventLogRow(r *kgo.Record) ([]any, error) {
	ev, err := cekafka.Event(r)
	if err != nil {
		return nil, consumers.Poison(r, "envelope", err)
	}
	payload, err := p.reg.JSON(ev.Type, ev.Datacontenttype, ev.Data)
	switch {
	case errors.Is(err, schemas.ErrUnknownType):
		return nil, consumers.Poison(r, "unknown-type", err)
	case err != nil:
		return nil, consumers.Poison(r, "payload", err)
	}
	t := r.Timestamp
	if ev.Time != nil {
		t = ev.Time.AsTime()
	}
	return []any{r.Topic, r.Partition, r.Offset, ev.Id, ev.Type, ev.Source, ev.Subject, t, payload}, nil
}
