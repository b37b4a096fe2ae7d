package fanout

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Trim applies the routes' retention every interval until ctx ends. Each
// pass scans the streams a route can write, and trims each to its MaxLen
// and MaxAge, but never past the oldest entry that a consumer group on the
// stream still needs (unread, or read and pending) unless the route is
// Lossy. It also refreshes the groups' lag and pending metrics. Errors are
// logged and the next pass tries again.
func (w *Writer) Trim(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := w.TrimOnce(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("trim", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// TrimOnce runs one trim pass over every route with a retention.
func (w *Writer) TrimOnce(ctx context.Context) error {
	for i := range w.routes {
		rt := &w.routes[i]
		if rt.MaxLen == 0 && rt.MaxAge == 0 {
			continue
		}
		iter := w.rdb.ScanType(ctx, 0, rt.pattern(), 1000, "stream").Iterator()
		for iter.Next(ctx) {
			if err := w.trimStream(ctx, rt, iter.Val()); err != nil {
				return fmt.Errorf("trim %s: %w", iter.Val(), err)
			}
		}
		if err := iter.Err(); err != nil {
			return fmt.Errorf("scan %s: %w", rt.pattern(), err)
		}
	}
	return nil
}

// trimStream trims one stream of rt.
func (w *Writer) trimStream(ctx context.Context, rt *Route, key string) error {
	var cut streamID // entries below cut go; zero: none
	if rt.MaxAge > 0 {
		cut = streamID{ms: uint64(time.Now().Add(-rt.MaxAge).UnixMilli())}
	}
	if rt.MaxLen > 0 {
		kept, err := w.rdb.XRevRangeN(ctx, key, "+", "-", rt.MaxLen).Result()
		if err != nil {
			return err
		}
		if int64(len(kept)) == rt.MaxLen {
			oldest, err := parseStreamID(kept[len(kept)-1].ID)
			if err != nil {
				return err
			}
			cut = maxID(cut, oldest)
		}
	}
	if cut.isZero() {
		return nil
	}
	safe, err := w.safeCut(ctx, key)
	if err != nil {
		return err
	}
	if !rt.Lossy && safe.less(cut) {
		cut = safe
	}
	n, err := w.rdb.XTrimMinID(ctx, key, cut.String()).Result()
	if err != nil {
		return err
	}
	w.metrics.trimmed.Add(float64(n))
	return nil
}

// safeCut returns the oldest entry any consumer group on the stream still
// needs: its oldest pending entry, or the first after its last delivered
// one. With no groups it returns the maximum id: nothing to protect.
func (w *Writer) safeCut(ctx context.Context, key string) (streamID, error) {
	groups, err := w.rdb.XInfoGroups(ctx, key).Result()
	if err != nil {
		return streamID{}, err
	}
	safe := streamID{ms: ^uint64(0), seq: ^uint64(0)}
	for _, g := range groups {
		w.metrics.lag.WithLabelValues(key, g.Name).Set(float64(g.Lag))
		w.metrics.pending.WithLabelValues(key, g.Name).Set(float64(g.Pending))
		last, err := parseStreamID(g.LastDeliveredID)
		if err != nil {
			return streamID{}, err
		}
		need := last.next()
		if g.Pending > 0 {
			p, err := w.rdb.XPending(ctx, key, g.Name).Result()
			if err != nil {
				return streamID{}, err
			}
			low, err := parseStreamID(p.Lower)
			if err != nil {
				return streamID{}, err
			}
			if low.less(need) {
				need = low
			}
		}
		if need.less(safe) {
			safe = need
		}
	}
	return safe, nil
}

// streamID is a Redis stream entry id, ms-seq.
type streamID struct{ ms, seq uint64 }

func parseStreamID(s string) (streamID, error) {
	msPart, seqPart, _ := strings.Cut(s, "-")
	ms, err := strconv.ParseUint(msPart, 10, 64)
	if err != nil {
		return streamID{}, fmt.Errorf("stream id %q: %w", s, err)
	}
	var seq uint64
	if seqPart != "" {
		if seq, err = strconv.ParseUint(seqPart, 10, 64); err != nil {
			return streamID{}, fmt.Errorf("stream id %q: %w", s, err)
		}
	}
	return streamID{ms, seq}, nil
}

func (a streamID) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}
func (a streamID) isZero() bool         { return a == streamID{} }
func (a streamID) less(b streamID) bool { return a.ms < b.ms || a.ms == b.ms && a.seq < b.seq }

// next is the smallest id after a.
func (a streamID) next() streamID {
	if a.seq == ^uint64(0) {
		return streamID{ms: a.ms + 1}
	}
	return streamID{a.ms, a.seq + 1}
}

func maxID(a, b streamID) streamID {
	if a.less(b) {
		return b
	}
	return a
}
