package kafkago_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/producers"
	"github.com/spate-io/spate/producers/kafkago"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

func TestMain(m *testing.M) { spatetest.Main(m) }

func event(t *testing.T, id string, cents int64, jsonData bool) *spatev1.Event {
	t.Helper()
	m := &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: cents, Currency: "EUR"}
	ev := &spatev1.Event{Id: id, Source: "/legacy", Type: "shop.order.placed.v1", Subject: "o-1",
		Time: timestamppb.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)), Extensions: map[string]string{"tenant": "acme"}}
	var err error
	if jsonData {
		ev.Datacontenttype = schemas.ContentTypeJSON
		ev.Data, err = json.Marshal(map[string]any{"orderId": "o-1", "customerId": "c-1", "amountCents": cents, "currency": "EUR"})
	} else {
		ev.Datacontenttype = schemas.ContentTypeProtobuf // as the edge writes it
		ev.Data, err = proto.Marshal(m)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestKafkaGoAndFranzGoWriteTheSameEvents(t *testing.T) {
	const topic = "events"
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 8, topic)
	reg := schemas.Builtin()

	// Three events of one subject: through kafka-go (JSON payload), the
	// edge's franz-go path, and kafka-go again.
	w := kafkago.NewWriter(topic, brokers...)
	defer w.Close()
	viaKafkaGo := func(ev *spatev1.Event) {
		m, err := kafkago.Message(reg, ev)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteMessages(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	viaKafkaGo(event(t, "a", 1, true))
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, producers.Opts()...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := producers.Publish(ctx, cl, topic, []*spatev1.Event{event(t, "b", 2, false)}); err != nil {
		t.Fatal(err)
	}
	viaKafkaGo(event(t, "c", 3, false))

	// All three in one partition, in order, alike but for id and amount.
	rd, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var recs []*kgo.Record
	spatetest.Eventually(t, 10*time.Second, func() string {
		fctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		recs = append(recs, rd.PollFetches(fctx).Records()...)
		if len(recs) < 3 {
			return "fewer than 3 records"
		}
		return ""
	})
	var evs []*spatev1.Event
	for i, r := range recs {
		if r.Partition != recs[0].Partition || string(r.Key) != "o-1" {
			t.Fatalf("record %d in partition %d with key %q: one subject must share a partition", i, r.Partition, r.Key)
		}
		ev, err := cekafka.Event(r)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	for i, want := range []*spatev1.Event{event(t, "a", 1, false), event(t, "b", 2, false), event(t, "c", 3, false)} {
		want.Datacontenttype = schemas.ContentTypeProtobuf
		canon, err := reg.Canonical(want.Type, "", want.Data)
		if err != nil {
			t.Fatal(err)
		}
		want.Data = canon
		if diff := cmp.Diff(want, evs[i], protocmp.Transform()); diff != "" {
			t.Errorf("event %d (-want +got):\n%s", i, diff)
		}
	}

	// And the pipeline applies them alike.
	pool, err := pgxpool.New(ctx, spatetest.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	p := projection.New(pool, reg, projection.Config{})
	if err := p.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, consumers.Batch{Topic: topic, Partition: recs[0].Partition, Records: recs, Next: recs[2].Offset + 1}); err != nil {
		t.Fatal(err)
	}
	var rows []string
	rs, err := pool.Query(ctx, `SELECT id || ':' || (payload->>'amount_cents') FROM event_log ORDER BY "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var s string
		rs.Scan(&s)
		rows = append(rows, s)
	}
	if diff := cmp.Diff([]string{"a:1", "b:2", "c:3"}, rows); diff != "" {
		t.Errorf("event_log (-want +got):\n%s", diff)
	}
}

func TestMessageRefusesWhatTheEdgeRefuses(t *testing.T) {
	reg := schemas.Builtin()
	for name, mod := range map[string]func(*spatev1.Event){
		"no id":                func(ev *spatev1.Event) { ev.Id = "" },
		"no source":            func(ev *spatev1.Event) { ev.Source = "" },
		"unknown type":         func(ev *spatev1.Event) { ev.Type = "shop.order.lost.v1" },
		"bad payload":          func(ev *spatev1.Event) { ev.Data = []byte{0xff} },
		"core name as ext":     func(ev *spatev1.Event) { ev.Extensions = map[string]string{"id": "x"} },
		"upper-case extension": func(ev *spatev1.Event) { ev.Extensions = map[string]string{"Tenant": "x"} },
		"no type":              func(ev *spatev1.Event) { ev.Type = "" },
		"invalid UTF-8 id":     func(ev *spatev1.Event) { ev.Id = "a\xffb" },
		"NUL in subject":       func(ev *spatev1.Event) { ev.Subject = "o\x00" },
		"control in extension": func(ev *spatev1.Event) { ev.Extensions = map[string]string{"tenant": "a\nb"} },
		"dot segment source":   func(ev *spatev1.Event) { ev.Source = "/shop/%2e%2e/billing" },
		"time past 9999":       func(ev *spatev1.Event) { ev.Time = timestamppb.New(time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)) },
		"negative nanos":       func(ev *spatev1.Event) { ev.Time = &timestamppb.Timestamp{Seconds: 1, Nanos: -1} },
		"over MaxEventBytes": func(ev *spatev1.Event) {
			ev.Extensions = map[string]string{}
			for i := range 64 {
				ev.Extensions[fmt.Sprintf("x%d", i)] = strings.Repeat("x", cekafka.MaxEventBytes/64)
			}
		},
	} {
		ev := event(t, "e", 1, false)
		mod(ev)
		if _, err := kafkago.Message(reg, ev); err == nil {
			t.Errorf("%s: Message accepted it", name)
		}
	}
}
