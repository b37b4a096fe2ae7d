package consumers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/cekafka"
)

// ErrNotDeadLetter is returned for a record that lacks the headers a Group
// adds to the records it writes to a dead-letter topic.
var ErrNotDeadLetter = errors.New("not a dead letter")

// DeadLetter is a record of a dead-letter topic as a Group wrote it: the
// original record (key, value, headers) plus the spate_dlq_* headers that
// say who gave up on it, why, and where it came from.
type DeadLetter struct {
	// Record is the record as read from the dead-letter topic; its Topic,
	// Partition and Offset are those of the dead-letter topic.
	Record *kgo.Record

	Group  string // spate_dlq_group: the consumer group that gave up
	Sink   string // spate_dlq_sink: the part of the sink that failed, e.g. the projection; empty: the record itself is bad
	Class  string // spate_dlq_class, e.g. "integrity-constraint-violation"
	Reason string // spate_dlq_reason: the error
	// Where the record was before it was dead-lettered.
	Topic     string
	Partition int32
	Offset    int64
	// Time is when it was dead-lettered (spate_dlq_time; the record's
	// timestamp if that header is absent).
	Time time.Time

	// The event's CloudEvents attributes, as far as its ce_* headers give
	// them (a record can be dead-lettered for not being an event).
	EventID   string
	EventType string
	Subject   string
}

// dlqHeaders are the headers a Group adds to a dead letter.
var dlqHeaders = []string{
	HeaderDLQGroup, HeaderDLQSink, HeaderDLQClass, HeaderDLQReason,
	HeaderDLQTopic, HeaderDLQPartition, HeaderDLQOffset, HeaderDLQTime, HeaderDLQTimestamp,
}

// ParseDeadLetter reads the dead-letter headers of r, a record of a
// dead-letter topic. The group, the original topic, partition and offset
// are required; the other headers may be absent. Where a header repeats
// (a record dead-lettered once more after being copied back), the last
// one, the newest, counts. Errors wrap ErrNotDeadLetter.
func ParseDeadLetter(r *kgo.Record) (*DeadLetter, error) {
	h := map[string]string{}
	for _, kv := range r.Headers {
		h[kv.Key] = string(kv.Value)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("record %s/%d@%d: %w: %s", r.Topic, r.Partition, r.Offset, ErrNotDeadLetter, fmt.Sprintf(format, args...))
	}
	for _, k := range []string{HeaderDLQGroup, HeaderDLQTopic, HeaderDLQPartition, HeaderDLQOffset} {
		if h[k] == "" {
			return nil, bad("no %s header", k)
		}
	}
	d := &DeadLetter{
		Record: r,
		Group:  h[HeaderDLQGroup], Sink: h[HeaderDLQSink], Class: h[HeaderDLQClass], Reason: h[HeaderDLQReason],
		Topic:   h[HeaderDLQTopic],
		EventID: h[cekafka.HeaderID], EventType: h[cekafka.HeaderType], Subject: h[cekafka.HeaderSubject],
		Time: r.Timestamp,
	}
	p, err := strconv.ParseInt(h[HeaderDLQPartition], 10, 32)
	if err != nil || p < 0 {
		return nil, bad("header %s %q is not a partition", HeaderDLQPartition, h[HeaderDLQPartition])
	}
	d.Partition = int32(p)
	if d.Offset, err = strconv.ParseInt(h[HeaderDLQOffset], 10, 64); err != nil || d.Offset < 0 {
		return nil, bad("header %s %q is not an offset", HeaderDLQOffset, h[HeaderDLQOffset])
	}
	if v, ok := h[HeaderDLQTime]; ok {
		if d.Time, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return nil, bad("header %s %q is not an RFC 3339 time", HeaderDLQTime, v)
		}
	}
	return d, nil
}

// Original returns the record as it was in its original topic: the same
// key, value, headers without the dead-letter ones, and timestamp, at the
// original topic, partition and offset. A dead letter written before
// spate_dlq_timestamp was added gives its own timestamp.
func (d *DeadLetter) Original() *kgo.Record {
	r := d.Record
	ts := r.Timestamp
	for _, kv := range slices.Backward(r.Headers) {
		if kv.Key == HeaderDLQTimestamp {
			if t, err := time.Parse(time.RFC3339Nano, string(kv.Value)); err == nil {
				ts = t
			}
			break
		}
	}
	// The group appended its headers after the record's own: drop the last
	// occurrence of each.
	drop := make([]bool, len(r.Headers))
	for _, k := range dlqHeaders {
		for i := len(r.Headers) - 1; i >= 0; i-- {
			if r.Headers[i].Key == k {
				drop[i] = true
				break
			}
		}
	}
	hs := make([]kgo.RecordHeader, 0, len(r.Headers))
	for i, kv := range r.Headers {
		if !drop[i] {
			hs = append(hs, kv)
		}
	}
	return &kgo.Record{
		Topic: d.Topic, Partition: d.Partition, Offset: d.Offset,
		Key: r.Key, Value: r.Value, Headers: hs, Timestamp: ts,
	}
}

// ReadRange reads the records of topic from the offsets from up to, not
// including, the offsets to, without a consumer group, and calls fn with
// each, in offset order within a partition. Partitions missing from from
// or to are not read. Transaction markers are handed to fn too, so that a
// range that ends with one ends: fn skips them (r.Attrs.IsControl()). opts
// carry seed brokers, TLS and the like.
func ReadRange(ctx context.Context, opts []kgo.Opt, topic string, from, to map[int32]int64, fn func(*kgo.Record) error) error {
	offs := map[int32]kgo.Offset{}
	left := map[int32]int64{} // partitions not read to their end yet
	for p, end := range to {
		if start, ok := from[p]; ok && start < end {
			offs[p] = kgo.NewOffset().At(start)
			left[p] = end
		}
	}
	if len(left) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(append(slices.Clip(opts),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offs}), kgo.KeepControlRecords(),
		// Records the range held that retention deleted meanwhile are
		// gone: resumeAfterLoss goes on from what is left.
		kgo.ConsumeResetOffset(kgo.NoResetOffset()))...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, fe := range fs.Errors() {
			if !errors.Is(fe.Err, kerr.OffsetOutOfRange) {
				return fmt.Errorf("read %s partition %d: %w", fe.Topic, fe.Partition, fe.Err)
			}
			if err := resumeAfterLoss(ctx, cl, topic, fe.Partition, left); err != nil {
				return err
			}
		}
		var ferr error
		fs.EachRecord(func(r *kgo.Record) {
			end, ok := left[r.Partition]
			if ferr != nil || !ok {
				return
			}
			if r.Offset < end {
				ferr = fn(r)
			}
			if r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
		if ferr != nil {
			return ferr
		}
	}
	return nil
}

// resumeAfterLoss goes on reading partition p of topic from its log start,
// after retention deleted the records ReadRange was to read next; if the
// log now starts past the range, the partition is done.
func resumeAfterLoss(ctx context.Context, cl *kgo.Client, topic string, p int32, left map[int32]int64) error {
	starts, err := kadm.NewClient(cl).ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return fmt.Errorf("read %s partition %d: its records went: %w", topic, p, err)
	}
	o, _ := starts.Lookup(topic, p)
	if o.Offset >= left[p] {
		delete(left, p)
		return nil
	}
	cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{topic: {p: {Epoch: -1, Offset: o.Offset}}})
	return nil
}
