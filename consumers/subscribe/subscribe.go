// Package subscribe reads Redis Streams as a member of a consumer group, at
// least once: an entry is acknowledged (XACK) only after the handler returned
// nil for it, so an entry whose handler failed, or whose member died before
// acknowledging it, is delivered again, to this member or another.
//
// A complete subscriber:
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//	sub, err := subscribe.New(rdb, subscribe.Config{
//		Group:   "billing",
//		Streams: []string{"spate:shop.order.placed.v1"},
//	}, func(ctx context.Context, m subscribe.Message) error {
//		log.Printf("%s %s: %s", m.ID, m.Values["subject"], m.Values["data"])
//		return nil // acknowledged; an error leaves it pending, to be delivered again
//	})
//	if err != nil {
//		return err
//	}
//	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
//	defer stop()
//	return sub.Run(ctx) // until Ctrl-C
//
// Members of one group share the entries of its streams: each new entry goes
// to one member (XREADGROUP). Every ClaimIdle/2 each member also takes over
// the entries pending longer than ClaimIdle, its own failed ones included
// (XAUTOCLAIM), and hands them to its handler again. ClaimIdle must
// therefore exceed the time the handler takes for a read's Count entries.
//
// Poison: after MaxDeliveries deliveries, or at once when the handler's error
// wraps ErrPoison, an entry is copied to the dead-letter stream <stream>:dlq
// with the fields spate_dlq_* (reason, deliveries, stream, id, group,
// consumer, time) and acknowledged. Pending entries that were deleted from
// the stream (XDEL, trimming) before being handled are dropped from the
// group's pending list and counted; they cannot be delivered.
//
// Redis errors (a restart, a killed connection, a failover) are retried with
// backoff for as long as Run runs. It needs Redis 7.0 or later. On Redis
// Cluster the streams of a subscriber must share a hash slot (give their
// keys a hash tag), as XREADGROUP reads them in one command.
package subscribe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// ErrPoison, wrapped in a handler's error, sends the entry to the
// dead-letter stream at once instead of having it delivered again.
var ErrPoison = errors.New("poison message")

// Dead-letter fields added to an entry copied to <stream>:dlq, besides its own.
const (
	FieldDLQReason     = "spate_dlq_reason"
	FieldDLQDeliveries = "spate_dlq_deliveries"
	FieldDLQStream     = "spate_dlq_stream"
	FieldDLQID         = "spate_dlq_id"
	FieldDLQGroup      = "spate_dlq_group"
	FieldDLQConsumer   = "spate_dlq_consumer"
	FieldDLQTime       = "spate_dlq_time"
)

// DLQStream returns the dead-letter stream of stream.
func DLQStream(stream string) string { return stream + ":dlq" }

// Message is a stream entry delivered to a handler.
type Message struct {
	Stream string
	ID     string
	// Values are the entry's fields; go-redis gives their values as strings.
	Values map[string]any
	// Deliveries counts the times the entry was delivered to the group,
	// this one included: 1 the first time. A member that stops gives back
	// the entries it read and did not hand to its handler, uncounted; a
	// read whose reply was lost (a killed connection) counts.
	Deliveries int64
}

// Handler handles one message. It returns nil to have the message
// acknowledged, an error wrapping ErrPoison to dead-letter it, or any other
// error to have it delivered again after ClaimIdle.
type Handler func(ctx context.Context, m Message) error

// Config tunes a Subscriber. Group and Streams are required; the zero value
// of the rest works.
type Config struct {
	// Group is the consumer group. It is created if missing.
	Group string
	// Streams to read. They are created (empty) if missing.
	Streams []string
	// Consumer names this member in the group; members must have distinct
	// names. Zero: <hostname>-<pid>-<n>, n counting the subscribers of the
	// process that took the default.
	Consumer string
	// StartID is where a group that does not exist yet starts in each
	// stream: "0" (the whole stream), "$" (new entries only) or an entry ID.
	// Zero: "0". A group that vanishes while Run runs (the stream was
	// deleted, or Redis restarted without its data) is created again at "0",
	// whatever StartID says: every entry in the stream then came after the
	// loss, and none may be skipped.
	StartID string
	// Count caps the entries one read returns. Zero: 100.
	Count int
	// Block is how long a read waits for new entries, in whole milliseconds
	// of at least 1 (Redis's unit). It also bounds the time Run takes to
	// notice that its context ended. Zero: 2 s.
	Block time.Duration
	// ClaimIdle is how long an entry stays pending, unacknowledged, before
	// a member takes it over and delivers it again. It must exceed the
	// time the handler takes for Count entries. Zero: 30 s.
	ClaimIdle time.Duration
	// MaxDeliveries is the number of deliveries after which an entry that
	// still fails goes to the dead-letter stream. Zero: 5.
	MaxDeliveries int64
	// DrainTimeout is how long the handler in flight may run on once Run's
	// context ended before its own context is cancelled. Zero: 10 s.
	DrainTimeout time.Duration
	// Logger receives Redis errors, handler errors and dead letters. Zero: none.
	Logger *slog.Logger
	// Metrics registers the spate_subscriber_* metrics. Subscribers may
	// share a registerer. Zero: not registered.
	Metrics prometheus.Registerer
}

// Subscriber is a member of a consumer group. Create it with New.
type Subscriber struct {
	rdb     redis.UniversalClient
	cfg     Config
	h       Handler
	log     *slog.Logger
	m       *metrics
	running atomic.Bool // two Runs would be one member twice over
}

// defaultNames counts the subscribers given a default Consumer name.
var defaultNames atomic.Int64

// idPattern matches a stream entry ID, complete or not.
var idPattern = regexp.MustCompile(`^[0-9]+(-[0-9]+)?$`)

// New returns a subscriber that reads with rdb and hands entries to h.
func New(rdb redis.UniversalClient, cfg Config, h Handler) (*Subscriber, error) {
	switch {
	case cfg.Group == "":
		return nil, errors.New("subscribe: Config.Group is required")
	case len(cfg.Streams) == 0:
		return nil, errors.New("subscribe: Config.Streams is required")
	case h == nil:
		return nil, errors.New("subscribe: a handler is required")
	case cfg.Count < 0, cfg.Block < 0, cfg.ClaimIdle < 0, cfg.MaxDeliveries < 0, cfg.DrainTimeout < 0:
		return nil, errors.New("subscribe: Config.Count, Block, ClaimIdle, MaxDeliveries and DrainTimeout must not be negative")
	}
	for _, s := range cfg.Streams {
		if s == "" {
			return nil, errors.New("subscribe: Config.Streams has an empty key")
		}
	}
	if cfg.StartID == "" {
		cfg.StartID = "0"
	}
	if cfg.StartID != "$" && !idPattern.MatchString(cfg.StartID) {
		return nil, fmt.Errorf(`subscribe: Config.StartID %q: want "0", "$" or an entry ID such as 1700000000000-0`, cfg.StartID)
	}
	if cfg.Consumer == "" {
		host, err := os.Hostname()
		if err != nil {
			host = "subscriber"
		}
		cfg.Consumer = host + "-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(defaultNames.Add(1), 10)
	}
	if cfg.Count == 0 {
		cfg.Count = 100
	}
	switch {
	case cfg.Block == 0:
		cfg.Block = 2 * time.Second
	case cfg.Block < time.Millisecond:
		cfg.Block = time.Millisecond // Redis would read less as 0: block for ever
	}
	if cfg.ClaimIdle == 0 {
		cfg.ClaimIdle = 30 * time.Second
	}
	if cfg.MaxDeliveries == 0 {
		cfg.MaxDeliveries = 5
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	return &Subscriber{
		rdb: rdb,
		cfg: cfg,
		h:   h,
		log: log.With("group", cfg.Group, "consumer", cfg.Consumer),
		m:   m,
	}, nil
}

// errConfig marks an error that retrying cannot cure.
var errConfig = errors.New("unusable configuration")

// Run reads and handles entries until ctx ends. Then it stops reading, lets
// the handler in flight finish (up to DrainTimeout), acknowledges it if it
// succeeded, leaves the group if it holds no pending entries, and returns
// nil. It returns an error only for a configuration that cannot work, such
// as a stream key holding another type or streams in different slots of a
// Redis Cluster, and when s runs already.
func (s *Subscriber) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return fmt.Errorf("subscribe: member %s of group %s is running already: give each Run a Subscriber of its own", s.cfg.Consumer, s.cfg.Group)
	}
	defer s.running.Store(false)
	// Handlers and acknowledgements run on their own context, so that a stop
	// lets the message in flight finish.
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(s.cfg.DrainTimeout, cancel) })
	defer stop()

	claimEvery := max(s.cfg.ClaimIdle/2, time.Millisecond)
	var (
		b         backoff
		grouped   bool
		startID   = s.cfg.StartID
		nextClaim time.Time // claim at once: take over what dead members left
	)
	s.log.Info("subscribing", "streams", s.cfg.Streams)
	for ctx.Err() == nil {
		err := func() error {
			if !grouped {
				if err := s.createGroups(ctx, startID); err != nil {
					return err
				}
				grouped = true
			}
			if !time.Now().Before(nextClaim) {
				if err := s.claim(ctx, hctx); err != nil {
					return err
				}
				s.refreshGauges(ctx)
				nextClaim = time.Now().Add(claimEvery)
			}
			return s.read(ctx, hctx, min(s.cfg.Block, max(time.Until(nextClaim), time.Millisecond)))
		}()
		switch {
		case err == nil:
			b.reset()
		case errors.Is(err, errConfig), redis.HasErrorPrefix(err, "WRONGTYPE"):
			// A stream key that holds another type, from the start or
			// since: the claim and the acks meet it too, not only reads.
			return err
		case redis.HasErrorPrefix(err, "CROSSSLOT"):
			return fmt.Errorf("%w: on Redis Cluster the streams of one subscriber must share a hash slot: give their keys one hash tag, such as {orders}:eu and {orders}:us: %w", errConfig, err)
		case ctx.Err() != nil:
		default:
			if redis.HasErrorPrefix(err, "NOGROUP") {
				// The stream or group was deleted: create them again, from
				// the start of what the stream holds now.
				grouped, startID = false, "0"
			}
			d := b.next()
			s.log.Warn("retrying", "err", err, "wait", d)
			sleep(ctx, d)
		}
	}
	s.leave()
	s.log.Info("stopped")
	return nil
}

// createGroups creates the group on each stream that lacks it, at startID,
// and the stream if missing.
func (s *Subscriber) createGroups(ctx context.Context, startID string) error {
	for _, stream := range s.cfg.Streams {
		err := s.rdb.XGroupCreateMkStream(ctx, stream, s.cfg.Group, startID).Err()
		switch {
		case err == nil:
			s.log.Info("created group", "stream", stream, "start_id", startID)
		case redis.HasErrorPrefix(err, "BUSYGROUP"):
		case redis.HasErrorPrefix(err, "WRONGTYPE"):
			return fmt.Errorf("create group %s on %s: %w: %w", s.cfg.Group, stream, errConfig, err)
		default:
			return fmt.Errorf("create group %s on %s: %w", s.cfg.Group, stream, err)
		}
	}
	return nil
}

// read reads new entries, waiting up to block, and handles them.
func (s *Subscriber) read(ctx, hctx context.Context, block time.Duration) error {
	args := &redis.XReadGroupArgs{
		Group:    s.cfg.Group,
		Consumer: s.cfg.Consumer,
		Streams:  make([]string, 0, 2*len(s.cfg.Streams)),
		Count:    int64(s.cfg.Count),
		Block:    block,
	}
	args.Streams = append(args.Streams, s.cfg.Streams...)
	for range s.cfg.Streams {
		args.Streams = append(args.Streams, ">")
	}
	res, err := s.rdb.XReadGroup(ctx, args).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil // nothing new within block
	case redis.HasErrorPrefix(err, "WRONGTYPE"):
		return fmt.Errorf("read %v: %w: %w", s.cfg.Streams, errConfig, err)
	case err != nil:
		return fmt.Errorf("read %v: %w", s.cfg.Streams, err)
	}
	var acks []string
	// An error ends the read (Redis failing, or a stop outlasting
	// DrainTimeout): what it did not hand to the handler is given back.
	giveBackStreams := func(from int) {
		for _, st := range res[from:] {
			s.giveBack(st.Stream, st.Messages, nil)
		}
	}
	for si, st := range res {
		acks = acks[:0]
		for i, x := range st.Messages {
			if ctx.Err() != nil {
				// The rest stays pending, for a member to claim, as if
				// this read had not delivered it.
				s.giveBack(st.Stream, st.Messages[i:], nil)
				break
			}
			ok, err := s.handle(hctx, Message{Stream: st.Stream, ID: x.ID, Values: x.Values, Deliveries: 1})
			if err != nil {
				s.giveBack(st.Stream, st.Messages[i+1:], nil)
				giveBackStreams(si + 1)
				return errors.Join(err, s.ack(hctx, st.Stream, acks)) // what was handled is done
			}
			if ok {
				acks = append(acks, x.ID)
			}
		}
		if err := s.ack(hctx, st.Stream, acks); err != nil {
			giveBackStreams(si + 1)
			return err
		}
	}
	return nil
}

// claim takes over the entries of each stream that have been pending for
// longer than ClaimIdle and handles them.
func (s *Subscriber) claim(ctx, hctx context.Context) error {
	for _, stream := range s.cfg.Streams {
		for cursor := "0-0"; ; {
			msgs, next, deleted, err := s.rdb.XAutoClaimWithDeleted(ctx, &redis.XAutoClaimArgs{
				Stream:   stream,
				Group:    s.cfg.Group,
				Consumer: s.cfg.Consumer,
				MinIdle:  s.cfg.ClaimIdle,
				Start:    cursor,
				Count:    int64(s.cfg.Count),
			}).Result()
			if err != nil {
				return fmt.Errorf("claim idle entries of %s: %w", stream, err)
			}
			if len(deleted) > 0 {
				// Redis removed them from the pending list already; the
				// XACK makes sure.
				if err := s.rdb.XAck(hctx, stream, s.cfg.Group, deleted...).Err(); err != nil {
					return fmt.Errorf("drop deleted entries of %s: %w", stream, err)
				}
				s.m.deleted.WithLabelValues(s.cfg.Group, stream).Add(float64(len(deleted)))
				s.log.Warn("pending entries were deleted from the stream before being handled", "stream", stream, "ids", deleted)
			}
			if len(msgs) > 0 {
				s.m.claimed.WithLabelValues(s.cfg.Group, stream).Add(float64(len(msgs)))
				n, err := s.deliveries(hctx, stream, msgs)
				if err != nil {
					return err
				}
				var acks []string
				for i, x := range msgs {
					if ctx.Err() != nil {
						s.giveBack(stream, msgs[i:], n[i:])
						break
					}
					m := Message{Stream: stream, ID: x.ID, Values: x.Values, Deliveries: n[i]}
					ok := false
					if m.Deliveries > s.cfg.MaxDeliveries {
						// Its handler never returned: say, it crashed the process.
						m.Deliveries-- // this claim was no delivery to a handler
						err = s.deadLetter(hctx, m, fmt.Errorf("not acknowledged after %d deliveries", m.Deliveries))
					} else {
						ok, err = s.handle(hctx, m)
					}
					if err != nil {
						s.giveBack(stream, msgs[i+1:], n[i+1:])
						return errors.Join(err, s.ack(hctx, stream, acks)) // what was handled is done
					}
					if ok {
						acks = append(acks, x.ID)
					}
				}
				if err := s.ack(hctx, stream, acks); err != nil {
					return err
				}
				if ctx.Err() != nil {
					return nil
				}
			}
			if next == "0-0" || next == "" {
				break
			}
			cursor = next
		}
	}
	return nil
}

// giveBack is for entries this subscriber took from stream, by a read
// (counts nil: delivered once) or a claim (their delivery counts), and does
// not hand to its handler because it is stopping. It sets their counts one
// lower, so that a delivery no handler saw does not count towards
// MaxDeliveries, and their idle time to ClaimIdle, so that another member
// claims them at once. Best effort: if it fails, they are claimed later,
// counted once more.
func (s *Subscriber) giveBack(stream string, msgs []redis.XMessage, counts []int64) {
	byCount := map[int64][]any{}
	for i, x := range msgs {
		n := int64(1)
		if counts != nil {
			n = counts[i]
		}
		byCount[n-1] = append(byCount[n-1], x.ID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for n, ids := range byCount {
			args := append([]any{"XCLAIM", stream, s.cfg.Group, s.cfg.Consumer, 0}, ids...)
			p.Do(ctx, append(args, "IDLE", s.cfg.ClaimIdle.Milliseconds(), "RETRYCOUNT", max(n, 0), "JUSTID")...)
		}
		return nil
	})
	if err != nil {
		s.log.Warn("give back entries not handled", "stream", stream, "entries", len(msgs), "err", err)
	}
}

// deliveries returns the delivery count of each claimed entry.
func (s *Subscriber) deliveries(ctx context.Context, stream string, msgs []redis.XMessage) ([]int64, error) {
	cmds := make([]*redis.XPendingExtCmd, len(msgs))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, x := range msgs {
			cmds[i] = p.XPendingExt(ctx, &redis.XPendingExtArgs{
				Stream: stream, Group: s.cfg.Group, Start: x.ID, End: x.ID, Count: 1, Consumer: s.cfg.Consumer,
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delivery counts of %s: %w", stream, err)
	}
	n := make([]int64, len(msgs))
	for i, c := range cmds {
		n[i] = 2 // claimed, so delivered at least twice; unless it is no longer ours
		if p := c.Val(); len(p) == 1 {
			n[i] = p[0].RetryCount
		}
	}
	return n, nil
}

// handle hands m to the handler. It reports whether m is to be
// acknowledged (the handler returned nil), dead-letters it when the handler
// gave up on it, and returns an error only when Redis failed until ctx ended.
func (s *Subscriber) handle(ctx context.Context, m Message) (ack bool, err error) {
	err = s.h(ctx, m)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrPoison) || m.Deliveries >= s.cfg.MaxDeliveries:
		s.m.handlerErrors.WithLabelValues(s.cfg.Group, m.Stream).Inc()
		return false, s.deadLetter(ctx, m, err)
	default:
		s.m.handlerErrors.WithLabelValues(s.cfg.Group, m.Stream).Inc()
		s.log.Warn("handler failed; the entry stays pending", "stream", m.Stream, "entry_id", m.ID, "deliveries", m.Deliveries, "err", err)
		return false, nil
	}
}

// ack acknowledges the handled entries of a stream, in one XACK. Until it
// succeeds they stay pending: a crash before it delivers them again, at
// least once, never loses them.
func (s *Subscriber) ack(ctx context.Context, stream string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	if err := s.retry(ctx, func() error { return s.rdb.XAck(ctx, stream, s.cfg.Group, ids...).Err() }); err != nil {
		return fmt.Errorf("ack %d entries of %s: %w", len(ids), stream, err)
	}
	s.m.handled.WithLabelValues(s.cfg.Group, stream).Add(float64(len(ids)))
	return nil
}

// deadLetter copies m to the dead-letter stream, with why, and acknowledges
// it. A crash in between leaves it pending: it may be dead-lettered twice,
// never lost.
func (s *Subscriber) deadLetter(ctx context.Context, m Message, why error) error {
	dlq := DLQStream(m.Stream)
	values := make(map[string]any, len(m.Values)+7)
	for k, v := range m.Values {
		values[k] = v
	}
	values[FieldDLQReason] = why.Error()
	values[FieldDLQDeliveries] = m.Deliveries
	values[FieldDLQStream] = m.Stream
	values[FieldDLQID] = m.ID
	values[FieldDLQGroup] = s.cfg.Group
	values[FieldDLQConsumer] = s.cfg.Consumer
	values[FieldDLQTime] = time.Now().UTC().Format(time.RFC3339Nano)
	s.log.Warn("dead-lettering", "stream", m.Stream, "entry_id", m.ID, "deliveries", m.Deliveries, "dlq", dlq, "err", why)
	err := s.retry(ctx, func() error {
		return s.rdb.XAdd(ctx, &redis.XAddArgs{Stream: dlq, Values: values}).Err()
	})
	if err != nil {
		return fmt.Errorf("dead-letter %s %s to %s: %w", m.Stream, m.ID, dlq, err)
	}
	if err := s.retry(ctx, func() error { return s.rdb.XAck(ctx, m.Stream, s.cfg.Group, m.ID).Err() }); err != nil {
		return fmt.Errorf("ack dead-lettered %s %s: %w", m.Stream, m.ID, err)
	}
	s.m.deadLetters.WithLabelValues(s.cfg.Group, m.Stream).Inc()
	return nil
}

// retry calls fn until it succeeds or ctx ends, backing off between
// failures. A WRONGTYPE reply is a configuration error, not retried.
func (s *Subscriber) retry(ctx context.Context, fn func() error) error {
	var b backoff
	for {
		err := fn()
		switch {
		case err == nil:
			return nil
		case redis.HasErrorPrefix(err, "WRONGTYPE"):
			return fmt.Errorf("%w: %w", errConfig, err)
		case ctx.Err() != nil:
			return err
		}
		d := b.next()
		s.log.Warn("retrying", "err", err, "wait", d)
		sleep(ctx, d)
	}
}

// refreshGauges sets the lag and pending gauges from XINFO GROUPS. It
// leaves them alone when Redis does not answer.
func (s *Subscriber) refreshGauges(ctx context.Context) {
	for _, stream := range s.cfg.Streams {
		groups, err := s.rdb.XInfoGroups(ctx, stream).Result()
		if err != nil {
			s.log.Debug("xinfo groups", "stream", stream, "err", err)
			continue
		}
		for _, g := range groups {
			if g.Name != s.cfg.Group {
				continue
			}
			s.m.pending.WithLabelValues(s.cfg.Group, stream).Set(float64(g.Pending))
			if g.Lag >= 0 {
				s.m.lag.WithLabelValues(s.cfg.Group, stream).Set(float64(g.Lag))
			} else { // unknown after deletions in the stream
				s.m.lag.DeleteLabelValues(s.cfg.Group, stream)
			}
		}
	}
}

// leave deletes this consumer from the group on each stream where it holds
// no pending entries, so that members named after their process do not
// pile up. It keeps the consumer where entries are pending: deleting it
// would drop them.
func (s *Subscriber) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, stream := range s.cfg.Streams {
		p, err := s.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: stream, Group: s.cfg.Group, Start: "-", End: "+", Count: 1, Consumer: s.cfg.Consumer,
		}).Result()
		if err != nil || len(p) > 0 {
			continue
		}
		if err := s.rdb.XGroupDelConsumer(ctx, stream, s.cfg.Group, s.cfg.Consumer).Err(); err != nil {
			s.log.Debug("leave group", "stream", stream, "err", err)
		}
	}
}

// backoff is an exponential backoff with jitter, from 100 ms to 5 s.
type backoff struct{ d time.Duration }

// next returns the wait before the next attempt.
func (b *backoff) next() time.Duration {
	b.d = max(100*time.Millisecond, min(2*b.d, 5*time.Second))
	return b.d/2 + rand.N(b.d/2+1)
}

func (b *backoff) reset() { b.d = 0 }

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
