package subscribe_test

import (
	"context"
	"fmt"
	"log"

	"github.com/redis/go-redis/v9"

	"github.com/spate-io/spate/consumers/subscribe"
	"github.com/spate-io/spate/throwaway"
)

func Example() {
	// A throwaway redis-server holding one event, as spate fanout writes it.
	srv, err := throwaway.StartRedis(context.Background(), throwaway.RedisConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Stop()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: "spate:shop.order.placed.v1", Values: []any{
		"id", "order-1001-placed", "type", "shop.order.placed.v1", "subject", "order-1001",
		"data", `{"order_id":"order-1001","amount_cents":"4200"}`,
	}})

	// The subscriber.
	ctx, stop := context.WithCancel(context.Background())
	sub, err := subscribe.New(rdb, subscribe.Config{
		Group:   "billing",
		Streams: []string{"spate:shop.order.placed.v1"},
	}, func(ctx context.Context, m subscribe.Message) error {
		fmt.Println(m.Values["subject"], m.Values["data"], m.Deliveries)
		stop()     // one is enough here; a service runs until it is told to stop
		return nil // acknowledged
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := sub.Run(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// order-1001 {"order_id":"order-1001","amount_cents":"4200"} 1
}
