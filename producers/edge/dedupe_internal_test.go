package edge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/spatetest"
)

// A request that gives up its claim after the claim expired and another
// request claimed the id anew must leave the other's claim alone: deleting
// it would let a third copy be published.
func TestReleaseLeavesAnothersClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := spatetest.RedisClient(t)
	d := NewDedupe(rdb, time.Hour, spatetest.KeyPrefix(t))
	ev := []*spatev1.Event{{Id: "e1", Source: "s"}}

	first, _, busy, err := d.claim(ctx, testScope, ev)
	if err != nil || busy {
		t.Fatalf("first claim: busy %v, %v", busy, err)
	}
	if err := rdb.Del(ctx, d.key(testScope, ev[0])).Err(); err != nil { // as if the window ended
		t.Fatal(err)
	}
	if _, _, busy, err := d.claim(ctx, testScope, ev); err != nil || busy {
		t.Fatalf("second claim, after the first expired: busy %v, %v", busy, err)
	}
	// The first request's publish failed at last: it gives its claim back.
	if err := d.settle(testScope, first, ev, make([]*spatev1.Receipt, 1), nil); err != nil {
		t.Fatal(err)
	}
	if _, _, busy, err := d.claim(ctx, testScope, ev); err != nil || !busy {
		t.Fatalf("third claim while the second is in flight: busy %v, %v; want busy", busy, err)
	}
}

// TestUnreadableReceiptGivesBackTheRequestsClaims: a request whose claim
// finds a receipt it cannot read fails, and gives back the ids it claimed
// meanwhile, so that they can be published by a retry.
func TestUnreadableReceiptGivesBackTheRequestsClaims(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := spatetest.RedisClient(t)
	d := NewDedupe(rdb, time.Hour, spatetest.KeyPrefix(t))
	fresh, garbled := &spatev1.Event{Id: "e1", Source: "s"}, &spatev1.Event{Id: "e2", Source: "s"}
	if err := rdb.Set(ctx, d.key(testScope, garbled), "not a receipt", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := d.claim(ctx, testScope, []*spatev1.Event{fresh, garbled}); err == nil {
		t.Fatal("claim over an unreadable receipt: no error, want one")
	}
	if _, _, busy, err := d.claim(ctx, testScope, []*spatev1.Event{fresh}); err != nil || busy {
		t.Fatalf("claim of e1 alone afterwards: busy %v, %v; want it free", busy, err)
	}
}

// failFirstReceipts fails the first pipeline that writes a request's
// receipts, as a Redis that went away for a moment would.
type failFirstReceipts struct{ failed atomic.Bool }

func (h *failFirstReceipts) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *failFirstReceipts) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *failFirstReceipts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if c.Name() == "set" && strings.Contains(fmt.Sprint(c.Args()[1]), "dedupe-receipts:") && h.failed.CompareAndSwap(false, true) {
				err := errors.New("injected: redis went away")
				for _, c := range cmds {
					c.SetErr(err)
				}
				return err
			}
		}
		return next(ctx, cmds)
	}
}

// TestSettleTriesAgain: when the receipts of a publish Kafka acknowledged
// cannot be written at once, they are written later, so a retry gets its
// receipt rather than 409 for the whole window.
func TestSettleTriesAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := spatetest.RedisClient(t)
	rdb.AddHook(&failFirstReceipts{})
	d := NewDedupe(rdb, time.Hour, spatetest.KeyPrefix(t))
	ev := []*spatev1.Event{{Id: "e1", Source: "s"}}
	token, _, busy, err := d.claim(ctx, testScope, ev)
	if err != nil || busy {
		t.Fatalf("claim: busy %v, %v", busy, err)
	}
	written := []*spatev1.Receipt{{Id: "e1", Topic: "events", Partition: 2, Offset: 7}}
	if err := d.settle(testScope, token, ev, make([]*spatev1.Receipt, 1), written); err == nil {
		t.Fatal("settle: no error, want the injected one")
	}
	spatetest.Eventually(t, 10*time.Second, func() string {
		_, prior, busy, err := d.claim(ctx, testScope, ev)
		switch {
		case err != nil:
			return err.Error()
		case busy || prior[0] == nil:
			return fmt.Sprintf("retry: busy %v, receipt %v; want the receipt", busy, prior[0])
		case prior[0].Offset != 7:
			return fmt.Sprintf("retry: receipt %v, want offset 7", prior[0])
		}
		return ""
	})
}

// TestSettleRetriesEndWithTheClient: a settle trying again in the
// background stops once the store's Redis client is closed, as it is after
// the edge closed, rather than trying, in vain, for the rest of the window.
func TestSettleRetriesEndWithTheClient(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := spatetest.RedisClientOf(t, spatetest.Redis(t))
	d := NewDedupe(rdb, time.Hour, spatetest.KeyPrefix(t))
	ev := []*spatev1.Event{{Id: "e1", Source: "s"}}
	token, _, busy, err := d.claim(ctx, testScope, ev)
	if err != nil || busy {
		t.Fatalf("claim: busy %v, %v", busy, err)
	}
	rdb.Close() // the settle's first try fails, and so would every other
	written := []*spatev1.Receipt{{Id: "e1", Topic: "events", Partition: 2, Offset: 7}}
	if err := d.settle(testScope, token, ev, make([]*spatev1.Receipt, 1), written); err == nil {
		t.Fatal("settle: no error, want one")
	}
	ended := make(chan struct{})
	go func() {
		d.retrying.Wait()
		close(ended)
	}()
	select {
	case <-ended:
	case <-time.After(time.Minute):
		t.Fatal("the settle still tries again a minute after its client closed")
	}
}

// testScope is the scope of the events of these tests.
var testScope = scope{producers.DefaultTopic, "k"}

// TestDefaultTopicKeysAreUnchanged: the keys of the default topic's events
// are those earlier releases used, and another topic's those of the release
// that keyed ids by topic, so that retries across an upgrade are still
// recognised.
func TestDefaultTopicKeysAreUnchanged(t *testing.T) {
	d := NewDedupe(nil, time.Hour, "")
	ev := &spatev1.Event{Source: "/shop", Id: "e1"}
	for principal, id := range map[string]string{"": "/shop\x00e1", "checkout": "8:checkout\x00/shop\x00e1"} {
		h := sha256.Sum256([]byte(id))
		if got, want := d.key(scope{producers.DefaultTopic, principal}, ev), "spate:dedupe:"+hex.EncodeToString(h[:16]); got != want {
			t.Errorf("key of principal %q: %s, want %s as before", principal, got, want)
		}
		h = sha256.Sum256([]byte("topic orders\x00" + id))
		if got, want := d.key(scope{"orders", principal}, ev), "spate:dedupe:"+hex.EncodeToString(h[:16]); got != want {
			t.Errorf("key of principal %q on topic orders: %s, want %s as before", principal, got, want)
		}
	}
}

// TestClaimValues checks that the claim values built together are each
// claimValue's: a claim another request finds names its token and place.
func TestClaimValues(t *testing.T) {
	for _, n := range []int{0, 1, 9, 10, 11, 100, 1001} {
		vals := claimValues("0123456789abcdef", n)
		if len(vals) != n {
			t.Fatalf("n %d: %d values", n, len(vals))
		}
		for k, v := range vals {
			if want := claimValue("0123456789abcdef", k); v != want {
				t.Fatalf("n %d: value %d is %q, want %q", n, k, v, want)
			}
		}
	}
}

// TestClaimsExpireWithTheWindow: a claim, and the receipts that settle it,
// are kept for the window, whether it is whole seconds or not; as go-redis
// words it, no window (0) is no expiry, and one under a millisecond is one.
func TestClaimsExpireWithTheWindow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := spatetest.RedisClient(t)
	for _, window := range []time.Duration{90 * time.Second, 2500 * time.Millisecond, 0, 500 * time.Microsecond} {
		d := NewDedupe(rdb, window, spatetest.KeyPrefix(t)+window.String()+":")
		ev := []*spatev1.Event{{Id: "e1", Source: "s"}}
		token, _, _, err := d.claim(ctx, testScope, ev)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.settle(testScope, token, ev, make([]*spatev1.Receipt, 1), []*spatev1.Receipt{{Id: "e1", Topic: "t", Offset: 1}}); err != nil {
			t.Fatal(err)
		}
		if window < time.Millisecond {
			if ttl, err := rdb.PTTL(ctx, d.key(testScope, ev[0])).Result(); err != nil || window == 0 && ttl != -1 {
				t.Errorf("window %v: the claim expires in %v (%v), want never", window, ttl, err)
			}
			continue
		}
		for _, key := range []string{d.key(testScope, ev[0]), d.receiptsKey(token)} {
			ttl, err := rdb.PTTL(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			if ttl > window || ttl < window-250*time.Millisecond {
				t.Errorf("window %v: %s expires in %v", window, key, ttl)
			}
		}
	}
}

// TestHeldTellsWhenAClaimWasMade: a claim's token says when it was made,
// to the millisecond; a claim of an earlier version, whose token is 16 hex
// digits, says no time, and Held gives it a zero Since. An event whose
// request settled gets its receipt, even beside an earlier version's claim
// that names no place; so does a resolved claim, which holds its receipt
// in its key.
func TestHeldTellsWhenAClaimWasMade(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := spatetest.RedisClient(t)
	d := NewDedupe(rdb, time.Hour, spatetest.KeyPrefix(t))
	ev := func(id string) *spatev1.Event { return &spatev1.Event{Id: id, Source: "s"} }
	placeless, now, old, settled, resolved := ev("placeless"), ev("now"), ev("old"), ev("settled"), ev("resolved")
	token, prior, busy, err := d.claim(ctx, testScope, []*spatev1.Event{settled})
	if err != nil || busy {
		t.Fatalf("claim: busy %v, %v", busy, err)
	}
	if err := d.settle(testScope, token, []*spatev1.Event{settled}, prior, []*spatev1.Receipt{{Id: "settled", Topic: "t", Partition: 1, Offset: 7}}); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Truncate(time.Millisecond)
	if _, _, busy, err := d.claim(ctx, testScope, []*spatev1.Event{now}); err != nil || busy {
		t.Fatalf("claim: busy %v, %v", busy, err)
	}
	after := time.Now()
	for e, v := range map[*spatev1.Event]string{placeless: pending + ":0123456789abcdef", old: claimValue("0123456789abcdef", 0), resolved: "t\x003\x0042"} {
		if err := rdb.Set(ctx, d.key(testScope, e), v, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	hs, err := d.Held(ctx, testScope.topic, testScope.principal, []*spatev1.Event{placeless, now, old, settled, resolved})
	if err != nil {
		t.Fatal(err)
	}
	if h := hs[0]; h.Claim == "" || h.Receipt != nil || !h.Since.IsZero() {
		t.Errorf("a claim that names no place: %+v", h)
	}
	if h := hs[1]; h.Claim == "" || h.Receipt != nil || h.Since.Before(before) || h.Since.After(after) || h.TTL <= 0 || h.TTL > time.Hour {
		t.Errorf("a claim made between %v and %v: %+v", before, after, h)
	}
	if h := hs[2]; h.Claim == "" || !h.Since.IsZero() {
		t.Errorf("a claim of an earlier version: %+v, want it claimed, at no time said", h)
	}
	for i, want := range map[int]string{3: "settled t/1@7", 4: "resolved t/3@42"} {
		h := hs[i]
		if h.Claim != "" || h.Receipt == nil || fmt.Sprintf("%s %s/%d@%d", h.Receipt.Id, h.Receipt.Topic, h.Receipt.Partition, h.Receipt.Offset) != want {
			t.Errorf("event %d: %+v, want the receipt %s", i, h, want)
		}
	}
}

// holdReceipts is a go-redis hook that holds back the pipelines writing a
// request's receipts (held is closed once one is held) until one reading
// them has run: a retry's claim then reads before the receipts it meets
// are written. If after is set, the reading pipeline then returns only
// once it is closed.
type holdReceipts struct {
	held, read         chan struct{}
	after              <-chan struct{}
	heldOnce, readOnce sync.Once
}

func (h *holdReceipts) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *holdReceipts) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h *holdReceipts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		writes, reads := false, false
		for _, c := range cmds {
			if args := c.Args(); len(args) >= 2 && strings.Contains(fmt.Sprint(args[1]), "dedupe-receipts:") {
				writes = writes || args[0] == "set"
				reads = reads || args[0] == "get"
			}
		}
		if writes {
			h.heldOnce.Do(func() { close(h.held) })
			<-h.read
		}
		err := next(ctx, cmds)
		if reads {
			first := false
			h.readOnce.Do(func() { first = true; close(h.read) })
			if first && h.after != nil {
				<-h.after
			}
		}
		return err
	}
}

// TestRetryMeetsReceiptsBeingRecorded: a request's receipts are recorded
// while its answer goes out (settleAsync). A retry to the same store that
// reads them before they are written gets its receipt rather than busy
// (409): it waits for them, whether they are still being recorded when it
// has read, or were recorded just after its read.
func TestRetryMeetsReceiptsBeingRecorded(t *testing.T) {
	t.Parallel()
	for _, recordedBeforeTheWait := range []bool{false, true} {
		t.Run(fmt.Sprint("recorded before the wait ", recordedBeforeTheWait), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := spatetest.RedisClient(t)
			hold := &holdReceipts{held: make(chan struct{}), read: make(chan struct{})}
			rdb.AddHook(hold)
			d := NewDedupe(rdb, time.Hour, spatetest.KeyPrefix(t))
			evs := []*spatev1.Event{{Id: "e1", Source: "s"}}
			token, prior, busy, err := d.claim(ctx, testScope, evs)
			if err != nil || busy {
				t.Fatalf("claim: busy %v, %v", busy, err)
			}
			var settling sync.WaitGroup
			d.settleAsync(testScope, token, evs, prior, []*spatev1.Receipt{{Id: "e1", Topic: "t", Partition: 2, Offset: 9}}, &settling, func(err error) { t.Error(err) })
			if recordedBeforeTheWait {
				ch, _ := d.recording.Load(token)
				hold.after = ch.(chan struct{}) // closed once settleAsync is done
			}
			<-hold.held // the retry's claim goes in a round trip of its own
			_, prior, busy, err = d.claim(ctx, testScope, evs)
			if err != nil || busy || prior[0] == nil || prior[0].Partition != 2 || prior[0].Offset != 9 {
				t.Fatalf("retry while the receipts are being recorded: busy %v, receipts %v, %v; want the receipt t/2@9", busy, prior, err)
			}
			settling.Wait()
		})
	}
}
