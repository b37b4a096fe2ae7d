package projection

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// This file lets operators read and reset the offsets the projectors of a
// group stored, without running one (spate offsets).

// ErrNoOffsetsTable reports a database without the spate_offsets table:
// not a projector's database, or one no projector has run against yet.
var ErrNoOffsetsTable = errors.New("no table spate_offsets in this database (spate project creates it)")

// StoredOffsets returns the next offset the projectors of group stored for
// each partition of topic that has one.
func StoredOffsets(ctx context.Context, pool *pgxpool.Pool, group, topic string) (map[int32]int64, error) {
	rows, err := pool.Query(ctx,
		`SELECT partition, next_offset FROM spate_offsets WHERE consumer_group = $1 AND topic = $2`, group, topic)
	if err != nil {
		return nil, fmt.Errorf("load offsets of group %s, topic %s: %w", group, topic, noTable(err))
	}
	offs, err := collectOffsets(rows)
	if err != nil {
		return nil, fmt.Errorf("load offsets of group %s, topic %s: %w", group, topic, noTable(err))
	}
	return offs, nil
}

// SetOffsets stores offs as the next offsets of topic's partitions for
// group, in one transaction, and returns the offsets it replaced (a
// partition that had none is absent). It waits for a projector's batch in
// flight on one of the partitions to commit, and replaces what that batch
// stored. Projectors of the group that are running keep their position:
// they resume from the new offsets only on their next assignment.
func SetOffsets(ctx context.Context, pool *pgxpool.Pool, group, topic string, offs map[int32]int64) (map[int32]int64, error) {
	parts := slices.Sorted(maps.Keys(offs))
	next := make([]int64, len(parts))
	for i, p := range parts {
		if offs[p] < 0 {
			return nil, fmt.Errorf("set offsets of group %s, topic %s: partition %d: offset %d is negative", group, topic, p, offs[p])
		}
		next[i] = offs[p]
	}
	var replaced map[int32]int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT partition, next_offset FROM spate_offsets
			WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)
			ORDER BY partition FOR UPDATE`, group, topic, parts)
		if err != nil {
			return err
		}
		if replaced, err = collectOffsets(rows); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `
			INSERT INTO spate_offsets AS o (consumer_group, topic, partition, next_offset)
			SELECT $1, $2, p, n FROM unnest($3::int[], $4::bigint[]) AS u(p, n)
			ON CONFLICT (consumer_group, topic, partition)
			DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()`, group, topic, parts, next)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("set offsets of group %s, topic %s: %w", group, topic, noTable(err))
	}
	return replaced, nil
}

func collectOffsets(rows pgx.Rows) (map[int32]int64, error) {
	offs := map[int32]int64{}
	var part int32
	var next int64
	_, err := pgx.ForEachRow(rows, []any{&part, &next}, func() error {
		offs[part] = next
		return nil
	})
	return offs, err
}

// noTable returns ErrNoOffsetsTable for an error about a missing table,
// and err otherwise.
func noTable(err error) error {
	var pge *pgconn.PgError
	if errors.As(err, &pge) && pge.Code == "42P01" { // undefined_table
		return ErrNoOffsetsTable
	}
	return err
}
