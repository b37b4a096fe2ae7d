// Package consumers runs the Kafka consumer groups behind Spate's sinks.
//
// A Group polls and hands each partition's records to a worker of that
// partition, which applies them to the sink's Handler in offset order;
// partitions apply in parallel and never wait for each other. A partition
// whose worker falls behind (its sink is slow, or failing) is paused: Kafka
// keeps its backlog while the other partitions go on, and the group goes on
// polling, so it takes part in rebalances. A revoked partition's worker
// stops (abandoning the batch it is applying: the sink keeps its offset)
// before the partition can go to another member. The sink, not Kafka, holds
// the truth about what was consumed:
// Handler.Apply stores the partition's next offset atomically with its
// writes, and on every assignment the group resumes from Handler.Offsets.
// Kafka commits are made for lag monitoring only. Together with a Handler
// that ignores records below its stored offset, each record is applied
// exactly once across crashes, restarts and rebalances.
//
// Errors: a Handler wraps a record it can never apply in a PoisonError; the
// group writes that record to the dead-letter topic (<topic>.dlq) with the
// reason in headers and moves on. Any other error is retried with backoff
// until it succeeds, the partition is revoked or the group stops: nothing is
// skipped, and while a sink is down its partitions are paused, so the
// backlog waits in Kafka.
package consumers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Batch is a run of records of one partition, in offset order.
type Batch struct {
	Topic     string
	Partition int32
	Records   []*kgo.Record
	// Next is the offset to store with the batch: one past its last record,
	// or past records the group sent to the dead-letter topic. Records may be
	// empty when only the offset moves.
	Next int64
	// DeadLettered is set when the batch only moves the offset past a
	// record the group has just written to the dead-letter topic: a sink
	// that keeps its offsets in a database can note it there, in the same
	// step.
	DeadLettered *PoisonError
	// LogStart is where the partition's history in Kafka started when its
	// records were fetched (0 if Kafka did not say): records below it are
	// gone, and no rebuild can read them again.
	LogStart int64
}

// Handler is a sink.
type Handler interface {
	// Offsets returns the stored next offset of each partition of topic that
	// has one. Partitions without one start at the group's StartAt.
	Offsets(ctx context.Context, topic string, partitions []int32) (map[int32]int64, error)
	// Apply writes the batch and stores b.Next as the partition's offset, in
	// one atomic step. It must ignore records below the offset it has stored
	// (they were applied before: a redelivery after a crash or rebalance).
	// It returns an error wrapping a PoisonError for a record that can never
	// be applied, and any other error for one that is worth retrying.
	Apply(ctx context.Context, b Batch) error
}

// ErrPoison matches every PoisonError.
var ErrPoison = errors.New("poison record")

// PoisonError reports a record that a sink can never apply.
type PoisonError struct {
	Record *kgo.Record
	// Sink names the part of the sink that failed, e.g. the projection.
	// Empty: the sink as a whole (the record itself is bad).
	Sink string
	// Class names the kind of failure for operators, e.g. "payload" or
	// "integrity-constraint-violation".
	Class string
	Err   error
}

// Poison returns a PoisonError for r.
func Poison(r *kgo.Record, class string, err error) error {
	return &PoisonError{Record: r, Class: class, Err: err}
}

func (e *PoisonError) Error() string {
	return fmt.Sprintf("poison record %s/%d@%d (%s): %v", e.Record.Topic, e.Record.Partition, e.Record.Offset, e.Class, e.Err)
}

func (e *PoisonError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrPoison) true.
func (e *PoisonError) Is(target error) bool { return target == ErrPoison }

// Dead-letter headers added to a record written to <topic>.dlq, besides the
// record's own.
const (
	HeaderDLQGroup     = "spate_dlq_group"
	HeaderDLQSink      = "spate_dlq_sink"
	HeaderDLQClass     = "spate_dlq_class"
	HeaderDLQReason    = "spate_dlq_reason"
	HeaderDLQTopic     = "spate_dlq_topic"
	HeaderDLQPartition = "spate_dlq_partition"
	HeaderDLQOffset    = "spate_dlq_offset"
	HeaderDLQTime      = "spate_dlq_time"
	// HeaderDLQTimestamp is the original record's timestamp (RFC 3339):
	// an event without a time of its own takes it, and a re-drive must
	// give it the same one. The dead letter's own timestamp is when it was
	// written, so that the dead-letter topic can be read from a time.
	HeaderDLQTimestamp = "spate_dlq_timestamp"
)

// DLQTopic returns the dead-letter topic of topic.
func DLQTopic(topic string) string { return topic + ".dlq" }

// Config tunes a Group. Group is required; the zero value of the rest works.
type Config struct {
	// Group is the Kafka consumer group.
	Group string
	// Topics to consume. Zero: spate.events.
	Topics []string
	// StartAt is where a partition with no stored offset starts: "earliest"
	// or "latest". Zero: earliest. With latest, the partition's end is
	// stored in the sink at once (an empty batch up to it), so that events
	// that come after are not skipped when the partition moves, or the
	// group restarts, before the first batch.
	StartAt string
	// MaxPollRecords caps the records of one poll. Zero: 10000.
	MaxPollRecords int
	// DrainTimeout is how long batches in flight may take to finish once the
	// group is told to stop. Zero: 10 s.
	DrainTimeout time.Duration
	// MaxBackoff caps the wait between retries of a failing batch. Zero: 10 s.
	MaxBackoff time.Duration
	// StallAfter is how long a step (applying a batch, writing a dead
	// letter, loading the offsets) may go on, failing and retried or just
	// slow, before Stalled reports it (a step given up on at a rebalance
	// and begun again within StallAfter counts from when it first began).
	// Zero: 30 s.
	StallAfter time.Duration
	// Logger receives retries, dead letters and group events. Zero: none.
	Logger *slog.Logger
	// Metrics registers the group's metrics. Zero: not registered.
	Metrics prometheus.Registerer
}

// Group consumes topics into a Handler. Create it with New.
type Group struct {
	h   Handler
	cfg Config
	cl  *kgo.Client
	// clSet is closed once cl is set: the client joins the group, and may
	// call resume, before kgo.NewClient returns it.
	clSet   chan struct{}
	log     *slog.Logger
	metrics *metrics

	started     chan struct{} // closed at the first resume
	startedOnce sync.Once

	mu      sync.Mutex // guards workers: the poll loop starts them, group callbacks stop them
	workers map[topicPartition]*worker

	now     func() time.Time // time.Now; tests move it on (set before the client starts)
	stepsMu sync.Mutex
	steps   map[*step]bool // those in progress
	// givenUp holds, by op, the steps that ended without succeeding when
	// their context did (at a rebalance, say): the op begun again soon
	// after keeps its clock.
	givenUp map[string]givenUpStep
}

// givenUpStep is when a step that was given up on began, and when it was
// given up on.
type givenUpStep struct{ start, at time.Time }

// step is a step in progress (see Config.StallAfter): what it is, since
// when, and the error of its last failed attempt, if any.
type step struct {
	op    string
	start time.Time
	err   error
}

type topicPartition struct {
	topic     string
	partition int32
}

// worker applies the fetches of one partition, in order.
type worker struct {
	topic     string
	partition int32

	mu     sync.Mutex
	queue  []kgo.FetchTopicPartition // fetches waiting, in order
	paused bool                      // the partition's fetching is paused

	wake chan struct{}      // signalled when a fetch is queued
	stop context.CancelFunc // ends the worker's context: the batch it applies is abandoned
	quit chan struct{}      // closed to stop it
	done chan struct{}      // closed when it stopped
}

// queuedFetches is how many fetches of a partition may wait for its worker.
// Then the partition is paused, so its backlog stays in Kafka, until the
// worker has taken them all.
const queuedFetches = 2

// New returns a group that feeds h. opts are passed to kgo.NewClient after
// the group's own, so they carry seed brokers, TLS, SASL and the like.
func New(h Handler, cfg Config, opts ...kgo.Opt) (*Group, error) {
	return newGroup(h, cfg, time.Now, opts...)
}

// newGroup is New with the clock the group reads. It is set before the
// client starts, since the client joins the group and resumes partitions
// at once.
func newGroup(h Handler, cfg Config, now func() time.Time, opts ...kgo.Opt) (*Group, error) {
	if cfg.Group == "" {
		return nil, errors.New("consumers: Config.Group is required")
	}
	if len(cfg.Topics) == 0 {
		cfg.Topics = []string{"spate.events"}
	}
	start := kgo.NewOffset().AtStart()
	switch cfg.StartAt {
	case "", "earliest":
	case "latest":
		start = kgo.NewOffset().AtEnd()
	default:
		return nil, fmt.Errorf("consumers: StartAt %q: want earliest or latest", cfg.StartAt)
	}
	if cfg.MaxPollRecords == 0 {
		cfg.MaxPollRecords = 10000
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.StallAfter == 0 {
		cfg.StallAfter = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Group{h: h, cfg: cfg, log: log.With("group", cfg.Group), metrics: newMetrics(cfg.Metrics, cfg.Group),
		started: make(chan struct{}), clSet: make(chan struct{}), workers: map[topicPartition]*worker{}, now: now, steps: map[*step]bool{}, givenUp: map[string]givenUpStep{}}
	own := []kgo.Opt{
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topics...),
		// StartAt is for partitions the sink holds no offset of (resume
		// sets it). An offset the sink holds that Kafka no longer has (its
		// retention deleted the records while the sink was down) resumes
		// at the oldest record Kafka still has, whatever StartAt says:
		// jumping to the end would skip records that are still there.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Commits are for lag monitoring: of what the workers applied,
		// every 5 s and when partitions are revoked.
		kgo.AutoCommitMarks(),
		// Fetches are handed to workers before a rebalance can start, so
		// a worker only ever gets records of a partition it owns.
		kgo.BlockRebalanceOnPoll(),
		// Smaller fetches than franz-go's 1 MiB a partition: batches of
		// about a thousand events, so that a worker's transaction or
		// script stays short.
		kgo.FetchMaxPartitionBytes(256 << 10),
		// A partition paused while its worker catches up is fetched again
		// only once the fetch in flight returns, which waits up to this
		// long when the other partitions have nothing new. franz-go's 5 s
		// made a drain of a backlog three times slower than 200 ms does
		// (BenchmarkConsume/project-event_log); new records are still
		// answered at once.
		kgo.FetchMaxWait(200 * time.Millisecond),
		kgo.AdjustFetchOffsetsFn(func(ctx context.Context, offs map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
			return g.resume(ctx, offs, start)
		}),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, tps map[string][]int32) {
			g.log.Info("partitions assigned", "partitions", tps)
		}),
		kgo.OnPartitionsRevoked(func(ctx context.Context, cl *kgo.Client, tps map[string][]int32) {
			g.log.Info("partitions revoked", "partitions", tps)
			g.stopWorkers(tps, true)
			if err := cl.CommitMarkedOffsets(ctx); err != nil {
				g.log.Warn("commit offsets for monitoring", "err", err)
			}
			g.metrics.forget(tps)
		}),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, tps map[string][]int32) {
			g.log.Warn("partitions lost", "partitions", tps)
			g.stopWorkers(tps, true)
			g.metrics.forget(tps)
		}),
	}
	cl, err := kgo.NewClient(append(own, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("consumer group %s: %w", cfg.Group, err)
	}
	g.cl = cl
	close(g.clSet)
	return g, nil
}

// endOffsets lists the end offsets of topic's partitions, once the group's
// client is set (see clSet).
func (g *Group) endOffsets(ctx context.Context, topic string) (kadm.ListedOffsets, error) {
	select {
	case <-g.clSet:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ends, err := kadm.NewClient(g.cl).ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	return ends, nil
}

// Started is closed once the group was first assigned partitions and
// resumed them from the sink's offsets.
func (g *Group) Started() <-chan struct{} { return g.started }

// Ping checks that Kafka answers.
func (g *Group) Ping(ctx context.Context) error { return g.cl.Ping(ctx) }

// resume replaces the offsets Kafka has for newly assigned partitions with
// the ones the sink stored, or start for a partition it stored none of. It
// retries until the sink answers or the group session ends, so a sink that
// is down at assignment delays consumption instead of failing it.
func (g *Group) resume(ctx context.Context, offs map[string]map[int32]kgo.Offset, start kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	for topic, parts := range offs {
		ps := make([]int32, 0, len(parts))
		for p := range parts {
			ps = append(ps, p)
		}
		var stored map[int32]int64
		err := g.retry(ctx, "load offsets of "+topic, func() error {
			var err error
			if stored, err = g.h.Offsets(ctx, topic, ps); err != nil {
				return err
			}
			if err := g.checkStored(ctx, topic, stored); err != nil {
				return err
			}
			if g.cfg.StartAt == "latest" {
				return g.storeEnds(ctx, topic, ps, stored)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			if o, ok := stored[p]; ok {
				parts[p] = kgo.NewOffset().At(o).WithEpoch(-1)
			} else {
				parts[p] = start
			}
		}
		g.log.Info("resuming", "topic", topic, "stored", stored)
	}
	g.startedOnce.Do(func() { close(g.started) })
	return offs, nil
}

// storeEnds stores in the sink, for each partition of ps of topic that has
// no stored offset, the partition's end, and adds it to stored.
func (g *Group) storeEnds(ctx context.Context, topic string, ps []int32, stored map[int32]int64) error {
	var missing []int32
	for _, p := range ps {
		if _, ok := stored[p]; !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	ends, err := g.endOffsets(ctx, topic)
	if err != nil {
		return err
	}
	for _, p := range missing {
		end, ok := ends.Lookup(topic, p)
		if !ok || end.Err != nil {
			return fmt.Errorf("list end offsets of %s/%d: %v", topic, p, cmp.Or(end.Err, errors.New("not listed")))
		}
		if err := g.h.Apply(ctx, Batch{Topic: topic, Partition: p, Next: end.Offset}); err != nil {
			return fmt.Errorf("store the end of %s/%d: %w", topic, p, err)
		}
		stored[p] = end.Offset
	}
	return nil
}

// ErrPastEnd reports a stored offset past the end of its partition: the
// topic was deleted and created again, or Kafka lost records. Fetching
// would start over at the log's start, and the sink would skip every event
// below its offset, so the group waits instead, and Stalled says why.
var ErrPastEnd = errors.New("stored offset past the end of the partition")

// checkStored fails with ErrPastEnd for offsets the sink stored that are
// past the end of their partitions of topic.
func (g *Group) checkStored(ctx context.Context, topic string, stored map[int32]int64) error {
	if len(stored) == 0 {
		return nil
	}
	ends, err := g.endOffsets(ctx, topic)
	if err != nil {
		return err
	}
	var past []string
	for _, p := range slices.Sorted(maps.Keys(stored)) {
		if end, ok := ends.Lookup(topic, p); ok && end.Err == nil && stored[p] > end.Offset {
			past = append(past, fmt.Sprintf("%d at %d, end %d", p, stored[p], end.Offset))
		}
	}
	if len(past) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s partitions %s: the topic was created again or Kafka lost records, and the events at those offsets would be skipped; stop the group and move it with spate offsets reset --group %s (a projector group with --reapply, once its tables no longer hold the old topic's events)", ErrPastEnd, topic, strings.Join(past, "; "), g.cfg.Group)
}

// Run consumes until ctx ends, then lets the batches that workers are
// applying finish (up to DrainTimeout), leaves the group and closes the
// client. It returns an error only if a worker failed for a reason other
// than being stopped.
func (g *Group) Run(ctx context.Context) error {
	defer g.cl.CloseAllowingRebalance()
	// Batches run on their own context so that a stop lets them finish.
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(g.cfg.DrainTimeout, cancel) })
	defer stop()
	defer g.stopWorkers(nil, false)

	// A failing worker ends the poll at once, so Run returns without
	// waiting for more records.
	pollCtx, pollCancel := context.WithCancel(ctx)
	defer pollCancel()
	failed := make(chan struct{})
	var failure error
	var failOnce sync.Once
	fail := func(err error) {
		failOnce.Do(func() { failure = err; close(failed); pollCancel() })
	}
	for {
		fetches := g.cl.PollRecords(pollCtx, g.cfg.MaxPollRecords)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return nil
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				g.log.Error("fetch", "topic", topic, "partition", p, "err", err)
			}
		})
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) > 0 {
				g.worker(pctx, p.Topic, p.Partition, fail).push(g.cl, p)
			}
		})
		select {
		case <-failed:
			if pctx.Err() != nil {
				return nil // stopped while a batch was failing; the sink kept its offset
			}
			cancel() // the other workers' batches are abandoned, not waited for: the sinks keep their offsets
			return failure
		default:
		}
		g.cl.AllowRebalance()
	}
}

// push queues a fetch for the worker, and pauses the partition once
// queuedFetches wait.
func (w *worker) push(cl *kgo.Client, p kgo.FetchTopicPartition) {
	w.mu.Lock()
	w.queue = append(w.queue, p)
	if len(w.queue) >= queuedFetches && !w.paused {
		w.paused = true
		cl.PauseFetchPartitions(map[string][]int32{w.topic: {w.partition}})
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// resume resumes fetching the worker's partition if push paused it. The
// caller holds w.mu.
func (w *worker) resume(cl *kgo.Client) {
	if w.paused {
		w.paused = false
		cl.ResumeFetchPartitions(map[string][]int32{w.topic: {w.partition}})
	}
}

// next returns the next fetch to apply, waiting for one; false once the
// worker is stopped. Taking the last queued fetch resumes a paused partition,
// so the next fetch arrives while this one applies.
func (w *worker) next(cl *kgo.Client) (kgo.FetchTopicPartition, bool) {
	for {
		select {
		case <-w.quit: // stopped: what is queued is dropped
			return kgo.FetchTopicPartition{}, false
		default:
		}
		w.mu.Lock()
		if len(w.queue) > 0 {
			p := w.queue[0]
			w.queue = w.queue[1:]
			if len(w.queue) == 0 {
				w.resume(cl)
			}
			w.mu.Unlock()
			return p, true
		}
		w.mu.Unlock()
		select {
		case <-w.quit:
			return kgo.FetchTopicPartition{}, false
		case <-w.wake:
		}
	}
}

// worker returns the worker of a partition, starting it if there is none.
func (g *Group) worker(ctx context.Context, topic string, partition int32, fail func(error)) *worker {
	g.mu.Lock()
	defer g.mu.Unlock()
	tp := topicPartition{topic, partition}
	if w := g.workers[tp]; w != nil {
		return w
	}
	wctx, stop := context.WithCancel(ctx)
	w := &worker{topic: topic, partition: partition, wake: make(chan struct{}, 1), stop: stop,
		quit: make(chan struct{}), done: make(chan struct{})}
	g.workers[tp] = w
	go func() {
		defer close(w.done)
		for {
			p, ok := w.next(g.cl)
			if !ok {
				return
			}
			if err := g.process(wctx, p.Topic, p.Partition, p.LogStartOffset, p.Records); err != nil {
				select {
				case <-w.quit: // stopped: the sink kept its offset
				default:
					fail(err)
				}
				return
			}
			g.metrics.lag(p.Topic, p.Partition, p.HighWatermark-p.Records[len(p.Records)-1].Offset-1)
			g.cl.MarkCommitRecords(p.Records[len(p.Records)-1])
		}
	}()
	return w
}

// stopWorkers stops the workers of tps (all of them if tps is nil) and
// waits until each stopped. With abandon, the batches they apply are
// abandoned (the sinks keep their offsets); without, they finish, or end
// with the workers' context. Their partitions are no longer paused: if one
// comes back, it is fetched.
func (g *Group) stopWorkers(tps map[string][]int32, abandon bool) {
	g.mu.Lock()
	var stopping []*worker
	for tp, w := range g.workers {
		if tps == nil || slices.Contains(tps[tp.topic], tp.partition) {
			close(w.quit)
			if abandon {
				w.stop()
			}
			stopping = append(stopping, w)
			delete(g.workers, tp)
		}
	}
	g.mu.Unlock()
	for _, w := range stopping {
		<-w.done
		w.stop()
		w.mu.Lock()
		w.resume(g.cl)
		w.mu.Unlock()
	}
}

// process applies one partition's records, fetched when its log started at
// logStart, routing poison records to the dead-letter topic.
func (g *Group) process(ctx context.Context, topic string, partition int32, logStart int64, recs []*kgo.Record) error {
	logStart = max(logStart, 0)
	for len(recs) > 0 {
		err := g.apply(ctx, Batch{Topic: topic, Partition: partition, Records: recs, Next: recs[len(recs)-1].Offset + 1, LogStart: logStart})
		var pe *PoisonError
		if !errors.As(err, &pe) {
			return err
		}
		i := slices.IndexFunc(recs, func(r *kgo.Record) bool { return r.Offset == pe.Record.Offset })
		if i < 0 {
			return fmt.Errorf("apply %s/%d: handler reported poison offset %d outside its batch", topic, partition, pe.Record.Offset)
		}
		if i > 0 { // the records before it keep their order
			if err := g.process(ctx, topic, partition, logStart, recs[:i]); err != nil {
				return err
			}
		}
		if err := g.deadLetter(ctx, pe); err != nil {
			return err
		}
		// Move past it at once, so a crash now does not dead-letter it twice.
		if err := g.apply(ctx, Batch{Topic: topic, Partition: partition, Next: pe.Record.Offset + 1, DeadLettered: pe, LogStart: logStart}); err != nil {
			return err
		}
		recs = recs[i+1:]
	}
	return nil
}

// apply hands b to the handler, retrying failures that are not poison.
func (g *Group) apply(ctx context.Context, b Batch) error {
	start := time.Now()
	err := g.retry(ctx, fmt.Sprintf("apply %s/%d", b.Topic, b.Partition), func() error {
		err := g.h.Apply(ctx, b)
		if err != nil && !errors.Is(err, ErrPoison) && ctx.Err() == nil { // not given up
			g.metrics.retries.Inc()
		}
		return err
	})
	if err == nil {
		g.metrics.applied(b, time.Since(start))
	}
	return err
}

// deadLetter writes a poison record to the dead-letter topic, retrying
// until Kafka acknowledges it or ctx ends.
func (g *Group) deadLetter(ctx context.Context, pe *PoisonError) error {
	r := pe.Record
	hs := append(slices.Clip(r.Headers),
		kgo.RecordHeader{Key: HeaderDLQGroup, Value: []byte(g.cfg.Group)},
		kgo.RecordHeader{Key: HeaderDLQSink, Value: []byte(pe.Sink)},
		kgo.RecordHeader{Key: HeaderDLQClass, Value: []byte(pe.Class)},
		kgo.RecordHeader{Key: HeaderDLQReason, Value: []byte(pe.Err.Error())},
		kgo.RecordHeader{Key: HeaderDLQTopic, Value: []byte(r.Topic)},
		kgo.RecordHeader{Key: HeaderDLQPartition, Value: []byte(strconv.Itoa(int(r.Partition)))},
		kgo.RecordHeader{Key: HeaderDLQOffset, Value: []byte(strconv.FormatInt(r.Offset, 10))},
		kgo.RecordHeader{Key: HeaderDLQTime, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))},
		kgo.RecordHeader{Key: HeaderDLQTimestamp, Value: []byte(r.Timestamp.UTC().Format(time.RFC3339Nano))},
	)
	dl := &kgo.Record{Topic: DLQTopic(r.Topic), Key: r.Key, Value: r.Value, Headers: hs}
	g.log.Warn("dead-lettering", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "class", pe.Class, "err", pe.Err)
	err := g.retry(ctx, fmt.Sprintf("dead-letter %s/%d@%d", r.Topic, r.Partition, r.Offset), func() error { return g.cl.ProduceSync(ctx, dl).FirstErr() })
	if err == nil {
		g.metrics.deadLettered.Inc()
	}
	return err
}

// ErrStalled reports a step of the group that has gone on for longer than
// Config.StallAfter.
var ErrStalled = errors.New("stalled")

// Stalled returns an error wrapping ErrStalled that names the oldest step
// in progress, if it has gone on for longer than Config.StallAfter, and
// the error of its last failed attempt: a sink that is down, a projection
// whose definition changed, a statement that fails on something other
// than the data, or one that waits for ever. Retries go on; nil once the
// step is done. It suits a readiness check (ctx is not used).
func (g *Group) Stalled(context.Context) error {
	g.stepsMu.Lock()
	defer g.stepsMu.Unlock()
	var oldest *step
	for st := range g.steps {
		if oldest == nil || st.start.Before(oldest.start) {
			oldest = st
		}
	}
	if oldest == nil {
		return nil
	}
	d := g.now().Sub(oldest.start)
	if d < g.cfg.StallAfter {
		return nil
	}
	if d >= time.Second {
		d = d.Round(time.Second)
	}
	if oldest.err == nil {
		return fmt.Errorf("%w: %s has been running for %s", ErrStalled, oldest.op, d)
	}
	return fmt.Errorf("%w: %s has not succeeded for %s; its last attempt failed: %w", ErrStalled, oldest.op, d, oldest.err)
}

// retry calls fn until it returns nil or a poison error, or ctx ends,
// backing off exponentially with jitter between failures. Stalled sees
// the step op until then. A step of op given up on within StallAfter (its
// partition revoked and assigned back, say) counts from when that one
// began: rebalances do not hide a step that never succeeds.
func (g *Group) retry(ctx context.Context, op string, fn func() error) error {
	backoff := 100 * time.Millisecond
	now := g.now()
	st := &step{op: op, start: now}
	done := false
	g.stepsMu.Lock()
	if prev, ok := g.givenUp[op]; ok {
		delete(g.givenUp, op)
		if now.Sub(prev.at) < g.cfg.StallAfter {
			st.start = prev.start
		}
	}
	g.steps[st] = true
	g.stepsMu.Unlock()
	defer func() {
		g.stepsMu.Lock()
		delete(g.steps, st)
		if !done {
			at := g.now()
			for op, prev := range g.givenUp { // too old to matter
				if at.Sub(prev.at) >= g.cfg.StallAfter {
					delete(g.givenUp, op)
				}
			}
			g.givenUp[op] = givenUpStep{start: st.start, at: at}
		}
		g.stepsMu.Unlock()
	}()
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || errors.Is(err, ErrPoison) {
			done = true
			return err
		}
		g.stepsMu.Lock()
		st.err = err
		g.stepsMu.Unlock()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		g.log.Warn("retrying", "op", op, "attempt", attempt, "wait", wait, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(2*backoff, g.cfg.MaxBackoff)
	}
}
