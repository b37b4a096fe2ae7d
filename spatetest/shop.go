package spatetest

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
)

// ShopMix returns n events of the shop domain, the same on every call: in
// every 10, 6 orders placed, 2 cancellations (of orders placed 3 blocks of
// 10 earlier, or in the same block at the start) and 2 payments, for n/10
// customers, the first event at t0 and each one 10 ms after the one before
// it. The subject of every event is its order's id ("o-<customer>-<j>"), so
// an order's events share a partition. Payloads are protobuf.
func ShopMix(n int, t0 time.Time) []*spatev1.Event {
	customers := max(n/10, 1)
	order := func(j int) string { return fmt.Sprintf("o-%d-%d", j%customers, j) }
	evs := make([]*spatev1.Event, n)
	for i := range n {
		block, k := i/10, i%10
		var typ, subject string
		var m proto.Message
		switch {
		case k < 6:
			j := block*6 + k
			typ, subject = "shop.order.placed.v1", order(j)
			m = &shopv1.OrderPlaced{OrderId: subject, CustomerId: fmt.Sprint("c-", j%customers),
				AmountCents: int64(100 + i), Currency: "EUR", Items: []*shopv1.LineItem{{Sku: fmt.Sprint("sku-", i%7), Quantity: int32(1 + i%3), PriceCents: 100}}}
		case k < 8:
			j := (block-3)*6 + k - 6
			if block < 3 {
				j = block*6 + k - 6
			}
			typ, subject = "shop.order.cancelled.v1", order(j)
			m = &shopv1.OrderCancelled{OrderId: subject, Reason: "changed mind"}
		default:
			j := block*6 + k - 8
			typ, subject = "shop.payment.captured.v1", order(j)
			m = &shopv1.PaymentCaptured{PaymentId: fmt.Sprint("pay-", i), OrderId: subject, AmountCents: int64(100 + i), Currency: "EUR"}
		}
		data, err := proto.Marshal(m)
		if err != nil {
			panic(fmt.Sprintf("spatetest: marshal %T: %v", m, err)) // a generated message always marshals
		}
		evs[i] = &spatev1.Event{Id: fmt.Sprint("e-", i), Source: "/test", Type: typ, Subject: subject,
			Time: timestamppb.New(t0.Add(time.Duration(i) * 10 * time.Millisecond)), Datacontenttype: schemas.ContentTypeProtobuf, Data: data}
	}
	return evs
}
