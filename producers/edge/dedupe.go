package edge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// Dedupe remembers in Redis, for a window, the events an edge published, by
// source and id (the CloudEvents identity): an event sent again within the
// window gets its first receipt back and is not published a second time.
//
// An event's id is claimed before it is published and given its receipt once
// Kafka acknowledged it. A copy sent while the first is still being
// published gets 409, retry later. When a publish fails, the claim is
// released; when its outcome is unknown (a timeout), the claim stays until
// Kafka settles the record, so a retry can never write it twice.
type Dedupe struct {
	rdb    redis.UniversalClient
	window time.Duration
	prefix string
}

// NewDedupe returns a store in rdb remembering events for window, under
// keys starting with prefix (zero: "spate:").
func NewDedupe(rdb redis.UniversalClient, window time.Duration, prefix string) *Dedupe {
	if prefix == "" {
		prefix = "spate:"
	}
	return &Dedupe{rdb: rdb, window: window, prefix: prefix}
}

const pending = "pending"

func (d *Dedupe) key(ev *spatev1.Event) string {
	h := sha256.Sum256([]byte(ev.Source + "\x00" + ev.Id))
	return d.prefix + "dedupe:" + hex.EncodeToString(h[:16])
}

// claimScript claims each key that is free and returns, per key, "" for a
// claim, or what the key holds: "pending" or a receipt.
var claimScript = redis.NewScript(`
local out = {}
for i, k in ipairs(KEYS) do
	if redis.call('SET', k, 'pending', 'NX', 'PX', ARGV[1]) then
		out[i] = ''
	else
		out[i] = redis.call('GET', k) or ''
	end
end
return out
`)

// claim claims the events' ids. It returns, per event, nil for an event
// claimed now (to be published) or the receipt of an earlier publish, and
// whether any is being published by another request; then it claims none.
func (d *Dedupe) claim(ctx context.Context, evs []*spatev1.Event) (prior []*spatev1.Receipt, busy bool, err error) {
	keys := make([]string, len(evs))
	for i, ev := range evs {
		keys[i] = d.key(ev)
	}
	vals, err := claimScript.Run(ctx, d.rdb, keys, d.window.Milliseconds()).StringSlice()
	if err != nil {
		return nil, false, fmt.Errorf("dedupe claim: %w", err)
	}
	prior = make([]*spatev1.Receipt, len(evs))
	var mine []*spatev1.Event
	for i, v := range vals {
		switch v {
		case "":
			mine = append(mine, evs[i])
		case pending:
			busy = true
		default:
			r, err := parseReceipt(evs[i].Id, v)
			if err != nil {
				return nil, false, err
			}
			prior[i] = r
		}
	}
	if busy { // give back what this request claimed; the pending ones are another's
		d.settle(ctx, mine, make([]*spatev1.Receipt, len(mine)), nil)
	}
	return prior, busy, nil
}

// settle records the receipts of events that were written and releases the
// claims of those that were not (receipt nil). Only the events claimed by
// this request (prior nil) are touched.
func (d *Dedupe) settle(ctx context.Context, evs []*spatev1.Event, prior, rs []*spatev1.Receipt) error {
	p := d.rdb.Pipeline()
	for i, ev := range evs {
		switch {
		case prior[i] != nil:
		case rs != nil && rs[i] != nil:
			p.Set(ctx, d.key(ev), formatReceipt(rs[i]), d.window)
		default:
			p.Del(ctx, d.key(ev))
		}
	}
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("dedupe settle: %w", err)
	}
	return nil
}

func formatReceipt(r *spatev1.Receipt) string {
	return r.Topic + "\x00" + strconv.Itoa(int(r.Partition)) + "\x00" + strconv.FormatInt(r.Offset, 10)
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
