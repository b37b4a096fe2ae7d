package fanout

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// This file lets operators read and reset the offsets the writers of a
// group stored, without running one (spate offsets). Only cfg.Group and
// cfg.Prefix matter here, and their zero values mean what they mean to New.

// offsetsOf returns a writer that only reads and writes offsets: it has no
// registry, so it must never Apply.
func offsetsOf(rdb redis.UniversalClient, cfg Config) (*Writer, error) {
	return New(rdb, nil, Config{Group: cfg.Group, Prefix: cfg.Prefix})
}

// StoredOffsets returns the next offset the writers of cfg.Group stored for
// each of partitions of topic that has one, as Writer.Offsets does.
func StoredOffsets(ctx context.Context, rdb redis.UniversalClient, cfg Config, topic string, partitions []int32) (map[int32]int64, error) {
	w, err := offsetsOf(rdb, cfg)
	if err != nil {
		return nil, err
	}
	return w.Offsets(ctx, topic, partitions)
}

// SetOffsets stores offs as the next offsets of topic's partitions for
// cfg.Group, all in one MULTI/EXEC, and returns the offsets it replaced (a
// partition that had none, or held something else, is absent). Writers of
// the group that are running keep their position: they resume from the new
// offsets only on their next assignment.
func SetOffsets(ctx context.Context, rdb redis.UniversalClient, cfg Config, topic string, offs map[int32]int64) (map[int32]int64, error) {
	w, err := offsetsOf(rdb, cfg)
	if err != nil {
		return nil, err
	}
	key := w.offsetsKey()
	parts := slices.Sorted(maps.Keys(offs))
	if len(parts) == 0 {
		return map[int32]int64{}, nil
	}
	fields := make([]string, len(parts))
	pairs := make([]any, 0, 2*len(parts))
	for i, p := range parts {
		if offs[p] < 0 {
			return nil, fmt.Errorf("set offsets of %s in %s: partition %d: offset %d is negative", topic, key, p, offs[p])
		}
		fields[i] = offsetField(topic, p)
		pairs = append(pairs, fields[i], offs[p])
	}
	var old *redis.SliceCmd
	_, err = w.rdb.TxPipelined(ctx, func(tx redis.Pipeliner) error {
		old = tx.HMGet(ctx, key, fields...)
		tx.HSet(ctx, key, pairs...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("set offsets of %s in %s: %w", topic, key, err)
	}
	replaced := make(map[int32]int64, len(parts))
	for i, v := range old.Val() {
		s, ok := v.(string)
		if !ok {
			continue
		}
		if o, err := strconv.ParseInt(s, 10, 64); err == nil {
			replaced[parts[i]] = o
		}
	}
	return replaced, nil
}
