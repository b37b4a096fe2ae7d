package consumers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/spatetest"
)

// TestDeadLetterRoundTrip runs a group that dead-letters one CloudEvent and
// checks that ParseDeadLetter reads what the group wrote, and that
// Original gives back the record as it was in its topic.
func TestDeadLetterRoundTrip(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 2, "t", consumers.DLQTopic("t"))
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for i := range 50 {
		recs = append(recs, cekafka.Record("t", &spatev1.Event{
			Id: fmt.Sprint("e", i), Source: "/test", Type: "test.thing.happened.v1", Subject: fmt.Sprint("s", i%5),
			Time: timestamppb.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)), Data: []byte{byte(i)},
			Extensions: map[string]string{"tenant": "acme"},
		}))
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	poison := recs[17] // its Partition and Offset were set by the produce

	sink := newMemSink()
	sink.fail = func(b consumers.Batch) error {
		for _, r := range b.Records {
			if string(r.Key) == string(poison.Key) && r.Offset == poison.Offset && b.Partition == poison.Partition && r.Offset >= sink.next[b.Partition] {
				pe := consumers.Poison(r, "test-class", errors.New("cursed"))
				pe.(*consumers.PoisonError).Sink = "cursed-projection"
				return pe
			}
		}
		return nil
	}
	before := time.Now()
	runGroup(t, brokers, "t", sink)
	spatetest.Eventually(t, 20*time.Second, func() string {
		if n := sink.count(); n < 49 {
			return fmt.Sprintf("applied %d of 49", n)
		}
		return ""
	})

	dl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(consumers.DLQTopic("t")),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	var dead []*kgo.Record
	spatetest.Eventually(t, 20*time.Second, func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		dead = append(dead, dl.PollFetches(ctx).Records()...)
		if len(dead) == 0 {
			return "no dead letter yet"
		}
		return ""
	})
	d, err := consumers.ParseDeadLetter(dead[0])
	if err != nil {
		t.Fatal(err)
	}
	if d.Record != dead[0] {
		t.Errorf("Record is not the dead-letter record")
	}
	got := *d
	got.Record, got.Time = nil, time.Time{}
	want := consumers.DeadLetter{
		Group: "g", Sink: "cursed-projection", Class: "test-class", Reason: "cursed",
		Topic: "t", Partition: poison.Partition, Offset: poison.Offset,
		EventID: "e17", EventType: "test.thing.happened.v1", Subject: "s2",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseDeadLetter (-want +got):\n%s", diff)
	}
	if d.Time.Before(before.Add(-time.Second)) || d.Time.After(time.Now().Add(time.Second)) {
		t.Errorf("Time = %v, want the time it was dead-lettered (after %v)", d.Time, before)
	}

	orig := d.Original()
	if orig.Topic != "t" || orig.Partition != poison.Partition || orig.Offset != poison.Offset {
		t.Errorf("Original at %s/%d@%d, want t/%d@%d", orig.Topic, orig.Partition, orig.Offset, poison.Partition, poison.Offset)
	}
	if string(orig.Key) != string(poison.Key) || string(orig.Value) != string(poison.Value) {
		t.Errorf("Original key %q value %q, want %q %q", orig.Key, orig.Value, poison.Key, poison.Value)
	}
	if diff := cmp.Diff(poison.Headers, orig.Headers); diff != "" {
		t.Errorf("Original headers (-want +got):\n%s", diff)
	}
	ev, err := cekafka.Event(orig)
	if err != nil || ev.Id != "e17" || ev.Extensions["tenant"] != "acme" {
		t.Errorf("Original carries event %v (%v), want e17 with its extension", ev, err)
	}
}

// deadLetterRecord returns a record as a group writes it to the
// dead-letter topic, with the dead-letter headers in set given other
// values ("": left out).
func deadLetterRecord(set map[string]string) *kgo.Record {
	hs := []kgo.RecordHeader{
		{Key: cekafka.HeaderID, Value: []byte("e1")},
		{Key: cekafka.HeaderType, Value: []byte("shop.order.placed.v1")},
	}
	dlq := [][2]string{
		{consumers.HeaderDLQGroup, "spate-project"},
		{consumers.HeaderDLQSink, "orders"},
		{consumers.HeaderDLQClass, "data-exception"},
		{consumers.HeaderDLQReason, "bad"},
		{consumers.HeaderDLQTopic, "spate.events"},
		{consumers.HeaderDLQPartition, "3"},
		{consumers.HeaderDLQOffset, "42"},
		{consumers.HeaderDLQTime, "2026-11-01T12:00:00.5Z"},
	}
	for _, kv := range dlq {
		v, ok := set[kv[0]]
		if !ok {
			v = kv[1]
		}
		if v != "" {
			hs = append(hs, kgo.RecordHeader{Key: kv[0], Value: []byte(v)})
		}
	}
	return &kgo.Record{Topic: "spate.events.dlq", Partition: 1, Offset: 7, Value: []byte("v"), Headers: hs}
}

func TestParseDeadLetter(t *testing.T) {
	t.Parallel()
	d, err := consumers.ParseDeadLetter(deadLetterRecord(nil))
	if err != nil {
		t.Fatal(err)
	}
	if d.Topic != "spate.events" || d.Partition != 3 || d.Offset != 42 || d.Group != "spate-project" || d.Sink != "orders" ||
		d.Class != "data-exception" || d.Reason != "bad" || d.EventID != "e1" || d.EventType != "shop.order.placed.v1" ||
		!d.Time.Equal(time.Date(2026, 11, 1, 12, 0, 0, 5e8, time.UTC)) {
		t.Errorf("ParseDeadLetter = %+v", d)
	}

	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r := deadLetterRecord(map[string]string{consumers.HeaderDLQTime: "", consumers.HeaderDLQSink: ""})
	r.Timestamp = ts
	if d, err := consumers.ParseDeadLetter(r); err != nil || !d.Time.Equal(ts) || d.Sink != "" {
		t.Errorf("without time and sink: %+v, %v; want the record's timestamp and no sink", d, err)
	}

	for _, tc := range []struct {
		header, value string
	}{
		{consumers.HeaderDLQGroup, ""},
		{consumers.HeaderDLQTopic, ""},
		{consumers.HeaderDLQPartition, ""},
		{consumers.HeaderDLQPartition, "x"},
		{consumers.HeaderDLQPartition, "-1"},
		{consumers.HeaderDLQPartition, "4294967296"},
		{consumers.HeaderDLQOffset, ""},
		{consumers.HeaderDLQOffset, "1.5"},
		{consumers.HeaderDLQOffset, "-3"},
		{consumers.HeaderDLQTime, "yesterday"},
	} {
		_, err := consumers.ParseDeadLetter(deadLetterRecord(map[string]string{tc.header: tc.value}))
		if !errors.Is(err, consumers.ErrNotDeadLetter) {
			t.Errorf("%s=%q: err = %v, want ErrNotDeadLetter", tc.header, tc.value, err)
		}
	}
}

// TestDeadLetterOfDeadLetter: a dead letter copied back to its topic and
// dead-lettered again carries two sets of headers; the newest counts and
// Original keeps the older set, which was part of the record.
func TestDeadLetterOfDeadLetter(t *testing.T) {
	t.Parallel()
	first := deadLetterRecord(nil)
	again := slices.Clone(first.Headers)
	again = append(again,
		kgo.RecordHeader{Key: consumers.HeaderDLQGroup, Value: []byte("spate-fanout")},
		kgo.RecordHeader{Key: consumers.HeaderDLQClass, Value: []byte("stream-key")},
		kgo.RecordHeader{Key: consumers.HeaderDLQTopic, Value: []byte("replayed")},
		kgo.RecordHeader{Key: consumers.HeaderDLQPartition, Value: []byte("0")},
		kgo.RecordHeader{Key: consumers.HeaderDLQOffset, Value: []byte("9")},
	)
	d, err := consumers.ParseDeadLetter(&kgo.Record{Headers: again})
	if err != nil {
		t.Fatal(err)
	}
	if d.Group != "spate-fanout" || d.Class != "stream-key" || d.Topic != "replayed" || d.Offset != 9 || d.Sink != "orders" {
		t.Errorf("ParseDeadLetter = %+v, want the newest headers", d)
	}
	kept := map[string]int{}
	for _, h := range d.Original().Headers {
		kept[h.Key]++
	}
	for _, k := range []string{consumers.HeaderDLQGroup, consumers.HeaderDLQClass, consumers.HeaderDLQTopic, consumers.HeaderDLQPartition, consumers.HeaderDLQOffset} {
		if kept[k] != 1 {
			t.Errorf("Original holds %d %s headers, want 1 (the older)", kept[k], k)
		}
	}
	for _, k := range []string{consumers.HeaderDLQSink, consumers.HeaderDLQReason, consumers.HeaderDLQTime} {
		if kept[k] != 0 {
			t.Errorf("Original holds %d %s headers, want 0", kept[k], k)
		}
	}
}

func FuzzParseDeadLetter(f *testing.F) {
	f.Add("spate-project", "events", "3", "42", "2026-11-01T12:00:00Z")
	f.Add("g", "t", "-1", "x", "")
	f.Add("", "", "", "", "not a time")
	f.Fuzz(func(t *testing.T, group, topic, partition, offset, at string) {
		r := &kgo.Record{Headers: []kgo.RecordHeader{
			{Key: consumers.HeaderDLQGroup, Value: []byte(group)},
			{Key: consumers.HeaderDLQTopic, Value: []byte(topic)},
			{Key: consumers.HeaderDLQPartition, Value: []byte(partition)},
			{Key: consumers.HeaderDLQOffset, Value: []byte(offset)},
			{Key: consumers.HeaderDLQTime, Value: []byte(at)},
		}}
		d, err := consumers.ParseDeadLetter(r)
		if err != nil {
			if !errors.Is(err, consumers.ErrNotDeadLetter) {
				t.Fatalf("error %v does not wrap ErrNotDeadLetter", err)
			}
			return
		}
		if d.Group != group || d.Topic != topic || d.Partition < 0 || d.Offset < 0 {
			t.Fatalf("ParseDeadLetter = %+v from %q %q %q %q", d, group, topic, partition, offset)
		}
		if o := d.Original(); len(o.Headers) != 0 || o.Topic != topic {
			t.Fatalf("Original = %+v, want no headers, topic %q", o, topic)
		}
	})
}

// TestReadRangeEndsAtATransactionMarker: a range whose last offset is a
// transaction's commit marker (as a transactional producer leaves) is read
// to its end, the marker handed over as a control record.
func TestReadRangeEndsAtATransactionMarker(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 1, "t")
	produce(t, brokers, "t", 0, 2)
	tx, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("t"), kgo.TransactionalID("test"))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	if err := tx.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := tx.ProduceSync(ctx, &kgo.Record{Value: []byte("in a transaction")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := tx.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	// Offsets 0 and 1, the transaction's record at 2, its marker at 3.
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second) // it would wait for ever
	defer cancel()
	var got []string
	err = consumers.ReadRange(rctx, []kgo.Opt{kgo.SeedBrokers(brokers...)}, "t", map[int32]int64{0: 0}, map[int32]int64{0: 4}, func(r *kgo.Record) error {
		got = append(got, fmt.Sprintf("%d:%v", r.Offset, r.Attrs.IsControl()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"0:false", "1:false", "2:false", "3:true"}, got); diff != "" {
		t.Errorf("records read (-want +got):\n%s", diff)
	}
}

// TestReadRangeOfRecordsRetentionDeleted: the records of the range go
// (retention, DeleteRecords) between the listing of its bounds and the
// read. ReadRange ends, whether records come after the range or not.
func TestReadRangeOfRecordsRetentionDeleted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		below, more int     // records deleted below this offset; records produced after
		want        []int64 // offsets read
	}{{3, 0, nil}, {3, 1, nil}, {2, 0, []int64{2}}} {
		brokers := spatetest.Kafka(t, 1, "t")
		produce(t, brokers, "t", 0, 3) // bounds listed: 0 to 3
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
		if err != nil {
			t.Fatal(err)
		}
		del, err := kadm.NewClient(cl).DeleteRecords(ctx, kadm.Offsets{"t": {0: {Topic: "t", Partition: 0, At: int64(tc.below)}}})
		cl.Close()
		if err == nil {
			err = del.Error()
		}
		if err != nil {
			t.Fatal(err)
		}
		produce(t, brokers, "t", 3, tc.more)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second) // it would wait for ever
		var got []int64
		err = consumers.ReadRange(rctx, []kgo.Opt{kgo.SeedBrokers(brokers...)}, "t", map[int32]int64{0: 0}, map[int32]int64{0: 3}, func(r *kgo.Record) error {
			got = append(got, r.Offset)
			return nil
		})
		cancel()
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("deleted below %d, %d later records: ReadRange read %v, %v; want %v, nil", tc.below, tc.more, got, err, tc.want)
		}
	}
}
