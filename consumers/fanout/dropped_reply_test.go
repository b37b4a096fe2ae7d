package fanout_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

func TestLostReplyIsRetriedWithoutDuplicates(t *testing.T) {
	t.Parallel()
	opts, err := redis.ParseURL(spatetest.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	direct := redis.NewClient(opts)
	defer direct.Close()

	proxy := spatetest.NewReplyDropper(t, opts.Addr, spatetest.DropScriptReply)
	viaProxy := *opts
	viaProxy.Addr = proxy.Addr()
	rdb := redis.NewClient(&viaProxy) // go-redis retries on a lost connection by default
	defer rdb.Close()
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Prefix: spatetest.KeyPrefix(t)})
	if err != nil {
		t.Fatal(err)
	}

	if err := w.Apply(context.Background(), batch(records(t, 0, 10))); err != nil {
		t.Fatalf("Apply after a lost reply: %v (go-redis should have retried)", err)
	}
	if !proxy.Dropped() {
		t.Fatal("the proxy dropped no reply: the test proved nothing")
	}
	wantIDs(t, ids(t, direct, w.Stream("shop.order.placed.v1")), 0, 10, 2)
	wantIDs(t, ids(t, direct, w.Stream("shop.order.cancelled.v1")), 1, 10, 2)
}
