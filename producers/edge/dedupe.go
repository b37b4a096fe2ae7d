package edge

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// Dedupe remembers in Redis, for a window, the events an edge published, by
// source and id (the CloudEvents identity), the key that published them and
// the topic: an event sent again within the window by the same key to an
// edge of the same topic gets its first receipt back and is not published a
// second time. Edges of several topics can share one Dedupe.
//
// An event's id is claimed before it is published: its key gets the
// claiming request's token and the event's place in the request. Once
// Kafka acknowledged the request's events, their receipts go to one key of
// the request's, all in one value: a request of many events costs one
// write, not one an event; when all were written, while the request's
// answer goes out. A copy sent while the first is still being published
// (its claim has no receipt yet) gets 409, retry later; a copy that meets
// receipts this store is recording waits for them. When a publish fails,
// the claim is released, before the answer; when its outcome is unknown (a
// timeout), the claim stays until Kafka settles the record, so a retry can
// never write it twice. The claims of an edge that stopped before Kafka
// settled its records stay for the window; Held and Resolve let an
// operator end them (spate dedupe).
//
// The claims of concurrent requests go to Redis together, in one pipeline
// (SET NX GET: Redis 7.0 or later), and so do the receipts of those that
// finished, in the same one: under load one round trip serves many
// requests, at both ends.
type Dedupe struct {
	rdb    redis.UniversalClient
	window time.Duration
	prefix string
	// ttl is the window as SET's expiry option and its value, as go-redis
	// words it: none for a window of 0 or less (no expiry).
	ttl  []any
	jobs batcher[dedupeJob]
	// retrying counts the settles trying again in the background.
	retrying sync.WaitGroup
	// recording holds, by token, the requests whose receipts settleAsync
	// is recording: a channel closed once it tried.
	recording sync.Map
}

// NewDedupe returns a store in rdb remembering events for window, under
// keys starting with prefix (zero: "spate:").
func NewDedupe(rdb redis.UniversalClient, window time.Duration, prefix string) *Dedupe {
	if prefix == "" {
		prefix = "spate:"
	}
	d := &Dedupe{rdb: rdb, window: window, prefix: prefix}
	switch {
	case window <= 0:
	case window%time.Second == 0:
		d.ttl = []any{"ex", int64(window / time.Second)}
	default:
		d.ttl = []any{"px", max(1, window.Milliseconds())}
	}
	d.jobs = batcher[dedupeJob]{run: d.run, max: dedupeFlushes, limit: dedupeBatchKeys,
		size: func(j dedupeJob) int { return j.size() }}
	return d
}

const (
	// dedupeFlushes is how many round trips may be in flight.
	dedupeFlushes = 4
	// dedupeBatchKeys caps the keys of one round trip, so that the
	// requests sharing it wait for a short one only.
	dedupeBatchKeys = 5000
)

// batcher runs the jobs of concurrent callers together. A job joins the
// queue; up to max flushes at a time each take the jobs queued, up to limit
// in size (at least one), and run them as one batch, until the queue is
// empty. Alone, a job runs at once; under load, jobs that arrive during a
// round trip share the next.
type batcher[J any] struct {
	run   func([]J) // runs a batch and finishes each of its jobs
	max   int
	size  func(J) int
	limit int

	mu       sync.Mutex
	queue    []J
	flushing int
}

func (b *batcher[J]) add(j J) {
	b.mu.Lock()
	b.queue = append(b.queue, j)
	if b.flushing == b.max {
		b.mu.Unlock()
		return
	}
	b.flushing++
	b.mu.Unlock()
	go b.flush()
}

func (b *batcher[J]) flush() {
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.flushing--
			b.mu.Unlock()
			return
		}
		n, size := 1, b.size(b.queue[0])
		for n < len(b.queue) && size+b.size(b.queue[n]) <= b.limit {
			size += b.size(b.queue[n])
			n++
		}
		jobs := b.queue[:n:n]
		b.queue = b.queue[n:]
		b.mu.Unlock()
		b.run(jobs)
	}
}

// dedupeJob is one request's claims, or its receipts, to be run with
// those of others.
type dedupeJob interface {
	size() int // keys it writes, for dedupeBatchKeys
	// queue adds its commands to p.
	queue(ctx context.Context, d *Dedupe, p redis.Pipeliner)
	// ran reads what its commands got (a pipeline that failed as a whole
	// failed each): a claim adds what it gives back to giveBack, settled
	// receipts the claims they release to dels.
	ran(giveBack, dels *releases)
	// done ends the job, err being the releases' error.
	done(err error)
}

// releases are claims to delete: keys, each with the claim value it must
// still hold.
type releases struct {
	keys   []string
	claims []any
}

func (r *releases) add(key string, claim any) {
	r.keys, r.claims = append(r.keys, key), append(r.claims, claim)
}

// claimJob is one request's claim under its token: vals gets what
// claimed returns for its keys.
type claimJob struct {
	keys   []string
	token  string
	vals   []string
	err    error
	ch     chan struct{}
	state  atomic.Int32 // claimWaiting, claimAnswered or claimAbandoned
	tokens []any
	cmds   []*redis.StatusCmd
}

const (
	claimWaiting int32 = iota
	claimAnswered
	claimAbandoned // the request gave up: the claims it got are given back
)

// settleJob is one request's receipts, by the request's token, and its
// claims to release: keys, each with the claim value it must still hold.
type settleJob struct {
	token        string
	receipts     string // by place in the request; see formatReceipts
	dels         []string
	delsClaimsOf []any
	err          error
	ch           chan struct{}
	cmd          *redis.StatusCmd
}

// run runs the commands of every job in one pipeline: claims, each key
// under a token of its own, and receipts. If go-redis retries the pipeline
// after a lost reply, the keys it claimed the first time hold its own
// tokens, and two claims of one key, in one request or in two, still
// differ. A batch runs under go-redis's own timeouts, whoever gave up.
// Then, in another pipeline, it gives back the claims of a request that
// gave up, or all of a request's when its claims failed, and releases
// those of events a publish did not write (both rare).
func (d *Dedupe) run(jobs []dedupeJob) {
	ctx := context.Background()
	p := d.rdb.Pipeline()
	for _, j := range jobs {
		j.queue(ctx, d, p)
	}
	p.Exec(ctx) // each command tells its own error, redis.Nil for a claim's key that was free
	var giveBack, dels releases
	for _, j := range jobs {
		j.ran(&giveBack, &dels)
	}
	d.release(ctx, giveBack.keys, giveBack.claims) // best effort: what stays expires with the window
	err := d.release(ctx, dels.keys, dels.claims)
	for _, j := range jobs {
		j.done(err)
	}
}

func (j *claimJob) size() int { return len(j.keys) }

// queue adds a SET NX GET of each key. The commands' arguments share one
// slice, and the claim values one string: a claim costs few allocations,
// which at many events a request tell.
func (j *claimJob) queue(ctx context.Context, d *Dedupe, p redis.Pipeliner) {
	j.tokens = claimValues(j.token, len(j.keys))
	j.cmds = make([]*redis.StatusCmd, len(j.keys))
	args := make([]any, 0, (5+len(d.ttl))*len(j.keys))
	for k, key := range j.keys {
		at := len(args)
		args = append(append(append(args, "set", key, j.tokens[k]), d.ttl...), "nx", "get")
		j.cmds[k] = redis.NewStatusCmd(ctx, args[at:len(args):len(args)]...)
		p.Process(ctx, j.cmds[k])
	}
}

// ran answers the request at once: the give-backs that follow are not its.
func (j *claimJob) ran(giveBack, _ *releases) {
	j.vals, j.err = claimed(j.cmds, j.tokens)
	abandoned := !j.state.CompareAndSwap(claimWaiting, claimAnswered)
	for k, key := range j.keys {
		if j.err != nil || abandoned && j.vals[k] == "" {
			giveBack.add(key, j.tokens[k])
		}
	}
	close(j.ch)
}

func (j *claimJob) done(error) {} // answered in ran

func (j *settleJob) size() int { return 1 + len(j.dels) }

func (j *settleJob) queue(ctx context.Context, d *Dedupe, p redis.Pipeliner) {
	if j.receipts != "" {
		j.cmd = p.Set(ctx, d.receiptsKey(j.token), j.receipts, d.window)
	}
}

func (j *settleJob) ran(_, dels *releases) {
	if j.cmd != nil {
		j.err = j.cmd.Err()
	}
	for i, key := range j.dels {
		dels.add(key, j.delsClaimsOf[i])
	}
}

func (j *settleJob) done(err error) {
	j.err = cmp.Or(j.err, err)
	close(j.ch)
}

// A claim's value is pending + ":" + the request's token + ":" + the
// event's place in the request. Receipts, which keys written by earlier
// versions hold, start with a topic name, which cannot hold a colon.
const pending = "pending"

func claimValue(token string, place int) string {
	return pending + ":" + token + ":" + strconv.Itoa(place)
}

// claimValues returns claimValue(token, k) for k from 0 to n-1, as
// substrings of one string.
func claimValues(token string, n int) []any {
	head := pending + ":" + token + ":"
	var b strings.Builder
	b.Grow(n * (len(head) + len(strconv.Itoa(n))))
	var num [20]byte
	for k := range n {
		b.WriteString(head)
		b.Write(strconv.AppendInt(num[:0], int64(k), 10))
	}
	all, vals := b.String(), make([]any, n)
	for k, at := 0, 0; k < n; k++ {
		end := at + len(head) + len(strconv.AppendInt(num[:0], int64(k), 10))
		vals[k], at = all[at:end], end
	}
	return vals
}

// newToken returns a request's token: when it claims, in milliseconds
// since 1970 (base 36), a dot, and 48 random bits (hex). The time tells
// spate dedupe resolve where in Kafka to look for the records of a claim
// that never settled. Tokens of earlier versions are 16 hex digits, and
// say no time.
func newToken(now time.Time) string {
	var b [24]byte
	t := strconv.AppendInt(b[:0], now.UnixMilli(), 36)
	t = append(t, '.')
	return string(fmt.Appendf(t, "%012x", rand.Uint64()>>16))
}

// tokenTime returns when the request with token claimed, if it says.
func tokenTime(token string) (time.Time, bool) {
	ms, _, ok := strings.Cut(token, ".")
	if !ok {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(ms, 36, 64)
	if err != nil || n <= 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(n), true
}

// receiptsKey holds the receipts of the request with token.
func (d *Dedupe) receiptsKey(token string) string {
	return d.prefix + "dedupe-receipts:" + token
}

// scope is whose events' ids fold together: those an edge publishes to
// topic, by principal (the API key or certificate; "" without
// authentication). A key cannot read another key's receipts, nor keep its
// events out, by sending the same source and id; and an edge does not
// take an event another edge wrote to another topic for its own.
type scope struct{ topic, principal string }

// key is where the event's claim, then receipt, is kept: by its scope and
// the event's source and id. The default topic's keys are as they were
// before the topic was part of them.
func (d *Dedupe) key(by scope, ev *spatev1.Event) string {
	var buf [256]byte // hashed, in this order: what was concatenated, in one buffer
	id := buf[:0]
	if by.topic != producers.DefaultTopic { // a topic's name holds neither space nor NUL
		id = append(append(append(id, "topic "...), by.topic...), 0)
	}
	if by.principal != "" {
		id = append(append(append(strconv.AppendInt(id, int64(len(by.principal)), 10), ':'), by.principal...), 0)
	}
	id = append(append(append(id, ev.Source...), 0), ev.Id...)
	h := sha256.Sum256(id)
	k := buf[:0] // id is hashed: its buffer is free again
	k = hex.AppendEncode(append(append(k, d.prefix...), "dedupe:"...), h[:16])
	return string(k)
}

// claimed returns, for each SET NX GET of cmds, which claimed its key for
// tokens[i] if it was free (or already held tokens[i]), "" for a claim, or
// what the key holds: another's claim ("pending:<token>") or a receipt.
func claimed(cmds []*redis.StatusCmd, tokens []any) ([]string, error) {
	vals := make([]string, len(cmds))
	for i, c := range cmds {
		switch v, err := c.Result(); {
		case errors.Is(err, redis.Nil): // it was free: claimed now
		case err != nil:
			return nil, err
		case v != tokens[i]: // another's; its own is this request's, set by a retry of this pipeline
			vals[i] = v
		}
	}
	return vals, nil
}

// release deletes each key keys[i] that still holds the claim value
// claims[i]: a claim another request made since is left alone. Each key
// goes in a script call of its own, all in one pipeline: on Redis Cluster
// the keys are in different slots, and one call over several would fail.
func (d *Dedupe) release(ctx context.Context, keys []string, claims []any) error {
	if len(keys) == 0 {
		return nil
	}
	p := d.rdb.Pipeline()
	for i, k := range keys {
		p.Eval(ctx, releaseScript, []string{k}, claims[i])
	}
	_, err := p.Exec(ctx)
	return err
}

// releaseScript deletes KEYS[1] if it still holds the claim value ARGV[1].
// Releases are rare (a publish failed), so it is sent whole each time.
const releaseScript = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0
`

// claim claims the events' ids under a new token of the request's. It
// returns, per event, nil for an event claimed now (to be published) or the
// receipt of an earlier publish, and whether any is being published by
// another request; then it claims none. When ctx ends first, what it
// claimed is given back.
func (d *Dedupe) claim(ctx context.Context, by scope, evs []*spatev1.Event) (token string, prior []*spatev1.Receipt, busy bool, err error) {
	j := &claimJob{keys: make([]string, len(evs)), token: newToken(time.Now()), ch: make(chan struct{})}
	for i, ev := range evs {
		j.keys[i] = d.key(by, ev)
	}
	d.jobs.add(j)
	select {
	case <-j.ch:
	case <-ctx.Done():
		if j.state.CompareAndSwap(claimWaiting, claimAbandoned) {
			return "", nil, false, fmt.Errorf("dedupe claim: %w", ctx.Err())
		}
		<-j.ch // answered just now
	}
	if j.err != nil {
		return "", nil, false, fmt.Errorf("dedupe claim: %w", j.err)
	}
	prior = make([]*spatev1.Receipt, len(evs))
	var others []int // events another request claimed
	for i, v := range j.vals {
		switch {
		case v == "": // claimed now
		case v == pending || strings.HasPrefix(v, pending+":"):
			others = append(others, i)
		default: // a receipt, as earlier versions wrote them
			r, perr := parseReceipt(evs[i].Id, v)
			if perr != nil {
				err = cmp.Or(err, perr)
				continue
			}
			prior[i] = r
		}
	}
	if err == nil && len(others) > 0 {
		recording := d.recordingOf(j.vals, others) // before the read: one that ends after it is waited for
		busy, err = d.receiptsOf(ctx, evs, j.vals, others, prior)
		if busy && err == nil && d.awaitRecording(ctx, recording, others, prior) {
			busy, err = d.receiptsOf(ctx, evs, j.vals, others, prior)
		}
	}
	if busy || err != nil { // give back what this request claimed; the pending ones are another's
		var keys []string
		var claims []any
		for i, v := range j.vals {
			if v == "" {
				keys, claims = append(keys, j.keys[i]), append(claims, claimValue(j.token, i))
			}
		}
		d.release(context.WithoutCancel(ctx), keys, claims) // best effort: what stays expires with the window
	}
	if err != nil {
		return "", nil, false, fmt.Errorf("dedupe claim: %w", err)
	}
	return j.token, prior, busy, nil
}

// receiptsOf looks up, for the events at others, the receipts of the
// requests whose claims vals holds, into prior. It reports whether any has
// none yet: a publish still in flight.
func (d *Dedupe) receiptsOf(ctx context.Context, evs []*spatev1.Event, vals []string, others []int, prior []*spatev1.Receipt) (busy bool, err error) {
	p := d.rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(others))
	places := make([]int, len(others))
	for n, i := range others {
		token, place, ok := strings.Cut(strings.TrimPrefix(vals[i], pending+":"), ":")
		if places[n], err = strconv.Atoi(place); !ok || err != nil {
			busy = true // a claim that names no place (an earlier version's): in flight
			continue
		}
		gets[n] = p.Get(ctx, d.receiptsKey(token))
	}
	if p.Len() == 0 {
		return busy, nil
	}
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return false, err
	}
	for n, i := range others {
		if gets[n] == nil {
			continue
		}
		v, err := gets[n].Result()
		if errors.Is(err, redis.Nil) {
			busy = true
			continue
		} else if err != nil {
			return false, err
		}
		rs := strings.Split(v, receiptSep)
		if places[n] >= len(rs) || rs[places[n]] == "" {
			busy = true // not written, yet claimed: it must be released soon
			continue
		}
		if prior[i], err = parseReceipt(evs[i].Id, rs[places[n]]); err != nil {
			return false, err
		}
	}
	return busy, nil
}

// settle records, under the request's token, the receipts of events that
// were written, and releases the claims of those that were not (receipt
// nil). The claims of events whose outcome is not known (unknownOutcome)
// stay until the window ends: a retry is answered 409 rather than written
// a second time. Only the events claimed by this request (prior nil) are
// touched.
// If that fails, it returns the error and tries again in the background,
// backing off up to settleRetryMax, for as long as the window lasts or
// until the store's Redis client is closed: without their receipts, the
// claims would answer every retry 409.
func (d *Dedupe) settle(by scope, token string, evs []*spatev1.Event, prior, rs []*spatev1.Receipt) error {
	j := settleJob{token: token}
	written := make([]*spatev1.Receipt, len(evs))
	for i, ev := range evs {
		switch {
		case prior[i] != nil:
		case rs != nil && rs[i] == unknownOutcome:
		case rs != nil && rs[i] != nil:
			written[i] = rs[i]
		default:
			j.dels, j.delsClaimsOf = append(j.dels, d.key(by, ev)), append(j.delsClaimsOf, claimValue(token, i))
		}
	}
	j.receipts = formatReceipts(written)
	if j.receipts == "" && len(j.dels) == 0 {
		return nil
	}
	try := func() error {
		job := j
		job.ch = make(chan struct{})
		d.jobs.add(&job)
		<-job.ch
		return job.err
	}
	err := try()
	if err == nil {
		return nil
	}
	d.retrying.Add(1)
	go func() {
		defer d.retrying.Done()
		until := time.Now().Add(d.window)
		for wait := 100 * time.Millisecond; time.Now().Before(until); wait = min(2*wait, settleRetryMax) {
			time.Sleep(wait)
			// Once the store's client is closed (the edge closed), no
			// try can succeed: the claims stay for the window.
			if err := try(); err == nil || errors.Is(err, redis.ErrClosed) {
				return
			}
		}
	}()
	return fmt.Errorf("dedupe settle (trying again in the background): %w", err)
}

// settleAsync is settle, run in the background, counted by wg; onErr is
// called with its error, if any. A claim of this store that meets the
// request's claims in the meantime waits for the receipts rather than
// answer busy: a retry sent to the same edge right after the request's
// answer gets its receipt.
func (d *Dedupe) settleAsync(by scope, token string, evs []*spatev1.Event, prior, rs []*spatev1.Receipt, wg *sync.WaitGroup, onErr func(error)) {
	done := make(chan struct{})
	d.recording.Store(token, done)
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := d.settle(by, token, evs, prior, rs)
		d.recording.Delete(token)
		close(done)
		if err != nil {
			onErr(err)
		}
	}()
}

// recordingOf returns, by place in others, the channel of the request whose
// claim vals holds there if settleAsync is recording its receipts.
func (d *Dedupe) recordingOf(vals []string, others []int) []chan struct{} {
	var chs []chan struct{}
	for n, i := range others {
		token, _, _ := strings.Cut(strings.TrimPrefix(vals[i], pending+":"), ":")
		if ch, ok := d.recording.Load(token); ok {
			if chs == nil {
				chs = make([]chan struct{}, len(others))
			}
			chs[n] = ch.(chan struct{})
		}
	}
	return chs
}

// awaitRecording waits, up to ctx, for the recordings chs (recordingOf)
// of the events at others that prior has no receipt of yet. It reports
// whether it waited for any, and all it waited for ended.
func (d *Dedupe) awaitRecording(ctx context.Context, chs []chan struct{}, others []int, prior []*spatev1.Receipt) bool {
	waited := false
	for n, i := range others {
		if chs == nil || chs[n] == nil || prior[i] != nil {
			continue
		}
		select {
		case <-chs[n]:
			waited = true
		case <-ctx.Done():
			return false
		}
	}
	return waited
}

// settleRetryMax caps the wait between two tries of a settle that failed.
const settleRetryMax = 10 * time.Second

// receiptSep separates the receipts of a request: neither topic names nor
// numbers hold it.
const receiptSep = "\n"

// formatReceipts renders the receipts of a request by place, "" for an
// event without one; "" when none has one. A receipt is its topic, its
// partition and its offset, NUL between them.
func formatReceipts(rs []*spatev1.Receipt) string {
	var b []byte
	some := false
	for i, r := range rs {
		if i > 0 {
			b = append(b, receiptSep...)
		}
		if r != nil {
			b = append(append(b, r.Topic...), 0)
			b = append(strconv.AppendInt(b, int64(r.Partition), 10), 0)
			b = strconv.AppendInt(b, r.Offset, 10)
			some = true
		}
	}
	if !some {
		return ""
	}
	return string(b)
}

func parseReceipt(id, v string) (*spatev1.Receipt, error) {
	parts := strings.Split(v, "\x00")
	if len(parts) != 3 {
		return nil, fmt.Errorf("dedupe: unreadable receipt %q", v)
	}
	p, err1 := strconv.ParseInt(parts[1], 10, 32)
	o, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("dedupe: unreadable receipt %q", v)
	}
	return &spatev1.Receipt{Id: id, Topic: parts[0], Partition: int32(p), Offset: o}, nil
}
