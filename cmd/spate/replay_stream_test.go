package main

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

const (
	replayTopic      = "spate.events"
	replayCopyTopic  = "spate.events.copy"
	replayPartitions = 3
	replayPerPart    = 12 // records per partition, one a second from replayBase
)

var replayBase = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

// replayRecordInfo is a record of the source topic as the tests made it.
type replayRecordInfo struct {
	id, typ, subject string
	partition        int32
	offset           int64
	ts               time.Time
	event            bool // a CloudEvent
	badPayload       bool // an event whose payload does not decode
}

// replaySetup is a broker holding replayTopic (replayPartitions partitions
// of replayPerPart records with timestamps a second apart, from
// replayBase) and an empty replayCopyTopic, and a Redis key prefix.
type replaySetup struct {
	brokers  []string
	records  []replayRecordInfo
	redisURL string
	rdb      *redis.Client
	prefix   string
}

func newReplaySetup(t *testing.T) *replaySetup {
	t.Helper()
	s := &replaySetup{
		brokers:  spatetest.Kafka(t, replayPartitions, replayTopic, replayCopyTopic),
		redisURL: spatetest.Redis(t),
		prefix:   spatetest.KeyPrefix(t),
	}
	opts, err := redis.ParseURL(s.redisURL)
	if err != nil {
		t.Fatal(err)
	}
	s.rdb = redis.NewClient(opts)
	t.Cleanup(func() { s.rdb.Close() })

	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	types := []string{"shop.order.placed.v1", "shop.order.cancelled.v1", "shop.payment.captured.v1"}
	var recs []*kgo.Record
	for i := range replayPerPart {
		for p := range int32(replayPartitions) {
			info := replayRecordInfo{
				id:        fmt.Sprintf("p%d-%d", p, i),
				typ:       types[i%3],
				subject:   fmt.Sprintf("order-%d", i%4),
				partition: p,
				ts:        replayBase.Add(time.Duration(i) * time.Second),
				event:     !(p == 1 && i == 5),
			}
			info.badPayload = p == 2 && i == 3 // a placed order
			var r *kgo.Record
			if info.event {
				var m proto.Message
				switch info.typ {
				case types[0]:
					m = &shopv1.OrderPlaced{OrderId: info.subject, CustomerId: "cust-7", AmountCents: int64(100 + i), Currency: "EUR"}
				case types[1]:
					m = &shopv1.OrderCancelled{OrderId: info.subject, Reason: "changed mind"}
				default:
					m = &shopv1.PaymentCaptured{PaymentId: info.id, OrderId: info.subject, AmountCents: int64(100 + i), Currency: "EUR"}
				}
				data, err := proto.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				if info.badPayload {
					data = []byte{0xff, 0xff, 0xff}
				}
				r = cekafka.Record(replayTopic, &spatev1.Event{Id: info.id, Source: "/replay-test", Type: info.typ,
					Subject: info.subject, Time: timestamppb.New(info.ts), Datacontenttype: schemas.ContentTypeProtobuf, Data: data})
			} else {
				r = &kgo.Record{Topic: replayTopic, Value: []byte("not an event")}
			}
			r.Partition, r.Timestamp = p, info.ts
			recs = append(recs, r)
			s.records = append(s.records, info)
		}
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		s.records[i].offset = r.Offset
	}
	return s
}

// want returns the ids of the events in [from, to) (record timestamps)
// whose type matches typ and whose subject is subject (any if empty); for a
// stream, not those whose payload does not decode.
func (s *replaySetup) want(from, to time.Time, typ, subject string, stream bool) []string {
	var ids []string
	for _, r := range s.records {
		ok, _ := path.Match(typ, r.typ)
		if r.event && ok && (subject == "" || subject == r.subject) && !r.ts.Before(from) && r.ts.Before(to) && !(stream && r.badPayload) {
			ids = append(ids, r.id)
		}
	}
	slices.Sort(ids)
	return ids
}

func (s *replaySetup) byID(t *testing.T, id string) replayRecordInfo {
	t.Helper()
	for _, r := range s.records {
		if r.id == id {
			return r
		}
	}
	t.Fatalf("copied an event %q that the test did not produce", id)
	return replayRecordInfo{}
}

// streamIDs returns the event ids in stream key, in stream order, checking
// that the events of each source partition come in offset order.
func (s *replaySetup) streamIDs(t *testing.T, key string) []string {
	t.Helper()
	msgs, err := s.rdb.XRange(context.Background(), key, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	last := map[int32]int64{}
	for _, m := range msgs {
		id, _ := m.Values["id"].(string)
		r := s.byID(t, id)
		if prev, ok := last[r.partition]; ok && r.offset <= prev {
			t.Errorf("stream %s: event %s (partition %d, offset %d) comes after offset %d of its partition", key, id, r.partition, r.offset, prev)
		}
		last[r.partition] = r.offset
		if got := m.Values["subject"]; got != r.subject {
			t.Errorf("stream %s: event %s has subject %v, want %s", key, id, got, r.subject)
		}
		ids = append(ids, id)
	}
	return ids
}

// topicIDs returns the event ids in topic as a read_committed consumer
// sees them, checking that they decode as the events copied, name their
// origin, and come in offset order of their origin partition within each
// partition of topic.
func (s *replaySetup) topicIDs(t *testing.T, topic string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admCl, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer admCl.Close()
	ends, err := kadm.NewClient(admCl).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	pending := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			pending[o.Partition] = o.Offset
		}
	})
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var ids []string
	last := map[[2]int32]int64{} // by partition of topic and of origin
	for len(pending) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: committed records up to %v not all read (an open transaction?)", topic, pending)
		}
		fs.EachError(func(_ string, p int32, err error) { t.Fatalf("read %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset+1 >= pending[r.Partition] {
				delete(pending, r.Partition)
			}
			if r.Attrs.IsControl() {
				return
			}
			ev, err := cekafka.Event(r)
			if err != nil {
				t.Fatalf("%s/%d@%d: the copy does not decode: %v", topic, r.Partition, r.Offset, err)
			}
			info := s.byID(t, ev.Id)
			hs := map[string]string{}
			for _, h := range r.Headers {
				hs[h.Key] = string(h.Value)
			}
			wantOrigin := map[string]string{headerReplayTopic: replayTopic,
				headerReplayPartition: strconv.Itoa(int(info.partition)), headerReplayOffset: strconv.FormatInt(info.offset, 10)}
			for k, v := range wantOrigin {
				if hs[k] != v {
					t.Errorf("%s: header %s is %q, want %q", ev.Id, k, hs[k], v)
				}
			}
			if string(r.Key) != info.subject || ev.Type != info.typ || len(ev.Extensions) != 0 {
				t.Errorf("%s: copy has key %q, type %q, extensions %v; want key %q, type %q, none", ev.Id, r.Key, ev.Type, ev.Extensions, info.subject, info.typ)
			}
			k := [2]int32{r.Partition, info.partition}
			if prev, ok := last[k]; ok && info.offset <= prev {
				t.Errorf("%s/%d: event %s (offset %d of partition %d) comes after offset %d of that partition", topic, r.Partition, ev.Id, info.offset, info.partition, prev)
			}
			last[k] = info.offset
			ids = append(ids, ev.Id)
		})
	}
	return ids
}

// replayRun runs spate replay stream with args and returns its stdout and
// stderr.
func replayRun(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	return runSpate(ctx, append([]string{"replay", "stream"}, args...)...)
}

// args returns the flags that point replay at the setup's servers.
func (s *replaySetup) args(more ...string) []string {
	return append([]string{"--kafka-brokers", strings.Join(s.brokers, ","), "--topic", replayTopic,
		"--redis-url", s.redisURL, "--stream-prefix", s.prefix}, more...)
}

func replaySorted(ids []string) []string {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	return ids
}

func TestReplayStreamCopiesTheRangeExactlyOnce(t *testing.T) {
	t.Parallel()
	at := func(sec int) string { return replayBase.Add(time.Duration(sec) * time.Second).Format(time.RFC3339) }
	tests := []struct {
		name          string
		flags         []string
		from, to      time.Time
		typ, subject  string
		byOffset      bool
		wantFiltering bool
	}{
		{name: "type", flags: []string{"--from", at(2), "--to", at(10), "--type", "shop.order.*"},
			from: replayBase.Add(2 * time.Second), to: replayBase.Add(10 * time.Second), typ: "shop.order.*"},
		{name: "subject", flags: []string{"--from", at(1), "--subject", "order-2"},
			from: replayBase.Add(time.Second), to: replayBase.Add(time.Hour), typ: "*", subject: "order-2"},
		// Small chunks, most keeping nothing: their progress is stored too.
		{name: "type and subject", flags: []string{"--from", at(0), "--to", at(9), "--type", "shop.order.placed.v1", "--subject", "order-0", "--chunk", "2"},
			from: replayBase, to: replayBase.Add(9 * time.Second), typ: "shop.order.placed.v1", subject: "order-0"},
		{name: "offsets", flags: []string{"--from", "3", "--to", "7"}, // offsets are i here: one record a second
			from: replayBase.Add(3 * time.Second), to: replayBase.Add(7 * time.Second), typ: "*"},
	}
	for _, tt := range tests {
		for _, target := range []string{"stream", "topic"} {
			t.Run(tt.name+"/"+target, func(t *testing.T) {
				t.Parallel()
				s := newReplaySetup(t)
				key := s.prefix + "copy"
				to := []string{"--to-topic", replayCopyTopic}
				if target == "stream" {
					to = []string{"--to-stream", key}
				}
				want := s.want(tt.from, tt.to, tt.typ, tt.subject, target == "stream")
				if len(want) == 0 {
					t.Fatal("the case selects no event: it would prove nothing")
				}
				got := func() []string {
					if target == "stream" {
						return s.streamIDs(t, key)
					}
					return s.topicIDs(t, replayCopyTopic)
				}

				out, stderr, err := replayRun(t.Context(), s.args(slices.Concat(tt.flags, to)...)...)
				if err != nil {
					t.Fatalf("replay: %v\nstderr:\n%s", err, stderr)
				}
				if diff := cmp.Diff(want, replaySorted(got())); diff != "" {
					t.Fatalf("copied events (-want +got):\n%s", diff)
				}
				if wantOut := fmt.Sprintf("copied %d of ", len(want)); !strings.Contains(out, wantOut) {
					t.Errorf("stdout %q: want it to say %q", out, wantOut)
				}
				if !strings.Contains(stderr, "msg=done") {
					t.Errorf("stderr has no final progress line (msg=done):\n%s", stderr)
				}

				// The job is done: running it again copies nothing.
				out, stderr, err = replayRun(t.Context(), s.args(slices.Concat(tt.flags, to)...)...)
				if err != nil {
					t.Fatalf("replay again: %v\nstderr:\n%s", err, stderr)
				}
				if !strings.HasPrefix(out, "copied 0 of 0 ") {
					t.Errorf("replay again: stdout %q, want copied 0 of 0", out)
				}
				if diff := cmp.Diff(want, replaySorted(got())); diff != "" {
					t.Fatalf("copied events after running the job again (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestReplayStreamResumesAfterInterruption(t *testing.T) {
	t.Parallel()
	for _, target := range []string{"stream", "topic"} {
		t.Run(target, func(t *testing.T) {
			t.Parallel()
			s := newReplaySetup(t)
			key := s.prefix + "copy"
			args := s.args("--from", "earliest", "--type", "shop.*", "--chunk", "4")
			args = append(args, "--to-topic", replayCopyTopic)
			got := func() []string { return s.topicIDs(t, replayCopyTopic) }
			if target == "stream" {
				args[len(args)-2], args[len(args)-1] = "--to-stream", key
				got = func() []string { return s.streamIDs(t, key) }
			}
			want := s.want(replayBase, replayBase.Add(time.Hour), "shop.*", "", target == "stream")

			// Stop the first run once a chunk with events is stored.
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var first int64
			ctx = context.WithValue(ctx, replayHookKey{}, func(copied int64) {
				if copied > 0 && first == 0 {
					first = copied
					cancel()
				}
			})
			_, stderr, err := replayRun(ctx, args...)
			if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "run the same command again to resume") {
				t.Fatalf("interrupted run: got error %v, want one saying it was interrupted\nstderr:\n%s", err, stderr)
			}
			partial := got()
			if len(partial) == 0 || len(partial) >= len(want) || int64(len(partial)) != first {
				t.Fatalf("interrupted run copied %d events (hook saw %d), want some of the %d", len(partial), first, len(want))
			}

			out, stderr, err := replayRun(t.Context(), args...)
			if err != nil {
				t.Fatalf("second run: %v\nstderr:\n%s", err, stderr)
			}
			if diff := cmp.Diff(want, replaySorted(got())); diff != "" {
				t.Fatalf("copied events after the second run (-want +got):\n%s", diff)
			}
			if wantOut := fmt.Sprintf("copied %d of ", len(want)-len(partial)); !strings.HasPrefix(out, wantOut) {
				t.Errorf("second run: stdout %q, want it to start %q", out, wantOut)
			}

			out, _, err = replayRun(t.Context(), args...)
			if err != nil || !strings.HasPrefix(out, "copied 0 of 0 ") {
				t.Fatalf("third run: %q, %v; want copied 0 of 0", out, err)
			}
			if diff := cmp.Diff(want, replaySorted(got())); diff != "" {
				t.Fatalf("copied events after the third run (-want +got):\n%s", diff)
			}
		})
	}
}

// A run that died inside a transaction leaves it open; the next run must
// abort it, so that what it had produced never becomes visible.
func TestReplayStreamToTopicAbortsTheTransactionOfADeadRun(t *testing.T) {
	t.Parallel()
	s := newReplaySetup(t)
	flags := s.args("--from", "earliest", "--to-topic", replayCopyTopic)
	f := replayFlags{from: "earliest", toTopic: replayCopyTopic, typ: "*", chunk: 1}
	j, err := f.job(replayTopic, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	dead, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...), kgo.TransactionalID("spate-replay-"+j.id()))
	if err != nil {
		t.Fatal(err)
	}
	if err := dead.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	first := s.records[0]
	orig := &kgo.Record{Topic: replayTopic, Partition: first.partition, Offset: first.offset}
	ev := &spatev1.Event{Id: first.id, Source: "/replay-test", Type: first.typ, Subject: first.subject}
	orig.Headers, orig.Key = cekafka.Record(replayTopic, ev).Headers, []byte(first.subject)
	if err := dead.ProduceSync(t.Context(), replayRecord(replayCopyTopic, orig)).FirstErr(); err != nil {
		t.Fatal(err)
	}
	dead.Close() // without ending the transaction, as a crash would

	if _, stderr, err := replayRun(t.Context(), flags...); err != nil {
		t.Fatalf("replay: %v\nstderr:\n%s", err, stderr)
	}
	want := s.want(replayBase, replayBase.Add(time.Hour), "*", "", false)
	if diff := cmp.Diff(want, replaySorted(s.topicIDs(t, replayCopyTopic))); diff != "" {
		t.Fatalf("copied events (-want +got):\n%s", diff)
	}
}

func TestReplayStreamRefusesAmbiguousInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no target", []string{"--from", "earliest"}, "give the target: --to-stream KEY"},
		{"two targets", []string{"--from", "earliest", "--to-stream", "s", "--to-topic", "t", "--redis-url", "redis://127.0.0.1:1/0"}, "both --to-stream"},
		{"target is the source", []string{"--topic", "a", "--from", "earliest", "--to-topic", "a"}, `--to-topic "a" is --topic`},
		{"target is a dead-letter topic", []string{"--from", "earliest", "--to-topic", "spate.events.dlq"}, `--to-topic "spate.events.dlq" is a dead-letter topic`},
		{"no from", []string{"--to-topic", "t"}, "--from is required"},
		{"bad from", []string{"--from", "yesterday", "--to-topic", "t"}, `--from "yesterday"`},
		{"to before from", []string{"--from", "2026-11-23T09:00:00Z", "--to", "2026-11-23T08:00:00Z", "--to-topic", "t"}, "--to 2026-11-23T08:00:00Z is before --from 2026-11-23T09:00:00Z"},
		{"to before from, ago", []string{"--from", "-1h", "--to", "-2h", "--to-topic", "t"}, "--to -2h is before --from -1h"},
		{"to before from, offsets", []string{"--from", "10", "--to", "5", "--to-topic", "t"}, "--to 5 is before --from 10"},
		{"latest to earliest", []string{"--from", "latest", "--to", "earliest", "--to-topic", "t"}, "--to earliest is before --from latest"},
		{"bad glob", []string{"--from", "earliest", "--type", "shop.[", "--to-topic", "t"}, `--type "shop.["`},
		{"stream without redis", []string{"--from", "earliest", "--to-stream", "s"}, "--to-stream needs --redis-url"},
		{"argument", []string{"--from", "earliest", "--to-topic", "t", "extra"}, `unknown command "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// No broker listens at port 1: every case must fail before connecting.
			_, _, err := replayRun(t.Context(), append([]string{"--kafka-brokers", "127.0.0.1:1"}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestReplayStreamRefusesAMissingTopic(t *testing.T) {
	t.Parallel()
	s := newReplaySetup(t)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"source", []string{"--topic", "nope", "--from", "earliest", "--to-topic", replayCopyTopic}, "nope"},
		{"target", []string{"--from", "earliest", "--to-topic", "nope"}, "--to-topic nope: no such topic; create it first, or give --create-topic"},
	} {
		_, _, err := replayRun(t.Context(), append([]string{"--kafka-brokers", strings.Join(s.brokers, ",")}, tt.args...)...)
		if !errors.Is(err, errNoTopic) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got error %v, want errNoTopic naming %q", tt.name, err, tt.want)
		}
	}
}

// A --to-stream key that holds another type is refused before anything is
// copied: each XADD would fail, and so would a rerun.
func TestReplayStreamRefusesAKeyThatIsNotAStream(t *testing.T) {
	t.Parallel()
	s := newReplaySetup(t)
	key := s.prefix + "a-hash"
	if err := s.rdb.HSet(t.Context(), key, "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	_, _, err := replayRun(t.Context(), s.args("--from", "earliest", "--to-stream", key)...)
	if err == nil || !strings.Contains(err.Error(), "holds a hash, not a stream") {
		t.Fatalf("replay into a hash: %v, want a refusal saying the key holds a hash", err)
	}
}

// With --create-topic, a missing target is created with the partitions
// of the source, and the range copied into it.
func TestReplayStreamCreatesTheTargetTopic(t *testing.T) {
	t.Parallel()
	s := newReplaySetup(t)
	if _, stderr, err := replayRun(t.Context(), s.args("--from", "earliest", "--to-topic", "spate.events.new", "--create-topic")...); err != nil {
		t.Fatalf("replay stream --create-topic: %v\n%s", err, stderr)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(t.Context(), "spate.events.new")
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	from, to := map[int32]int64{}, map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { from[o.Partition], to[o.Partition] = 0, o.Offset })
	n := 0
	err = consumers.ReadRange(t.Context(), []kgo.Opt{kgo.SeedBrokers(s.brokers...)}, "spate.events.new", from, to, func(r *kgo.Record) error {
		if !r.Attrs.IsControl() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	events := 0 // the other records are not events, which --type matches
	for _, r := range s.records {
		if r.event {
			events++
		}
	}
	if parts := len(to); parts != replayPartitions || n != events {
		t.Errorf("spate.events.new: %d partitions holding %d records, want %d holding %d", parts, n, replayPartitions, events)
	}
}

func TestReplayStreamHelpHasAnExample(t *testing.T) {
	t.Parallel()
	out, _, err := replayRun(t.Context(), "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Examples:", "spate replay stream --from", "--to-stream", "--to-topic", "[SPATE_REDIS_URL]", "(not taken from SPATE_TO_TOPIC)", "(not taken from SPATE_CREATE_TOPIC)"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q:\n%s", want, out)
		}
	}
}

func TestReplayStreamJobID(t *testing.T) {
	t.Parallel()
	now := time.Now()
	id := func(f replayFlags) string {
		t.Helper()
		if f.typ == "" {
			f.typ = "*"
		}
		f.chunk = 1
		j, err := f.job(replayTopic, now)
		if err != nil {
			t.Fatal(err)
		}
		return j.id()
	}
	base := replayFlags{from: "2026-11-23T08:00:00Z", to: "2026-11-23T09:00:00Z", toTopic: "x"}
	same := []replayFlags{
		{from: "2026-11-23T09:00:00+01:00", to: "2026-11-23T09:00:00Z", toTopic: "x"}, // the same instant
		{from: "2026-11-23T08:00:00Z", toTopic: "x"},                                  // --to is not part of the job
		{from: "2026-11-23T08:00:00Z", to: "2026-11-23T10:00:00Z", toTopic: "x", chunk: 5},
	}
	for _, f := range same {
		if id(f) != id(base) {
			t.Errorf("%+v: got a job other than %+v's, want the same", f, base)
		}
	}
	if id(replayFlags{from: "-60m", toTopic: "x"}) != id(replayFlags{from: "-1h", toTopic: "x"}) {
		t.Errorf("-60m and -1h: got two jobs, want one")
	}
	other := []replayFlags{
		{from: "2026-11-23T08:00:01Z", toTopic: "x"},
		{from: "2026-11-23T08:00:00Z", toTopic: "y"},
		{from: "2026-11-23T08:00:00Z", toStream: "x", redisURL: "redis://r"},
		{from: "2026-11-23T08:00:00Z", toTopic: "x", typ: "shop.*"},
		{from: "2026-11-23T08:00:00Z", toTopic: "x", subject: "order-1"},
		{from: "earliest", toTopic: "x"},
	}
	for _, f := range other {
		if id(f) == id(base) {
			t.Errorf("%+v: got %+v's job, want another", f, base)
		}
	}
}
