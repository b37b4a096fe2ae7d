package fanout_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

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

// A user whose ACL denies INFO still gets an answer from Ping: Redis is up;
// its eviction policy is then not checked.
func TestPingWithoutINFO(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	admin := spatetest.RedisClient(t)
	user := "t" + strings.TrimSuffix(spatetest.KeyPrefix(t), ":")
	if err := admin.Do(ctx, "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-info").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Do(context.Background(), "ACL", "DELUSER", user) })
	opts := admin.Options()
	rdb := redis.NewClient(&redis.Options{Addr: opts.Addr, DB: opts.DB, Username: user, Password: "pw"})
	defer rdb.Close()
	if err := rdb.Info(ctx, "memory").Err(); err == nil || !strings.HasPrefix(err.Error(), "NOPERM") {
		t.Fatalf("INFO as %s: %v, want NOPERM", user, err)
	}
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Ping(ctx); err != nil {
		t.Fatalf("Ping as a user denied INFO: %v, want nil", err)
	}
}
