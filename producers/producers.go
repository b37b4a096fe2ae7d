// Package producers publishes Spate events to Kafka with franz-go. Records are
// written by an idempotent producer with acks from all in-sync replicas, in
// the CloudEvents binary mode of package cekafka, and Publish returns only
// once Kafka acknowledged every record it was given.
package producers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync/atomic"

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
// extension names that are not core attributes). See PublishTracked for
// what happens when ctx ends first.
func Publish(ctx context.Context, cl *kgo.Client, topic string, evs []*spatev1.Event, headers ...kgo.RecordHeader) ([]*spatev1.Receipt, error) {
	return PublishTracked(ctx, cl, topic, evs, nil, headers...)
}

// PublishTracked is Publish, for callers that account for the records they
// hand to the client. It returns as soon as ctx ends, with an error wrapping
// ErrUnknownOutcome: the records stay with the client, which may still
// write them (an idempotent producer cannot take back a record it sent).
// done, if not nil, is called once every record has its outcome, with the
// receipt of each event (nil where its record failed) and the error of each
// record (nil where it was written): before PublishTracked returns when all
// records were settled in time, later when ctx ended first. A record failed
// with kgo.ErrClientClosed may have been written all the same: the client
// closed before Kafka answered. On an error where some records were
// acknowledged and others failed, the error wraps ErrUnknownOutcome too.
// headers are added to every record, after the event's own.
func PublishTracked(ctx context.Context, cl *kgo.Client, topic string, evs []*spatev1.Event, done func(rs []*spatev1.Receipt, errs []error), headers ...kgo.RecordHeader) ([]*spatev1.Receipt, error) {
	if len(evs) == 0 {
		if done != nil {
			done(nil, nil)
		}
		return nil, nil
	}
	recs := make([]*kgo.Record, len(evs))
	errs := make([]error, len(evs))
	all := make(chan struct{}) // closed by the last promise
	var left atomic.Int64
	left.Store(int64(len(evs)))
	for i, ev := range evs {
		recs[i] = cekafka.Record(topic, ev)
		recs[i].Headers = append(recs[i].Headers, headers...)
		cl.Produce(ctx, recs[i], func(_ *kgo.Record, err error) {
			errs[i] = err
			if left.Add(-1) == 0 {
				close(all)
			}
		})
	}
	select {
	case <-all:
		if done != nil { // on success, done has run when this returns
			done(receipts(evs, recs, errs), errs)
		}
	case <-ctx.Done():
		if done != nil {
			// The client calls every promise, at the latest when it
			// closes, so this ends.
			go func() {
				<-all
				done(receipts(evs, recs, errs), errs)
			}()
		}
		return nil, fmt.Errorf("publish %d events to %s: %w: %w", len(evs), topic, ErrUnknownOutcome, ctx.Err())
	}
	failed := 0
	var first error
	for _, err := range errs {
		if err != nil {
			failed++
			first = cmp.Or(first, err)
		}
	}
	switch {
	case failed == len(evs):
		return nil, fmt.Errorf("publish %d events to %s: %w", len(evs), topic, first)
	case failed > 0:
		return nil, fmt.Errorf("publish %d events to %s: %d failed: %w: %w", len(evs), topic, failed, ErrUnknownOutcome, first)
	}
	return receipts(evs, recs, errs), nil
}

// receipts returns the receipt of each event whose record was written.
func receipts(evs []*spatev1.Event, recs []*kgo.Record, errs []error) []*spatev1.Receipt {
	rs := make([]*spatev1.Receipt, len(recs))
	all := make([]spatev1.Receipt, len(recs)) // one allocation for all
	for i, r := range recs {
		if errs[i] == nil {
			rs[i] = &all[i]
			rs[i].Id, rs[i].Topic, rs[i].Partition, rs[i].Offset = evs[i].Id, r.Topic, r.Partition, r.Offset
		}
	}
	return rs
}
