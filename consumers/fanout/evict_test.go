package fanout_test

import (
	"context"
	"errors"
	"testing"

	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
	"github.com/spate-io/spate/throwaway"
)

// Ping refuses a Redis that would evict any key under memory pressure: it
// could evict the offsets hash, and events would be added twice.
func TestPingRefusesARedisThatEvictsAnyKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := spatetest.RedisClientOf(t, spatetest.OwnRedis(t, throwaway.RedisConfig{}).URL()) // its own: the test changes its configuration
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		maxmemory, policy string
		evicts            bool
	}{
		{"0", "noeviction", false},
		{"0", "allkeys-lru", false}, // no limit: nothing is evicted
		{"512mb", "noeviction", false},
		{"512mb", "volatile-lru", false}, // the writer sets no time to live
		{"512mb", "allkeys-lru", true},
		{"512mb", "allkeys-random", true},
	} {
		if err := rdb.ConfigSet(ctx, "maxmemory", tc.maxmemory).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.ConfigSet(ctx, "maxmemory-policy", tc.policy).Err(); err != nil {
			t.Fatal(err)
		}
		if err := w.Ping(ctx); errors.Is(err, fanout.ErrEvicts) != tc.evicts || !tc.evicts && err != nil {
			t.Errorf("maxmemory %s, maxmemory-policy %s: Ping = %v, want ErrEvicts %v", tc.maxmemory, tc.policy, err, tc.evicts)
		}
	}
}
