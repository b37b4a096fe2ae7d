package edge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// Held is what a dedupe store holds for one event.
type Held struct {
	Key string
	// Receipt is the event's first receipt, once its publish settled.
	Receipt *spatev1.Receipt
	// Claim is the claim of a publish whose receipts are not recorded,
	// "" when there is none: the publish of a running edge, or of one
	// that stopped before Kafka answered it or before it recorded them.
	Claim string
	// Since is when Claim was made, zero when it does not say (a claim
	// of an earlier version).
	Since time.Time
	// TTL is how long the store remembers the event still: 0 when it
	// does not hold it, negative when it holds it for ever.
	TTL time.Duration
}

// Held returns what the store holds for each event published by an edge
// of topic under principal: the name of the API key or of the client
// certificate, "" for an edge without either.
func (d *Dedupe) Held(ctx context.Context, topic, principal string, evs []*spatev1.Event) ([]Held, error) {
	by := scope{topic, principal}
	p := d.rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(evs))
	ttls := make([]*redis.DurationCmd, len(evs))
	hs := make([]Held, len(evs))
	for i, ev := range evs {
		hs[i].Key = d.key(by, ev)
		gets[i], ttls[i] = p.Get(ctx, hs[i].Key), p.PTTL(ctx, hs[i].Key)
	}
	p.Exec(ctx) // each command tells its own error: redis.Nil for a key not held
	vals := make([]string, len(evs))
	receipts := make([]*spatev1.Receipt, len(evs))
	var claimed []int
	for i, ev := range evs {
		v, err := gets[i].Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err = cmp.Or(err, ttls[i].Err()); err != nil {
			return nil, fmt.Errorf("dedupe: %w", err)
		}
		vals[i] = v
		switch ttl := ttls[i].Val(); {
		case ttl == -1: // no expiry
			hs[i].TTL = -1
		case ttl > 0:
			hs[i].TTL = ttl
		}
		if v == pending || strings.HasPrefix(v, pending+":") {
			claimed = append(claimed, i)
			continue
		}
		if receipts[i], err = parseReceipt(ev.Id, v); err != nil {
			return nil, err
		}
	}
	if len(claimed) > 0 {
		if _, err := d.receiptsOf(ctx, evs, vals, claimed, receipts); err != nil {
			return nil, fmt.Errorf("dedupe: %w", err)
		}
	}
	for i := range hs {
		hs[i].Receipt = receipts[i]
	}
	for _, i := range claimed {
		if receipts[i] != nil {
			continue
		}
		hs[i].Claim = vals[i]
		token, _, _ := strings.Cut(strings.TrimPrefix(vals[i], pending+":"), ":")
		hs[i].Since, _ = tokenTime(token)
	}
	return hs, nil
}

// Resolve ends h's claim, that of a publish that will never settle: its
// edge stopped before Kafka answered. Given r, the event's record found in
// Kafka, the claim becomes r, the receipt a retry gets for the rest of the
// window; given nil, the claim is released, and a retry publishes the
// event. It reports whether the key still held h.Claim: if not, it changed
// nothing.
func (d *Dedupe) Resolve(ctx context.Context, h Held, r *spatev1.Receipt) (bool, error) {
	if h.Claim == "" {
		return false, errors.New("dedupe: no claim to resolve")
	}
	script, args := releaseScript, []any{h.Claim}
	if r != nil {
		script, args = resolveScript, append(args, formatReceipts([]*spatev1.Receipt{r}))
	}
	n, err := d.rdb.Eval(ctx, script, []string{h.Key}, args...).Int64()
	if err != nil {
		return false, fmt.Errorf("dedupe: %w", err)
	}
	return n == 1, nil
}

// resolveScript sets KEYS[1] to the receipt ARGV[2], keeping its expiry, if
// it still holds the claim value ARGV[1]. A key holding a receipt itself is
// read by every version.
const resolveScript = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
	redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
	return 1
end
return 0
`
