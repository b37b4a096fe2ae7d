package consumers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/spatetest"
)

func TestMain(m *testing.M) { spatetest.Main(m) }

// memSink is a consumers.Handler that keeps what it applied in memory and
// honours the contract: it skips records below its stored offset.
type memSink struct {
	mu      sync.Mutex
	next    map[int32]int64
	applied map[int32][]int64 // offsets, in the order applied
	fail    func(b consumers.Batch) error
}

func newMemSink() *memSink {
	return &memSink{next: map[int32]int64{}, applied: map[int32][]int64{}}
}

func (s *memSink) Offsets(_ context.Context, _ string, ps []int32) (map[int32]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[int32]int64{}
	for _, p := range ps {
		if o, ok := s.next[p]; ok {
			out[p] = o
		}
	}
	return out, nil
}

func (s *memSink) Apply(_ context.Context, b consumers.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		if err := s.fail(b); err != nil {
			return err
		}
	}
	for _, r := range b.Records {
		if r.Offset >= s.next[b.Partition] {
			s.applied[b.Partition] = append(s.applied[b.Partition], r.Offset)
		}
	}
	s.next[b.Partition] = max(s.next[b.Partition], b.Next)
	return nil
}

func (s *memSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, offs := range s.applied {
		n += len(offs)
	}
	return n
}

// produce writes n records with values "0".."n-1" spread over partitions.
func produce(t *testing.T, brokers []string, topic string, from, n int) {
	t.Helper()
	produceAt(t, brokers, topic, from, n, time.Time{})
}

// produceAt is produce with the records' timestamp; zero: the time they
// are produced.
func produceAt(t *testing.T, brokers []string, topic string, from, n int, at time.Time) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	recs := make([]*kgo.Record, n)
	for i := range recs {
		v := strconv.Itoa(from + i)
		recs[i] = &kgo.Record{Key: []byte("k" + strconv.Itoa((from+i)%7)), Value: []byte(v), Timestamp: at}
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// runGroup runs a group into h until the returned stop is called. opts go
// to the group's Kafka client.
func runGroup(t *testing.T, brokers []string, topic string, h consumers.Handler, opts ...kgo.Opt) (stop func()) {
	t.Helper()
	return runGroupWith(t, brokers, consumers.Config{Group: "g", Topics: []string{topic}, MaxBackoff: 200 * time.Millisecond}, h, opts...)
}

// runGroupWith is runGroup with the group's Config.
func runGroupWith(t *testing.T, brokers []string, cfg consumers.Config, h consumers.Handler, opts ...kgo.Opt) (stop func()) {
	t.Helper()
	_, stop = startGroup(t, brokers, cfg, h, nil, opts...)
	return stop
}

// startGroup is runGroupWith that returns the group too, which reads the
// time from now if set.
func startGroup(t *testing.T, brokers []string, cfg consumers.Config, h consumers.Handler, now func() time.Time, opts ...kgo.Opt) (g *consumers.Group, stop func()) {
	t.Helper()
	if now == nil {
		now = time.Now
	}
	g, err := consumers.NewWithClock(h, cfg, now, append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return g, stop
}

// checkExactlyOnce fails unless every partition's applied offsets are
// 0..n-1 in order, n records in all.
func checkExactlyOnce(t *testing.T, s *memSink, total int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p, offs := range s.applied {
		for i, o := range offs {
			if o != int64(i) {
				t.Fatalf("partition %d: applied offsets %v, want 0..%d in order, each once", p, offs, len(offs)-1)
			}
		}
		n += len(offs)
	}
	if n != total {
		t.Fatalf("applied %d records, want %d", n, total)
	}
}

func TestResumesFromSinkAcrossRestarts(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 4, "t")
	sink := newMemSink()
	produce(t, brokers, "t", 0, 2000)

	stop := runGroup(t, brokers, "t", sink)
	spatetest.Eventually(t, 20*time.Second, func() string {
		if n := sink.count(); n < 2000 {
			return fmt.Sprintf("applied %d of 2000", n)
		}
		return ""
	})
	stop()

	// A new member of the same group resumes from the sink's offsets: what
	// arrives meanwhile is applied, nothing is applied twice.
	produce(t, brokers, "t", 2000, 1000)
	runGroup(t, brokers, "t", sink)
	spatetest.Eventually(t, 20*time.Second, func() string {
		if n := sink.count(); n < 3000 {
			return fmt.Sprintf("applied %d of 3000", n)
		}
		return ""
	})
	checkExactlyOnce(t, sink, 3000)
}

// heldSink is a memSink whose batches of partition 0 wait until held is
// closed.
type heldSink struct {
	*memSink
	held chan struct{}
}

func (s *heldSink) Apply(ctx context.Context, b consumers.Batch) error {
	if b.Partition == 0 {
		select {
		case <-s.held:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.memSink.Apply(ctx, b)
}

// A partition whose batch is slow does not hold the others back: they go on
// to their next batches meanwhile.
func TestSlowPartitionDoesNotHoldOthers(t *testing.T) {
	t.Parallel()
	const partitions, perRound = 4, 20
	brokers := spatetest.Kafka(t, partitions, "t")
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("t"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	produced := 0
	round := func() { // perRound records in each partition
		t.Helper()
		var recs []*kgo.Record
		for p := range int32(partitions) {
			for range perRound {
				recs = append(recs, &kgo.Record{Partition: p, Value: []byte("v")})
			}
		}
		if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
		produced += len(recs)
	}
	sink := &heldSink{memSink: newMemSink(), held: make(chan struct{})}
	runGroup(t, brokers, "t", sink)
	// Six rounds while partition 0 waits on its first batch: the others
	// apply them all. Partition 0's fetches pile up only until it is
	// paused.
	for r := 1; r <= 6; r++ {
		round()
		spatetest.Eventually(t, 30*time.Second, func() string {
			sink.mu.Lock()
			defer sink.mu.Unlock()
			for p := int32(1); p < partitions; p++ {
				if sink.next[p] < int64(r*perRound) {
					return fmt.Sprintf("while partition 0 waits, partitions 1..%d applied up to %v, want %d each", partitions-1, sink.next, r*perRound)
				}
			}
			return ""
		})
	}
	close(sink.held)
	round()
	spatetest.Eventually(t, 30*time.Second, func() string {
		if n := sink.count(); n < produced {
			return fmt.Sprintf("applied %d of %d", n, produced)
		}
		return ""
	})
	checkExactlyOnce(t, sink.memSink, produced)
}

// A member whose partition is stuck (its sink never finishes a batch) still
// takes part in rebalances: a member that joins gets partitions, rather
// than waiting for the stuck one to be expelled from the group (after its
// 60 s rebalance timeout), and the partitions that are not stuck go on.
func TestStuckPartitionDoesNotBlockRebalance(t *testing.T) {
	t.Parallel()
	const partitions = 4
	brokers := spatetest.Kafka(t, partitions, "t")
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("t"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	perPartition := 0
	round := func() {
		t.Helper()
		var recs []*kgo.Record
		for p := range int32(partitions) {
			for range 20 {
				recs = append(recs, &kgo.Record{Partition: p, Value: []byte("v")})
			}
		}
		if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
		perPartition += 20
	}
	shared := &heldSink{memSink: newMemSink(), held: make(chan struct{})} // partition 0 never finishes
	applied := func(want int) string {
		shared.mu.Lock()
		defer shared.mu.Unlock()
		for p := int32(1); p < partitions; p++ {
			if shared.next[p] < int64(want) {
				return fmt.Sprintf("partitions 1..%d applied up to %v, want %d each", partitions-1, shared.next, want)
			}
		}
		return ""
	}
	runGroup(t, brokers, "t", shared)
	for range 6 {
		round()
		spatetest.Eventually(t, 30*time.Second, func() string { return applied(perPartition) })
	}
	runGroup(t, brokers, "t", shared)
	adm := kadm.NewClient(cl)
	spatetest.Eventually(t, 30*time.Second, func() string {
		groups, err := adm.DescribeGroups(t.Context(), "g")
		if err != nil {
			return err.Error()
		}
		g := groups["g"]
		if len(g.Members) != 2 {
			return fmt.Sprintf("%d members, want 2", len(g.Members))
		}
		for _, m := range g.Members {
			if c, ok := m.Assigned.AsConsumer(); !ok || len(c.Topics) == 0 {
				return fmt.Sprintf("member %s has no partitions yet", m.MemberID)
			}
		}
		return ""
	})
	round()
	spatetest.Eventually(t, 30*time.Second, func() string { return applied(perPartition) })
}

func TestSinkOffsetsWinOverKafka(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "t")
	produce(t, brokers, "t", 0, 100)
	sink := newMemSink()
	sink.next[0] = 60 // the sink already holds 0..59
	runGroup(t, brokers, "t", sink)
	spatetest.Eventually(t, 20*time.Second, func() string {
		if n := sink.count(); n < 40 {
			return fmt.Sprintf("applied %d of 40", n)
		}
		return ""
	})
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if got := sink.applied[0]; got[0] != 60 || len(got) != 40 {
		t.Fatalf("applied %v, want offsets 60..99", got)
	}
}

func TestTransientErrorsAreRetried(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 2, "t")
	produce(t, brokers, "t", 0, 500)
	sink := newMemSink()
	failures := 0
	sink.fail = func(consumers.Batch) error {
		if failures < 5 {
			failures++
			return errors.New("sink down")
		}
		return nil
	}
	reg := prometheus.NewPedanticRegistry()
	runGroupWith(t, brokers, consumers.Config{Group: "g", Topics: []string{"t"}, MaxBackoff: 200 * time.Millisecond, Metrics: reg}, sink)
	spatetest.Eventually(t, 30*time.Second, func() string {
		if n := sink.count(); n < 500 {
			return fmt.Sprintf("applied %d of 500", n)
		}
		return ""
	})
	checkExactlyOnce(t, sink, 500)
	if failures != 5 {
		t.Fatalf("failed %d times, want 5", failures)
	}
	if n := spatetest.CounterTotal(t, reg, "spate_consumer_retries_total"); n != 5 {
		t.Fatalf("spate_consumer_retries_total = %v, want 5", n)
	}
}

// A batch given up because the group stopped (or its partition was
// revoked) failed with the context's error: that is no retry. The batch
// never finishes, so the group gives it up after DrainTimeout.
func TestRetriesLeaveOutBatchesGivenUp(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "t")
	produce(t, brokers, "t", 0, 10)
	started := make(chan struct{})
	var once sync.Once
	sink := &heldSink{memSink: newMemSink(), held: make(chan struct{})} // never released
	reg := prometheus.NewPedanticRegistry()
	stop := runGroupWith(t, brokers, consumers.Config{Group: "g", Topics: []string{"t"}, DrainTimeout: 100 * time.Millisecond, Metrics: reg},
		startedSink{sink, func() { once.Do(func() { close(started) }) }})
	<-started
	stop()
	if n := spatetest.CounterTotal(t, reg, "spate_consumer_retries_total"); n != 0 {
		t.Fatalf("spate_consumer_retries_total = %v after a batch given up, want 0", n)
	}
}

// startedSink calls started as each batch starts, then applies it with h.
type startedSink struct {
	h       consumers.Handler
	started func()
}

func (s startedSink) Offsets(ctx context.Context, topic string, ps []int32) (map[int32]int64, error) {
	return s.h.Offsets(ctx, topic, ps)
}

func (s startedSink) Apply(ctx context.Context, b consumers.Batch) error {
	s.started()
	return s.h.Apply(ctx, b)
}

// TestStalledWhileAStepKeepsFailing: while the sink keeps failing, the
// group reports the step as stalled, once StallAfter has passed, with the
// sink's error; once the sink applies again, it no longer does.
func TestStalledWhileAStepKeepsFailing(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "t")
	produce(t, brokers, "t", 0, 10)
	sink := newMemSink()
	var down atomic.Bool
	down.Store(true)
	sink.fail = func(consumers.Batch) error {
		if down.Load() {
			return errors.New("sink down")
		}
		return nil
	}
	g, _ := startGroup(t, brokers, consumers.Config{Group: "g", Topics: []string{"t"}, MaxBackoff: 50 * time.Millisecond, StallAfter: 200 * time.Millisecond}, sink, nil)
	ctx := context.Background()
	spatetest.Eventually(t, 30*time.Second, func() string {
		err := g.Stalled(ctx)
		if !errors.Is(err, consumers.ErrStalled) || !strings.Contains(err.Error(), "apply t/0") || !strings.Contains(err.Error(), "sink down") {
			return fmt.Sprintf("Stalled = %v, want it to name apply t/0 and the sink's error", err)
		}
		return ""
	})
	down.Store(false)
	spatetest.Eventually(t, 30*time.Second, func() string {
		if n := sink.count(); n < 10 {
			return fmt.Sprintf("applied %d of 10", n)
		}
		if err := g.Stalled(ctx); err != nil {
			return fmt.Sprintf("Stalled = %v after the sink came back", err)
		}
		return ""
	})
}

// TestStalledWhileAStepHangs: a batch whose attempt neither fails nor
// returns is reported once it has gone on for StallAfter (on a clock the
// test moves on), and no longer once it is done.
func TestStalledWhileAStepHangs(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "t")
	produce(t, brokers, "t", 0, 10)
	sink := newMemSink()
	hanging, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	sink.fail = func(consumers.Batch) error {
		once.Do(func() {
			close(hanging)
			<-release
		})
		return nil
	}
	var skew atomic.Int64
	g, _ := startGroup(t, brokers, consumers.Config{Group: "g", Topics: []string{"t"}, StallAfter: time.Minute}, sink, func() time.Time {
		return time.Now().Add(time.Duration(skew.Load()))
	})
	// Cleanups run last first: the batch is released before the group stops.
	var released sync.Once
	unhang := func() { released.Do(func() { close(release) }) }
	t.Cleanup(unhang)
	ctx := context.Background()
	<-hanging
	if err := g.Stalled(ctx); err != nil {
		t.Fatalf("Stalled = %v at once; want nil for a minute", err)
	}
	skew.Store(int64(2 * time.Minute))
	if err := g.Stalled(ctx); !errors.Is(err, consumers.ErrStalled) || !strings.Contains(err.Error(), "apply t/0 has been running for 2m0s") {
		t.Fatalf("Stalled = %v two minutes on; want it to name the hanging batch", err)
	}
	unhang()
	spatetest.Eventually(t, 30*time.Second, func() string {
		if n := sink.count(); n < 10 {
			return fmt.Sprintf("applied %d of 10", n)
		}
		if err := g.Stalled(ctx); err != nil {
			return fmt.Sprintf("Stalled = %v once the batch is done", err)
		}
		return ""
	})
}

// TestStoredOffsetPastTheEnd: the sink holds offset 100 of a partition
// whose log ends at 10 (the topic was created again). Fetching would start
// over at 0 and the sink would skip offsets 0..99, so the group waits, and
// Stalled says why; once the offset is moved back, it goes on.
func TestStoredOffsetPastTheEnd(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "t")
	produce(t, brokers, "t", 0, 10)
	sink := newMemSink()
	sink.next[0] = 100
	g, _ := startGroup(t, brokers, consumers.Config{Group: "g", Topics: []string{"t"}, MaxBackoff: 50 * time.Millisecond, StallAfter: 100 * time.Millisecond}, sink, nil)
	spatetest.Eventually(t, 30*time.Second, func() string {
		err := g.Stalled(context.Background())
		if !errors.Is(err, consumers.ErrStalled) || !errors.Is(err, consumers.ErrPastEnd) || !strings.Contains(err.Error(), "partitions 0 at 100, end 10") {
			return fmt.Sprintf("Stalled = %v, want it to name partition 0's offset past the end", err)
		}
		return ""
	})
	if n := sink.count(); n != 0 {
		t.Fatalf("applied %d records while the offset was past the end, want none", n)
	}
	sink.mu.Lock()
	sink.next[0] = 0
	sink.mu.Unlock()
	spatetest.Eventually(t, 30*time.Second, func() string {
		if n := sink.count(); n < 10 {
			return fmt.Sprintf("applied %d of 10 once the offset was moved back", n)
		}
		return ""
	})
}

func TestPoisonGoesToDeadLetterTopic(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "t", consumers.DLQTopic("t"))
	// Written long ago: the dead letter keeps its record's timestamp, which
	// stands for the event's time when the event has none of its own, for
	// a re-drive.
	long := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	produceAt(t, brokers, "t", 0, 300, long)
	sink := newMemSink()
	sink.fail = func(b consumers.Batch) error {
		for _, r := range b.Records {
			if string(r.Value) == "123" && r.Offset >= sink.next[b.Partition] {
				return fmt.Errorf("apply: %w", consumers.Poison(r, "test", errors.New("value 123 is cursed")))
			}
		}
		return nil
	}
	runGroup(t, brokers, "t", sink)
	spatetest.Eventually(t, 20*time.Second, func() string {
		if n := sink.count(); n < 299 {
			return fmt.Sprintf("applied %d of 299", n)
		}
		return ""
	})
	sink.mu.Lock()
	applied := slices.Clone(sink.applied[0])
	next := sink.next[0]
	sink.mu.Unlock()
	if len(applied) != 299 || slices.Contains(applied, 123) || next != 300 {
		t.Fatalf("applied %d records (123 among them: %v), next offset %d; want 299 without 123, next 300",
			len(applied), slices.Contains(applied, 123), next)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(consumers.DLQTopic("t")),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fs := cl.PollFetches(ctx)
	if err := fs.Err(); err != nil {
		t.Fatal(err)
	}
	recs := fs.Records()
	if len(recs) != 1 {
		t.Fatalf("dead letters: %d records, want 1", len(recs))
	}
	want := map[string]string{
		consumers.HeaderDLQGroup:     "g",
		consumers.HeaderDLQClass:     "test",
		consumers.HeaderDLQReason:    "value 123 is cursed",
		consumers.HeaderDLQTopic:     "t",
		consumers.HeaderDLQPartition: "0",
		consumers.HeaderDLQOffset:    "123",
	}
	got := map[string]string{}
	for _, h := range recs[0].Headers {
		got[h.Key] = string(h.Value)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("header %s = %q, want %q", k, got[k], v)
		}
	}
	if string(recs[0].Value) != "123" {
		t.Errorf("dead letter value %q, want the original %q", recs[0].Value, "123")
	}
	d, err := consumers.ParseDeadLetter(recs[0])
	if err != nil {
		t.Fatal(err)
	}
	if o := d.Original(); !o.Timestamp.Equal(long) {
		t.Errorf("the dead letter's original record has timestamp %s, want %s", o.Timestamp.UTC(), long)
	}
	if !recs[0].Timestamp.After(long) {
		t.Errorf("dead letter timestamp %s, want when it was written", recs[0].Timestamp.UTC())
	}
}

// TestStoredOffsetKafkaNoLongerHas: while the sink was down, Kafka's
// retention deleted records past the offset the sink stored. The group
// resumes at the oldest record Kafka still has, even with StartAt latest
// (which is only for partitions the sink holds no offset of).
func TestStoredOffsetKafkaNoLongerHas(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "t")
	produce(t, brokers, "t", 0, 100)
	adm, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	offs := kadm.Offsets{}
	offs.AddOffset("t", 0, 50, -1)
	deleted, err := kadm.NewClient(adm).DeleteRecords(context.Background(), offs)
	if err != nil || deleted.Error() != nil {
		t.Fatalf("delete records below 50: %v, %v", err, deleted.Error())
	}
	sink := newMemSink()
	sink.next[0] = 10
	runGroupWith(t, brokers, consumers.Config{Group: "g", Topics: []string{"t"}, StartAt: "latest"}, sink)
	spatetest.Eventually(t, 20*time.Second, func() string {
		if n := sink.count(); n < 50 {
			return fmt.Sprintf("applied %d of the 50 records Kafka still has", n)
		}
		return ""
	})
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if got := sink.applied[0]; got[0] != 50 || len(got) != 50 {
		t.Fatalf("applied %v, want offsets 50..99", got)
	}
}

// TestStartAtLatestStoresTheEnd: a group that starts at the latest offset
// stores each partition's end at once, so that the events that come after
// are applied even when the group restarts (or the partition moves) before
// its first batch, instead of skipped from the new end.
func TestStartAtLatestStoresTheEnd(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "t")
	produce(t, brokers, "t", 0, 10) // history, to skip
	sink := newMemSink()
	cfg := consumers.Config{Group: "g", Topics: []string{"t"}, StartAt: "latest"}
	g, stop := startGroup(t, brokers, cfg, sink, nil)
	<-g.Started()
	stop() // before any new event
	sink.mu.Lock()
	next, ok := sink.next[0]
	sink.mu.Unlock()
	if !ok || next != 10 {
		t.Fatalf("stored offset %d (%v) once started, want the end, 10", next, ok)
	}
	produce(t, brokers, "t", 10, 5) // while no member runs
	runGroupWith(t, brokers, cfg, sink)
	spatetest.Eventually(t, 20*time.Second, func() string {
		if n := sink.count(); n < 5 {
			return fmt.Sprintf("applied %d of the 5 events that came after the start", n)
		}
		return ""
	})
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if got := sink.applied[0]; got[0] != 10 || len(got) != 5 {
		t.Fatalf("applied %v, want offsets 10..14", got)
	}
}
