package subscribe_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/spate-io/spate/consumers/subscribe"
	"github.com/spate-io/spate/spatetest"
	"github.com/spate-io/spate/throwaway"
)

func TestMain(m *testing.M) { spatetest.Main(m) }

// waitFor bounds every wait for Redis and the subscriber.
const waitFor = 30 * time.Second

func connect(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// publish adds entries n=from..to-1 to stream and returns their IDs. It
// retries while Redis is unreachable, for tests that restart it.
func publish(t *testing.T, rdb *redis.Client, stream string, from, to int) []string {
	t.Helper()
	var ids []string
	for n := from; n < to; n++ {
		var id string
		spatetest.Eventually(t, waitFor, func() string {
			var err error
			id, err = rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: stream, Values: []any{"n", n}}).Result()
			if err != nil {
				return fmt.Sprintf("xadd: %v", err)
			}
			return ""
		})
		ids = append(ids, id)
	}
	return ids
}

// start runs s until ctx ends. The returned wait waits for Run to return
// and checks that it returned nil; it is called at cleanup too.
func start(t *testing.T, ctx context.Context, s *subscribe.Subscriber) (wait func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	wait = func() {
		once.Do(func() {
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(waitFor):
				t.Errorf("Run did not return %v after its context ended", waitFor)
			}
		})
	}
	t.Cleanup(wait) // after t.Context() ended
	return wait
}

// recorder is a handler that records what it was given.
type recorder struct {
	mu   sync.Mutex
	msgs []subscribe.Message
	fail func(subscribe.Message) error // nil: succeed
}

func (r *recorder) handle(_ context.Context, m subscribe.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
	if r.fail != nil {
		return r.fail(m)
	}
	return nil
}

// ids returns the IDs handled, in order, repeats included.
func (r *recorder) ids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, len(r.msgs))
	for i, m := range r.msgs {
		ids[i] = m.ID
	}
	return ids
}

// missing returns how many of want were never handled.
func (r *recorder) missing(want []string) int {
	got := map[string]bool{}
	for _, id := range r.ids() {
		got[id] = true
	}
	n := 0
	for _, id := range want {
		if !got[id] {
			n++
		}
	}
	return n
}

// settled says what keeps want from being handled and acknowledged by
// group on stream: "" once they are.
func (r *recorder) settled(t *testing.T, rdb *redis.Client, stream, group string, want []string) string {
	t.Helper()
	if n := r.missing(want); n > 0 {
		return fmt.Sprintf("%d of %d not handled", n, len(want))
	}
	if p := pending(t, rdb, stream, group); p != 0 {
		return fmt.Sprintf("%d pending", p)
	}
	return ""
}

// pending returns the group's pending entries on stream.
func pending(t *testing.T, rdb *redis.Client, stream, group string) int64 {
	t.Helper()
	p, err := rdb.XPending(t.Context(), stream, group).Result()
	if err != nil {
		t.Fatalf("xpending %s %s: %v", stream, group, err)
	}
	return p.Count
}

// eventuallyNonePending waits until group has no entry of stream pending.
func eventuallyNonePending(t *testing.T, rdb *redis.Client, stream, group string) {
	t.Helper()
	spatetest.Eventually(t, waitFor, func() string {
		if p := pending(t, rdb, stream, group); p != 0 {
			return fmt.Sprintf("%d pending", p)
		}
		return ""
	})
}

// metric returns the value of the series of name labelled stream, or -1.
func metric(t *testing.T, reg *prometheus.Registry, name, stream string) float64 {
	t.Helper()
	if v, ok := spatetest.Value(t, reg, name, "stream", stream); ok {
		return v
	}
	return -1
}

func TestHandlesAndAcknowledges(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	stream := spatetest.KeyPrefix(t) + "orders"
	reg := prometheus.NewRegistry()
	var rec recorder
	sub, err := subscribe.New(rdb, subscribe.Config{
		Group: "g", Streams: []string{stream}, ClaimIdle: 200 * time.Millisecond, Metrics: reg,
	}, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	want := publish(t, rdb, stream, 0, 150) // before the group exists: StartID 0 takes them
	start(t, t.Context(), sub)
	want = append(want, publish(t, rdb, stream, 150, 400)...)

	spatetest.Eventually(t, waitFor, func() string {
		if n := len(rec.ids()); n < len(want) {
			return fmt.Sprintf("handled %d of %d", n, len(want))
		}
		if p := pending(t, rdb, stream, "g"); p != 0 {
			return fmt.Sprintf("%d pending", p)
		}
		return ""
	})
	if diff := cmp.Diff(want, rec.ids()); diff != "" {
		t.Errorf("handled IDs (-want +got):\n%s", diff)
	}
	rec.mu.Lock()
	for _, m := range rec.msgs {
		if m.Stream != stream || m.Deliveries != 1 || m.Values["n"] == nil {
			t.Errorf("got %+v, want stream %s, 1 delivery and field n", m, stream)
			break
		}
	}
	if got, want := rec.msgs[7].Values["n"], "7"; got != want {
		t.Errorf("entry 7: n = %v, want %s", got, want)
	}
	rec.mu.Unlock()
	spatetest.Eventually(t, waitFor, func() string {
		for name, want := range map[string]float64{
			"spate_subscriber_messages_total":  400,
			"spate_subscriber_pending_entries": 0,
			"spate_subscriber_lag_entries":     0,
		} {
			if got := metric(t, reg, name, stream); got != want {
				return fmt.Sprintf("%s = %v, want %v", name, got, want)
			}
		}
		return ""
	})
}

// stopMidBatch runs member a of group g on stream, reading up to 10
// entries at once, and stops it while its handler holds the first entry;
// the handler then returns err.
func stopMidBatch(t *testing.T, rdb *redis.Client, stream string, err error) {
	t.Helper()
	got, release := make(chan struct{}), make(chan struct{})
	a, nerr := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{stream}, Consumer: "a", Count: 10},
		func(context.Context, subscribe.Message) error {
			close(got)
			<-release
			return err
		})
	if nerr != nil {
		t.Fatal(nerr)
	}
	ctx, cancel := context.WithCancel(t.Context())
	wait := start(t, ctx, a)
	<-got
	cancel()
	close(release)
	wait()
}

func TestTakesOverEntriesOfAStoppedMember(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	stream := spatetest.KeyPrefix(t) + "orders"
	want := publish(t, rdb, stream, 0, 30)

	// Member A takes 10 entries, fails the first only after it was told to
	// stop, and so stops without acknowledging any.
	stopMidBatch(t, rdb, stream, errors.New("member a went away"))
	if p := pending(t, rdb, stream, "g"); p != 10 {
		t.Fatalf("after member a stopped: %d pending, want 10", p)
	}

	// Member B reads the 20 others and takes over a's 10 once idle.
	var rec recorder
	b, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{stream}, Consumer: "b", ClaimIdle: 100 * time.Millisecond}, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	start(t, t.Context(), b)
	spatetest.Eventually(t, waitFor, func() string { return rec.settled(t, rdb, stream, "g", want) })
	takenOver := map[string]bool{}
	for _, id := range want[:10] {
		takenOver[id] = true
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, m := range rec.msgs {
		// a's handler saw the first of its 10 only: the others were
		// given back undelivered.
		if w := map[bool]int64{true: 2, false: 1}[m.ID == want[0]]; m.Deliveries != w {
			t.Errorf("entry %s (taken over %v): %d deliveries, want %d", m.ID, takenOver[m.ID], m.Deliveries, w)
		}
	}
}

// A member stopped in the middle of a batch gives back the entries it did
// not hand to its handler: another member, with MaxDeliveries 1, handles
// them rather than dead-letter them as delivered once already.
func TestStopMidBatchDoesNotSpendDeliveries(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	stream := spatetest.KeyPrefix(t) + "orders"
	ids := publish(t, rdb, stream, 0, 3)
	stopMidBatch(t, rdb, stream, nil) // the first is handled
	var rec recorder
	b, err := subscribe.New(rdb, subscribe.Config{
		Group: "g", Streams: []string{stream}, Consumer: "b", ClaimIdle: 50 * time.Millisecond, MaxDeliveries: 1,
	}, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	start(t, t.Context(), b)
	eventuallyNonePending(t, rdb, stream, "g")
	dead, err := rdb.XRange(t.Context(), subscribe.DLQStream(stream), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dead {
		t.Errorf("dead-lettered %v (%v), though no handler saw it", d.Values[subscribe.FieldDLQID], d.Values[subscribe.FieldDLQReason])
	}
	if n := rec.missing(ids[1:]); n != 0 {
		t.Errorf("%d of the 2 entries a left unhandled never reached b's handler", n)
	}
}

// Subscribers of one process left to name themselves are distinct
// members: each holds what it read. One Subscriber runs once at a time.
func TestDefaultNamesAreDistinctMembers(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	stream := spatetest.KeyPrefix(t) + "orders"
	publish(t, rdb, stream, 0, 2)
	release := make(chan struct{})
	var subs []*subscribe.Subscriber
	for range 2 {
		got := make(chan struct{})
		s, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{stream}, Count: 1},
			func(ctx context.Context, m subscribe.Message) error {
				close(got)
				<-release
				return nil
			})
		if err != nil {
			t.Fatal(err)
		}
		start(t, t.Context(), s)
		<-got // it holds an entry
		subs = append(subs, s)
	}
	defer close(release)
	cs, err := rdb.XInfoConsumers(t.Context(), stream, "g").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].Pending != 1 || cs[1].Pending != 1 {
		t.Errorf("members %+v, want two holding an entry each", cs)
	}
	ended, end := context.WithCancel(t.Context())
	end() // a Run that is not refused returns at once
	if err := subs[0].Run(ended); err == nil || !strings.Contains(err.Error(), "running already") {
		t.Errorf("a second Run of a running subscriber: %v, want an error", err)
	}
}

// deliveryCount returns the delivery count of the pending entry id of
// group g.
func deliveryCount(t *testing.T, rdb *redis.Client, stream, id string) int64 {
	t.Helper()
	p, err := rdb.XPendingExt(t.Context(), &redis.XPendingExtArgs{Stream: stream, Group: "g", Start: id, End: id, Count: 1}).Result()
	if err != nil || len(p) != 1 {
		t.Fatalf("xpending %s %s: %v, %v", stream, id, p, err)
	}
	return p[0].RetryCount
}

// stopAfterClaim is a go-redis hook that calls stop once an XAUTOCLAIM
// has returned entries: the stop arrives while the claim's reply is on its
// way.
type stopAfterClaim struct {
	stop  context.CancelFunc
	fired atomic.Bool
}

func (h *stopAfterClaim) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *stopAfterClaim) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *stopAfterClaim) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if c, ok := cmd.(*redis.XAutoClaimWithDeletedCmd); ok {
			if msgs, _, _ := c.Val(); len(msgs) > 0 && h.fired.CompareAndSwap(false, true) {
				h.stop()
			}
		}
		return err
	}
}

// A member stopped just after it claimed entries gives them back with the
// counts they had: the claim was no delivery to a handler.
func TestStopDuringAClaimDoesNotSpendDeliveries(t *testing.T) {
	t.Parallel()
	url := spatetest.Redis(t)
	rdb := connect(t, url)
	stream := spatetest.KeyPrefix(t) + "orders"
	ids := publish(t, rdb, stream, 0, 1)
	readWithoutAck(t, rdb, stream, "g", "crashed", 1)
	// Idle for an hour, delivered once.
	if err := rdb.Do(t.Context(), "XCLAIM", stream, "g", "crashed", 0, ids[0], "IDLE", time.Hour.Milliseconds(), "JUSTID").Err(); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	hooked := connect(t, url)
	hooked.AddHook(&stopAfterClaim{stop: stop})
	var handled atomic.Int64
	a, err := subscribe.New(hooked, subscribe.Config{Group: "g", Streams: []string{stream}, Consumer: "a", ClaimIdle: time.Minute},
		func(context.Context, subscribe.Message) error { handled.Add(1); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if handled.Load() != 0 {
		t.Fatal("the handler saw the entry: the stop came after the claim was handled")
	}
	if n := deliveryCount(t, rdb, stream, ids[0]); n != 1 {
		t.Errorf("after a stop just after a claim: delivery count %d, want 1", n)
	}
}

// A handler that outlives DrainTimeout makes the dead-lettering or the
// XACK after it fail; the entries of the read it did not reach, in its
// stream and in the others, are still given back uncounted.
func TestDrainTimeoutGivesBackTheRestOfTheRead(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	for _, tc := range []struct {
		name string
		err  error // the handler's, once its context ended
	}{
		{"dead-letter fails", errors.New("gave up")}, // MaxDeliveries 1: dead-lettered
		{"ack fails", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := spatetest.KeyPrefix(t)
			s1, s2 := p+"{x}a", p+"{x}b"
			ids1, ids2 := publish(t, rdb, s1, 0, 2), publish(t, rdb, s2, 0, 1)
			got := make(chan struct{})
			var calls atomic.Int64
			a, err := subscribe.New(rdb, subscribe.Config{
				Group: "g", Streams: []string{s1, s2}, Consumer: "a", MaxDeliveries: 1, DrainTimeout: time.Nanosecond,
			}, func(ctx context.Context, m subscribe.Message) error {
				if calls.Add(1) == 1 {
					close(got)
				}
				<-ctx.Done()
				return tc.err
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, stop := context.WithCancel(t.Context())
			wait := start(t, ctx, a)
			<-got
			stop()
			wait()
			if n := calls.Load(); n != 1 {
				t.Fatalf("handler called %d times, want once", n)
			}
			for _, e := range []struct{ stream, id string }{{s1, ids1[1]}, {s2, ids2[0]}} {
				if n := deliveryCount(t, rdb, e.stream, e.id); n != 0 {
					t.Errorf("entry %s of %s, which no handler saw: delivery count %d, want 0", e.id, e.stream, n)
				}
			}
		})
	}
}

func TestDeadLetters(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	stream := spatetest.KeyPrefix(t) + "orders"
	ids := publish(t, rdb, stream, 0, 3) // n=0 fails, n=1 is poison, n=2 succeeds
	reg := prometheus.NewRegistry()
	rec := recorder{fail: func(m subscribe.Message) error {
		switch m.Values["n"] {
		case "0":
			return fmt.Errorf("attempt %d: boom", m.Deliveries)
		case "1":
			return fmt.Errorf("cannot decode: %w", subscribe.ErrPoison)
		}
		return nil
	}}
	sub, err := subscribe.New(rdb, subscribe.Config{
		Group: "g", Streams: []string{stream}, Consumer: "c", ClaimIdle: 50 * time.Millisecond, MaxDeliveries: 3, Metrics: reg,
	}, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	start(t, t.Context(), sub)

	dlq := subscribe.DLQStream(stream)
	var dead []redis.XMessage
	spatetest.Eventually(t, waitFor, func() string {
		var err error
		if dead, err = rdb.XRange(t.Context(), dlq, "-", "+").Result(); err != nil {
			return err.Error()
		}
		if len(dead) < 2 {
			return fmt.Sprintf("%d entries in %s, want 2", len(dead), dlq)
		}
		if p := pending(t, rdb, stream, "g"); p != 0 {
			return fmt.Sprintf("%d pending", p)
		}
		return ""
	})
	if len(dead) != 2 {
		t.Fatalf("%d entries in %s, want 2", len(dead), dlq)
	}
	for i, want := range []map[string]any{
		{"n": "1", subscribe.FieldDLQReason: "cannot decode: poison message", subscribe.FieldDLQDeliveries: "1"},
		{"n": "0", subscribe.FieldDLQReason: "attempt 3: boom", subscribe.FieldDLQDeliveries: "3"},
	} {
		id := ids[0]
		if want["n"] == "1" {
			id = ids[1]
		}
		want[subscribe.FieldDLQStream] = stream
		want[subscribe.FieldDLQID] = id
		want[subscribe.FieldDLQGroup] = "g"
		want[subscribe.FieldDLQConsumer] = "c"
		got := dead[i].Values
		if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(got[subscribe.FieldDLQTime])); err != nil {
			t.Errorf("dead letter %d: %s: %v", i, subscribe.FieldDLQTime, err)
		}
		delete(got, subscribe.FieldDLQTime)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("dead letter %d (-want +got):\n%s", i, diff)
		}
	}
	if got, want := rec.ids(), []string{ids[0], ids[1], ids[2], ids[0], ids[0]}; !cmp.Equal(got, want) {
		t.Errorf("handled %v, want %v", got, want)
	}
	for name, want := range map[string]float64{
		"spate_subscriber_messages_total":       1,
		"spate_subscriber_handler_errors_total": 4,
		"spate_subscriber_dead_letters_total":   2,
		"spate_subscriber_claimed_total":        2,
	} {
		if got := metric(t, reg, name, stream); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// readWithoutAck delivers count new entries to consumer, as a member that
// crashes before acknowledging them would.
func readWithoutAck(t *testing.T, rdb *redis.Client, stream, group, consumer string, count int64) {
	t.Helper()
	if err := rdb.XGroupCreateMkStream(t.Context(), stream, group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	res, err := rdb.XReadGroup(t.Context(), &redis.XReadGroupArgs{
		Group: group, Consumer: consumer, Streams: []string{stream, ">"}, Count: count, Block: -1,
	}).Result()
	if err != nil || len(res) != 1 || len(res[0].Messages) != int(count) {
		t.Fatalf("xreadgroup: %v, %v", res, err)
	}
}

func TestDropsPendingEntriesDeletedFromTheStream(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	stream := spatetest.KeyPrefix(t) + "orders"
	ids := publish(t, rdb, stream, 0, 3)
	readWithoutAck(t, rdb, stream, "g", "crashed", 3)
	if err := rdb.XDel(t.Context(), stream, ids[1]).Err(); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	var rec recorder
	sub, err := subscribe.New(rdb, subscribe.Config{
		Group: "g", Streams: []string{stream}, ClaimIdle: 50 * time.Millisecond, Metrics: reg,
	}, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	start(t, t.Context(), sub)
	eventuallyNonePending(t, rdb, stream, "g")
	if got, want := rec.ids(), []string{ids[0], ids[2]}; !cmp.Equal(got, want) {
		t.Errorf("handled %v, want %v", got, want)
	}
	if got := metric(t, reg, "spate_subscriber_deleted_total", stream); got != 1 {
		t.Errorf("spate_subscriber_deleted_total = %v, want 1", got)
	}
}

func TestRecoversFromRedisRestartAndKilledConnections(t *testing.T) {
	t.Parallel()
	srv, err := throwaway.StartRedis(t.Context(), throwaway.RedisConfig{AppendOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	rdb := connect(t, srv.URL())
	stream := "orders"
	var rec recorder
	logs := logBuffer{t: t}
	sub, err := subscribe.New(connect(t, srv.URL()), subscribe.Config{
		Group: "g", Streams: []string{stream}, ClaimIdle: 500 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	}, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	start(t, t.Context(), sub)
	handled := func(want []string) {
		t.Helper()
		spatetest.Eventually(t, waitFor, func() string {
			if n := rec.missing(want); n > 0 {
				return fmt.Sprintf("%d of %d not handled", n, len(want))
			}
			return ""
		})
	}

	handled(publish(t, rdb, stream, 0, 20))
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	spatetest.Eventually(t, waitFor, func() string {
		if !logs.contains("level=WARN msg=retrying") {
			return "the subscriber did not notice that Redis is down"
		}
		return ""
	})
	if err := srv.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	handled(publish(t, rdb, stream, 20, 40))

	// Kill the subscriber's connections while it consumes.
	after := publish(t, rdb, stream, 40, 140)
	if err := rdb.ClientKillByFilter(t.Context(), "TYPE", "normal").Err(); err != nil {
		t.Fatal(err)
	}
	after = append(after, publish(t, rdb, stream, 140, 160)...)
	if err := rdb.ClientKillByFilter(t.Context(), "TYPE", "normal").Err(); err != nil {
		t.Fatal(err)
	}
	after = append(after, publish(t, rdb, stream, 160, 180)...)
	handled(after)
	spatetest.Eventually(t, waitFor, func() string {
		if p, err := rdb.XPending(t.Context(), stream, "g").Result(); err != nil || p.Count != 0 {
			return fmt.Sprintf("pending: %v, %v", p, err)
		}
		return ""
	})
}

// TestCreatesTheGroupAgainWhenTheStreamIsDeleted: the group comes back,
// and takes every entry of the new stream, even with StartID "$" (which is
// only for the group's first creation).
func TestCreatesTheGroupAgainWhenTheStreamIsDeleted(t *testing.T) {
	t.Parallel()
	for _, startID := range []string{"0", "$"} {
		t.Run("StartID="+startID, func(t *testing.T) {
			t.Parallel()
			rdb := connect(t, spatetest.Redis(t))
			stream := spatetest.KeyPrefix(t) + "orders"
			var rec recorder
			sub, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{stream}, StartID: startID, Block: 50 * time.Millisecond}, rec.handle)
			if err != nil {
				t.Fatal(err)
			}
			start(t, t.Context(), sub)
			spatetest.Eventually(t, waitFor, func() string {
				if groups, err := rdb.XInfoGroups(t.Context(), stream).Result(); err != nil || len(groups) != 1 {
					return fmt.Sprintf("groups %v, %v: want the subscriber's", groups, err)
				}
				return ""
			})
			want := publish(t, rdb, stream, 0, 1)
			spatetest.Eventually(t, waitFor, func() string {
				if n := rec.missing(want); n > 0 {
					return "entry not handled"
				}
				return ""
			})
			// As after a restart of a Redis without persistence: the stream,
			// and its group, are gone.
			if err := rdb.Del(t.Context(), stream).Err(); err != nil {
				t.Fatal(err)
			}
			want = append(want, publish(t, rdb, stream, 1, 3)...)
			spatetest.Eventually(t, waitFor, func() string { return rec.settled(t, rdb, stream, "g", want) })
		})
	}
}

// logBuffer keeps what is logged, and passes it on to the test's output.
type logBuffer struct {
	t   *testing.T
	mu  sync.Mutex
	buf strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	return l.t.Output().Write(p)
}

func (l *logBuffer) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.buf.String(), s)
}

func TestStopLetsTheHandlerInFlightFinish(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	stream := spatetest.KeyPrefix(t) + "orders"
	ids := publish(t, rdb, stream, 0, 2)
	got, release := make(chan struct{}), make(chan struct{})
	var handlerCtxErr error
	sub, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{stream}, Consumer: "c", Count: 1},
		func(ctx context.Context, m subscribe.Message) error {
			close(got)
			<-release
			handlerCtxErr = ctx.Err()
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	wait := start(t, ctx, sub)
	<-got
	cancel()
	close(release)
	wait()
	if handlerCtxErr != nil {
		t.Errorf("the handler in flight saw its context end: %v", handlerCtxErr)
	}
	// The first entry was acknowledged; the second was never read.
	p, err := rdb.XPending(t.Context(), stream, "g").Result()
	if err != nil || p.Count != 0 {
		t.Errorf("pending: %v, %v; want none", p, err)
	}
	info, err := rdb.XInfoGroups(t.Context(), stream).Result()
	if err != nil || len(info) != 1 || info[0].LastDeliveredID != ids[0] {
		t.Errorf("groups: %+v, %v; want g, last delivered %s", info, err, ids[0])
	}
}

// TestSubMillisecondBlockStillEnds: Redis reads BLOCK in milliseconds, and
// BLOCK 0 waits for ever, so a Block under 1 ms must not become 0: a stop
// would then wait for the client's read timeout (about 10 s) instead of the
// next read's end.
func TestSubMillisecondBlockStillEnds(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	stream := spatetest.KeyPrefix(t) + "orders"
	var rec recorder
	sub, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{stream}, Block: 500 * time.Microsecond}, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx) }()
	want := publish(t, rdb, stream, 0, 1)
	spatetest.Eventually(t, waitFor, func() string {
		if rec.missing(want) > 0 {
			return "entry not handled"
		}
		return ""
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still running 5 s after its context ended: an idle read is blocking for ever")
	}
}

func TestStopWhileIdleLeavesTheGroup(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	stream := spatetest.KeyPrefix(t) + "orders"
	var rec recorder
	sub, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{stream}, Consumer: "c"}, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	wait := start(t, ctx, sub)
	consumers := func() []string {
		cs, err := rdb.XInfoConsumers(t.Context(), stream, "g").Result()
		if err != nil {
			return []string{err.Error()}
		}
		var names []string
		for _, c := range cs {
			names = append(names, c.Name)
		}
		return names
	}
	// Redis 7.0 adds a consumer to the group when it first gets an entry.
	publish(t, rdb, stream, 0, 1)
	spatetest.Eventually(t, waitFor, func() string {
		if len(rec.ids()) != 1 || pending(t, rdb, stream, "g") != 0 {
			return "entry not handled yet"
		}
		if got := consumers(); !cmp.Equal(got, []string{"c"}) {
			return fmt.Sprintf("consumers %v, want [c]", got)
		}
		return ""
	})
	cancel()
	wait() // fails the test unless Run returns nil in time
	if got := consumers(); len(got) != 0 {
		t.Errorf("after stop: consumers %v, want none", got)
	}
}

func TestRunFailsOnAKeyThatIsNotAStream(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	key := spatetest.KeyPrefix(t) + "orders"
	if err := rdb.Set(t.Context(), key, "a string", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var rec recorder
	sub, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{key}}, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	err = sub.Run(t.Context())
	if !redis.HasErrorPrefix(err, "WRONGTYPE") {
		t.Errorf("Run: got %v, want a WRONGTYPE error", err)
	}
}

// A stream key that becomes another type while Run runs ends Run too:
// the claim of idle entries meets it first, and retrying cannot cure it.
// crossSlot answers every XREADGROUP as Redis Cluster does when its
// streams are in different hash slots.
type crossSlot struct{}

func (crossSlot) DialHook(next redis.DialHook) redis.DialHook { return next }

func (crossSlot) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (crossSlot) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "xreadgroup" {
			return next(ctx, cmd)
		}
		cmd.SetErr(crossSlotErr{})
		return cmd.Err()
	}
}

type crossSlotErr struct{}

func (crossSlotErr) Error() string { return "CROSSSLOT Keys in request don't hash to the same slot" }
func (crossSlotErr) RedisError()   {}

// Streams that Redis Cluster cannot read together stop Run with a hint,
// rather than a retry for ever.
func TestRunFailsOnStreamsInDifferentSlots(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	rdb.AddHook(crossSlot{})
	p := spatetest.KeyPrefix(t)
	s, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{p + "eu", p + "us"}},
		func(context.Context, subscribe.Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitFor) // a Run that retries ends then, without error
	defer cancel()
	if err := s.Run(ctx); err == nil || !strings.Contains(err.Error(), "share a hash slot") {
		t.Errorf("Run: %v, want an error saying the streams must share a hash slot", err)
	}
}

func TestRunFailsOnAStreamThatBecomesAnotherType(t *testing.T) {
	t.Parallel()
	rdb := connect(t, spatetest.Redis(t))
	stream := spatetest.KeyPrefix(t) + "orders"
	var rec recorder
	sub, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{stream}, ClaimIdle: 100 * time.Millisecond}, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sub.Run(t.Context()) }()
	want := publish(t, rdb, stream, 0, 1)
	spatetest.Eventually(t, waitFor, func() string { return rec.settled(t, rdb, stream, "g", want) })
	if err := rdb.Set(t.Context(), stream, "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !redis.HasErrorPrefix(err, "WRONGTYPE") {
			t.Fatalf("Run = %v, want a WRONGTYPE error", err)
		}
	case <-time.After(waitFor):
		t.Fatalf("Run still running %s after its stream key became a string", waitFor)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{})
	defer rdb.Close()
	h := func(context.Context, subscribe.Message) error { return nil }
	for _, tc := range []struct {
		name string
		cfg  subscribe.Config
		h    subscribe.Handler
		want string
	}{
		{"no group", subscribe.Config{Streams: []string{"s"}}, h, "Group is required"},
		{"no streams", subscribe.Config{Group: "g"}, h, "Streams is required"},
		{"empty stream", subscribe.Config{Group: "g", Streams: []string{""}}, h, "empty key"},
		{"no handler", subscribe.Config{Group: "g", Streams: []string{"s"}}, nil, "handler is required"},
		{"bad start", subscribe.Config{Group: "g", Streams: []string{"s"}, StartID: "latest"}, h, `StartID "latest"`},
		{"negative", subscribe.Config{Group: "g", Streams: []string{"s"}, Block: -1}, h, "must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := subscribe.New(rdb, tc.cfg, tc.h)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	for _, start := range []string{"0", "$", "1700000000000", "1700000000000-3"} {
		if _, err := subscribe.New(rdb, subscribe.Config{Group: "g", Streams: []string{"s"}, StartID: start}, h); err != nil {
			t.Errorf("StartID %q: %v", start, err)
		}
	}
}

func TestSubscribersShareARegistry(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	h := func(context.Context, subscribe.Message) error { return nil }
	for i := range 2 {
		if _, err := subscribe.New(redis.NewClient(&redis.Options{}), subscribe.Config{Group: "g" + strconv.Itoa(i), Streams: []string{"s"}, Metrics: reg}, h); err != nil {
			t.Fatalf("subscriber %d: %v", i, err)
		}
	}
}
