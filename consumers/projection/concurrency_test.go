package projection_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/projection"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

// Two partitions each place an order for customer c-1, minutes apart (so
// counters does not serialise them); partition 0's transaction is held
// after applying until partition 1's waits for it, for the customer_totals
// row. Both orders must count.
func TestCustomerTotalsOfConcurrentPartitions(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t, spatetest.Postgres(t))
	a, err := newShopProjector(ctx, pool, "g", nil, shopv1.ExampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newShopProjector(ctx, pool, "g", nil, shopv1.ExampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	applied, release := make(chan struct{}), make(chan struct{})
	projection.SetHook(a, func(point string) {
		if point == "applied" {
			close(applied)
			<-release
		}
	})
	placed := func(partition int32, order string, cents int64, at time.Duration) consumers.Batch {
		r := cekafka.Record("events", shopEvent(t, "e-"+order, order, at, &shopv1.OrderPlaced{OrderId: order, CustomerId: "c-1", AmountCents: cents, Currency: "EUR"}))
		r.Partition = partition
		return consumers.Batch{Topic: "events", Partition: partition, Records: []*kgo.Record{r}, Next: 1}
	}
	aDone, bDone := make(chan error, 1), make(chan error, 1)
	go func() { aDone <- a.Apply(ctx, placed(0, "o-1", 100, 0)) }()
	<-applied
	go func() { bDone <- b.Apply(ctx, placed(1, "o-2", 20, 2*time.Minute)) }()
	spatetest.Eventually(t, 10*time.Second, func() string {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil || n == 0 {
			return "partition 1 not waiting for a lock"
		}
		return ""
	})
	close(release)
	if err := <-aDone; err != nil {
		t.Fatal(err)
	}
	if err := <-bDone; err != nil {
		t.Fatal(err)
	}
	var orders, cents int64
	if err := pool.QueryRow(ctx, `SELECT orders, amount_cents FROM customer_totals WHERE customer_id = 'c-1'`).Scan(&orders, &cents); err != nil {
		t.Fatal(err)
	}
	if orders != 2 || cents != 120 {
		t.Errorf("customer_totals of c-1: %d orders, %d cents; want 2, 120", orders, cents)
	}
}
