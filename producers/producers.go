// Package producers publishes Spate events to Kafka with franz-go. Records are
// written by an idempotent producer with acks from all in-sync replicas, in
// the CloudEvents binary mode of package cekafka, and Publish returns only
// once Kafka acknowledged every record it was given.
package producers

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/cekafka"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// DefaultTopic is the topic events go to unless configured otherwise.
const DefaultTopic = "spate.events"

// ErrUnknownOutcome is returned when Publish gave up waiting (its context
// ended) after records were handed to the client: Kafka may or may not have
// stored them, so the caller should retry with the same event ids.
var ErrUnknownOutcome = errors.New("outcome unknown: events may have been written")

// Opts returns the client options every Spate producer uses, to be passed to
// kgo.NewClient with the caller's own (seed brokers, logger, ...). franz-go
// producers are idempotent by default; these make the durability settings
// explicit so that a caller cannot weaken them by accident.
//
// Linger is zero: a publisher waits for the acknowledgement, so lingering
// would add its whole length to every request, while records that arrive
// during a produce request in flight are batched anyway.
func Opts() []kgo.Opt {
	return []kgo.Opt{
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
	}
}

// Publish writes events to topic and returns their receipts, in order, once
// Kafka acknowledged all of them. It does not validate: callers publish
// events that passed the edge's checks (registered type, canonical payload,
// extension names that are not core attributes). On error, some of the events may have been
// written; if the context ended first the error wraps ErrUnknownOutcome.
func Publish(ctx context.Context, cl *kgo.Client, topic string, evs []*spatev1.Event) ([]*spatev1.Receipt, error) {
	recs := make([]*kgo.Record, len(evs))
	for i, ev := range evs {
		recs[i] = cekafka.Record(topic, ev)
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("publish %d events to %s: %w: %w", len(evs), topic, ErrUnknownOutcome, err)
		}
		return nil, fmt.Errorf("publish %d events to %s: %w", len(evs), topic, err)
	}
	rs := make([]*spatev1.Receipt, len(recs))
	for i, r := range recs {
		rs[i] = &spatev1.Receipt{Id: evs[i].Id, Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}
	}
	return rs, nil
}
