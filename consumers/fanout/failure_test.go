package fanout_test

// Exactly once under faults: a writer killed in the middle of a batch,
// Redis killed and restarted from its append-only file, Redis paused for
// longer than the client's timeouts. Each test publishes the same shop
// events and ends with the same check (checkExactlyOnce): every event in
// its stream once, the entries of each partition's subject in offset
// order, and each partition's stored offset at its end.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
	"github.com/spate-io/spate/throwaway"
)

const (
	failureTopic      = "events"
	failurePartitions = 4
	// failureEvents is enough for every fault to land mid-stream.
	failureEvents = 20_000
	// failureOrders is the number of subjects; each has 20 events.
	failureOrders = 1_000
	// failureGroup is the consumer group, and the writer's.
	failureGroup = "fanout"
	// failureTimeout bounds each wait for progress, and each child.
	failureTimeout = time.Minute
)

// failureMix returns n events, the same on every call: event i is about
// order i mod failureOrders and, by the block of failureOrders it is in,
// places it, captures a payment for it or cancels it. So every order has
// entries in each of the three streams of the default route, and its
// events are spread over the whole run.
func failureMix(t *testing.T, n int) []*spatev1.Event {
	t.Helper()
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	evs := make([]*spatev1.Event, n)
	for i := range n {
		order := fmt.Sprint("o-", i%failureOrders)
		var m proto.Message
		var typ string
		switch i / failureOrders % 3 {
		case 0:
			m, typ = &shopv1.OrderPlaced{OrderId: order, CustomerId: fmt.Sprint("c-", i%97), AmountCents: int64(i), Currency: "EUR"}, "shop.order.placed.v1"
		case 1:
			m, typ = &shopv1.PaymentCaptured{PaymentId: fmt.Sprint("pay-", i), OrderId: order, AmountCents: int64(i), Currency: "EUR"}, "shop.payment.captured.v1"
		default:
			m, typ = &shopv1.OrderCancelled{OrderId: order, Reason: "changed mind"}, "shop.order.cancelled.v1"
		}
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		evs[i] = &spatev1.Event{Id: fmt.Sprint("e-", i), Source: "/test", Type: typ, Subject: order,
			Time: timestamppb.New(t0.Add(time.Duration(i) * time.Millisecond)), Datacontenttype: schemas.ContentTypeProtobuf, Data: data}
	}
	return evs
}

// newProducer returns a client that publishes to brokers, closed at cleanup.
// Records are keyed by subject, so an order's events share a partition.
func newProducer(t *testing.T, brokers []string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, producers.Opts()...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// publish writes evs in order, 500 a request, and returns their receipts.
func publish(t *testing.T, cl *kgo.Client, evs []*spatev1.Event) []*spatev1.Receipt {
	t.Helper()
	var rs []*spatev1.Receipt
	for len(evs) > 0 {
		chunk := evs[:min(500, len(evs))]
		r, err := producers.Publish(context.Background(), cl, failureTopic, chunk)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r...)
		evs = evs[len(chunk):]
	}
	return rs
}

// newFailureGroup returns a consumer group of the failure tests: small
// polls, so that a partition's events come in many batches, and quick
// retries.
func newFailureGroup(h consumers.Handler, brokers []string, log *slog.Logger, reg prometheus.Registerer, opts ...kgo.Opt) (*consumers.Group, error) {
	return consumers.New(h, consumers.Config{
		Group:          failureGroup,
		Topics:         []string{failureTopic},
		MaxPollRecords: 500,
		MaxBackoff:     200 * time.Millisecond,
		Logger:         log,
		Metrics:        reg,
	}, append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
}

// runGroup runs g until the returned stop is called or the test ends.
func runGroup(t *testing.T, g *consumers.Group) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("group: Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// stored returns how many events w has stored: the sum of its offsets,
// as the topic holds nothing else.
func stored(ctx context.Context, w *fanout.Writer) (int64, error) {
	offs, err := w.Offsets(ctx, failureTopic, []int32{0, 1, 2, 3})
	var n int64
	for _, o := range offs {
		n += o
	}
	return n, err
}

// waitStored waits until w has stored at least n events.
func waitStored(t *testing.T, w *fanout.Writer, n int64) {
	t.Helper()
	spatetest.Eventually(t, failureTimeout, func() string {
		got, err := stored(context.Background(), w)
		switch {
		case err != nil:
			return fmt.Sprintf("stored offsets: %v", err)
		case got < n:
			return fmt.Sprintf("stored %d events, want at least %d", got, n)
		}
		return ""
	})
}

// checkConsistent fails unless the streams under prefix hold, for each
// partition, exactly the events below the offset w stored for it, once
// each, each in the stream of its type, the entries of each
// partition's subject in offset order; it returns the sum of the offsets.
// Whatever happened, a script's entries and the offset it stored are in
// Redis together or not at all.
func checkConsistent(t *testing.T, w *fanout.Writer, rdb *redis.Client, prefix string, evs []*spatev1.Event, rs []*spatev1.Receipt) int64 {
	t.Helper()
	offs, err := w.Offsets(context.Background(), failureTopic, []int32{0, 1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	byID := make(map[string]int, len(evs))
	for i, ev := range evs {
		byID[ev.Id] = i
	}
	type subject struct {
		partition int32
		subject   string
	}
	seen := make(map[string]int, len(evs))
	var unknown, misrouted, disordered []string
	for _, stream := range keys(t, rdb, prefix) {
		last := map[subject]int64{}
		for _, id := range ids(t, rdb, stream) {
			seen[id]++
			i, ok := byID[id]
			if !ok {
				unknown = append(unknown, fmt.Sprintf("%q in %s", id, stream))
				continue
			}
			if want := w.Stream(evs[i].Type); stream != want {
				misrouted = append(misrouted, fmt.Sprintf("%s in %s, want %s", id, stream, want))
			}
			k := subject{rs[i].Partition, evs[i].Subject}
			if prev, ok := last[k]; ok && rs[i].Offset < prev { // equal: a duplicate, reported below
				disordered = append(disordered, fmt.Sprintf("%s: offset %d after %d in %s", id, rs[i].Offset, prev, stream))
			}
			last[k] = max(last[k], rs[i].Offset)
		}
	}
	var missing, duplicated, beyond []string
	for i, ev := range evs {
		below := rs[i].Offset < offs[rs[i].Partition]
		switch n := seen[ev.Id]; {
		case below && n == 0:
			missing = append(missing, fmt.Sprintf("%s (%d@%d)", ev.Id, rs[i].Partition, rs[i].Offset))
		case n > 1:
			duplicated = append(duplicated, fmt.Sprintf("%s %d times", ev.Id, n))
		case !below && n > 0:
			beyond = append(beyond, fmt.Sprintf("%s (%d@%d)", ev.Id, rs[i].Partition, rs[i].Offset))
		}
	}
	for _, bad := range []struct {
		what string
		list []string
	}{
		{"unknown ids", unknown},
		{"events in the wrong stream", misrouted},
		{"entries out of offset order within a partition's subject", disordered},
		{"events below the stored offset missing", missing},
		{"events added more than once", duplicated},
		{"events at or above the stored offset added (offset not stored with them)", beyond},
	} {
		if len(bad.list) > 0 {
			t.Errorf("%d %s, e.g. %s; want none (stored offsets %v)", len(bad.list), bad.what, strings.Join(bad.list[:min(5, len(bad.list))], ", "), offs)
		}
	}
	var total int64
	for _, o := range offs {
		total += o
	}
	return total
}

// checkExactlyOnce checks that every event in evs, published with
// receipts rs, is in its stream under prefix exactly once, and that each
// partition's stored offset is past its last record.
func checkExactlyOnce(t *testing.T, w *fanout.Writer, rdb *redis.Client, prefix string, evs []*spatev1.Event, rs []*spatev1.Receipt) {
	t.Helper()
	checkConsistent(t, w, rdb, prefix, evs, rs)
	want := map[string]int64{}
	end := map[int32]int64{}
	for i, ev := range evs {
		want[w.Stream(ev.Type)]++
		end[rs[i].Partition] = max(end[rs[i].Partition], rs[i].Offset+1)
	}
	for stream, n := range want {
		if got := rdb.XLen(context.Background(), stream).Val(); got != n {
			t.Errorf("stream %s: %d entries, want %d", stream, got, n)
		}
	}
	if got := keys(t, rdb, prefix); len(got) != len(want) {
		t.Errorf("streams %q, want the %d of the events' types", got, len(want))
	}
	offs, err := w.Offsets(context.Background(), failureTopic, []int32{0, 1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(end) != failurePartitions || !maps.Equal(offs, end) {
		t.Errorf("stored offsets %v, want each partition's end %v", offs, end)
	}
}

// childEnv, when set in the environment of the test binary, makes it a
// writer of TestFanoutKilledMidBatch instead of running tests; its value
// is the child's spec as JSON.
const childEnv = "SPATE_FANOUT_FAILURE_CHILD"

// killedMarker is what a child prints before it kills itself.
const killedMarker = "fanout child: SIGKILL at mid-batch point"

// childSpec tells a child process what to consume and when to stop.
type childSpec struct {
	Brokers []string
	Redis   string
	Prefix  string
	// Events: the child exits once this many events are stored.
	Events int64
	// KillAt: the child SIGKILLs itself at this mid-batch point, after
	// the script of a batch's chunk returned and before the next chunk's
	// ran. Zero: never.
	KillAt int64
}

// runChild returns unless this process is a child of a failure test; a
// child consumes as its spec says and exits.
func runChild() {
	spec, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	var c childSpec
	err := json.Unmarshal([]byte(spec), &c)
	if err == nil {
		err = c.run()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fanout child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// run consumes with a writer of small chunks until c.Events are stored,
// or until it kills itself.
func (c childSpec) run() error {
	ctx := context.Background()
	opts, err := redis.ParseURL(c.Redis)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	// Chunks of 10 entries: a batch takes many script calls.
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Group: failureGroup, Prefix: c.Prefix, ChunkSize: 10})
	if err != nil {
		return err
	}
	var points atomic.Int64
	fanout.SetHook(w, func(string) {
		if n := points.Add(1); n == c.KillAt {
			fmt.Println(killedMarker, n) // os.Stdout is not buffered
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	})
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Short sessions, so that the next child need not wait long for the
	// group to drop a member that was killed.
	g, err := newFailureGroup(w, c.Brokers, log, nil, kgo.SessionTimeout(2*time.Second), kgo.HeartbeatInterval(200*time.Millisecond))
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- g.Run(rctx) }()

	var waitErr error
	deadline := time.Now().Add(failureTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := stored(ctx, w)
		if err == nil && n >= c.Events {
			break
		}
		if time.Now().After(deadline) {
			waitErr = fmt.Errorf("stored %d of %d events after %v (last error: %v)", n, c.Events, failureTimeout, err)
			break
		}
		<-tick.C
	}
	cancel()
	return errors.Join(waitErr, <-done)
}

// startChild runs this test binary as a child with spec, waits for it to
// exit, and returns its output and exit error.
func startChild(t *testing.T, spec childSpec) (string, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), failureTimeout+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out // the same writer: written by one goroutine at a time
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("child did not exit in time (%v); output:\n%s", err, out.String())
	}
	return out.String(), err
}

// killedBySIGKILL reports whether err is the exit of a process killed by SIGKILL.
func killedBySIGKILL(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func TestFanoutKilledMidBatch(t *testing.T) {
	t.Parallel()
	// kfake of our own: sessions as short as the children's, so that the
	// second child does not wait the default 45 s for the first to expire.
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(failurePartitions, failureTopic),
		kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	brokers := kc.ListenAddrs()
	evs := failureMix(t, failureEvents)
	rs := publish(t, newProducer(t, brokers), evs)

	redisURL := spatetest.Redis(t)
	prefix := spatetest.KeyPrefix(t)
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Group: failureGroup, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}

	// About 20000/10 script calls in all, most of them mid-batch: die at
	// the 600th of those.
	spec := childSpec{Brokers: brokers, Redis: redisURL, Prefix: prefix, Events: failureEvents, KillAt: 600}
	out, err := startChild(t, spec)
	if !killedBySIGKILL(err) || !strings.Contains(out, killedMarker) {
		t.Fatalf("first child: exit %v, want it to kill itself at mid-batch point %d; output:\n%s", err, spec.KillAt, out)
	}
	n := checkConsistent(t, w, rdb, prefix, evs, rs)
	if n == 0 || n >= failureEvents {
		t.Fatalf("first child stored %d of %d events before it was killed, want some but not all", n, failureEvents)
	}
	t.Logf("first child killed mid-batch with %d of %d events stored", n, failureEvents)
	if t.Failed() {
		t.Fatalf("first child's output:\n%s", out)
	}

	spec.KillAt = 0
	if out, err := startChild(t, spec); err != nil {
		t.Fatalf("second child: %v; output:\n%s", err, out)
	}
	checkExactlyOnce(t, w, rdb, prefix, evs, rs)
}

// consumeThroughFault runs a writer on a client of srv with opts, and its
// group, while it publishes the events in two halves. Once a quarter of
// them are stored it calls start, publishes the second half, so that the
// group has work while the fault lasts, and calls end, which ends the
// fault. Then it waits for every event to be stored, checks that they
// were exactly once, and that at least one batch failed and was retried.
func consumeThroughFault(t *testing.T, srv *throwaway.Redis, opts *redis.Options, start, end func(t *testing.T, reg *prometheus.Registry)) {
	t.Helper()
	brokers := spatetest.Kafka(t, failurePartitions, failureTopic)
	evs := failureMix(t, failureEvents)
	prefix := spatetest.KeyPrefix(t)

	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Group: failureGroup, Prefix: prefix, ChunkSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	g, err := newFailureGroup(w, brokers, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	stop := runGroup(t, g)

	producer := newProducer(t, brokers)
	half := len(evs) / 2
	rs := publish(t, producer, evs[:half])
	waitStored(t, w, failureEvents/4)
	start(t, reg)
	rs = append(rs, publish(t, producer, evs[half:])...)
	end(t, reg)
	waitStored(t, w, failureEvents)
	stop()

	// A client of its own, with the default timeouts.
	check := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { check.Close() })
	cw, err := fanout.New(check, schemas.Builtin(), fanout.Config{Group: failureGroup, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, cw, check, prefix, evs, rs)
	if n := spatetest.CounterTotal(t, reg, "spate_consumer_retries_total"); n < 1 {
		t.Errorf("%v batch applications retried, want at least one: the fault proved nothing", n)
	}
}

func TestRedisKilledAndRestartedWithAOF(t *testing.T) {
	t.Parallel()
	srv := spatetest.OwnRedis(t, throwaway.RedisConfig{AppendOnly: true})
	opts, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	consumeThroughFault(t, srv, opts, func(t *testing.T, _ *prometheus.Registry) {
		if err := srv.Kill(); err != nil {
			t.Fatal(err)
		}
	}, func(t *testing.T, reg *prometheus.Registry) {
		// Keep it down until the group failed at least once: go-redis
		// reconnects on its own, and a quick restart could hide the kill.
		spatetest.Eventually(t, failureTimeout, func() string {
			if n := spatetest.CounterTotal(t, reg, "spate_consumer_retries_total"); n < 1 {
				return "no batch application failed while Redis was down"
			}
			return ""
		})
		if err := srv.Restart(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRedisPausedFiveSeconds(t *testing.T) {
	t.Parallel()
	srv := spatetest.OwnRedis(t, throwaway.RedisConfig{})
	opts, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	// Timeouts well under the pause, and one resend: a script call gives
	// up after about 2 s, so a batch fails at least once while Redis is
	// paused, and Redis finds the abandoned calls in its sockets when it
	// resumes.
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout, opts.MaxRetries = time.Second, time.Second, time.Second, 1
	var pause *time.Timer
	consumeThroughFault(t, srv, opts, func(t *testing.T, _ *prometheus.Registry) {
		if err := srv.Pause(); err != nil {
			t.Fatal(err)
		}
		pause = time.NewTimer(5 * time.Second) // the fault's length
	}, func(t *testing.T, _ *prometheus.Registry) {
		<-pause.C
		if err := srv.Resume(); err != nil {
			t.Fatal(err)
		}
	})
}
