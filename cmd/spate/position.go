package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// position is a place in each partition of a topic, as operators give it
// on the command line: earliest, latest, a time (RFC 3339), a duration ago
// (-24h) or, where the command allows it, an offset.
type position struct {
	kind   positionKind
	time   time.Time // atTime
	offset int64     // atOffset
	text   string    // as given
}

type positionKind int

const (
	atEarliest positionKind = iota
	atLatest
	atTime
	atOffset
)

func (p position) String() string { return p.text }

// parsePosition reads s, a position given by flag, relative to now. An
// offset is allowed only if offsets is true.
func parsePosition(flag, s string, now time.Time, offsets bool) (position, error) {
	want := "earliest, latest, a time (RFC 3339, e.g. 2026-11-23T08:00:00Z) or a duration ago (e.g. -24h)"
	if offsets {
		want += " or an offset"
	}
	p := position{text: s}
	switch {
	case s == "earliest":
		p.kind = atEarliest
	case s == "latest":
		p.kind = atLatest
	case strings.HasPrefix(s, "-"):
		d, err := time.ParseDuration(s[1:])
		if err != nil || d <= 0 {
			return p, fmt.Errorf("--%s %q: a duration ago is written like -24h or -90m; want %s", flag, s, want)
		}
		p.kind, p.time = atTime, now.Add(-d)
	case strings.ContainsAny(s, "T:"):
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return p, fmt.Errorf("--%s %q: not an RFC 3339 time (%v); want %s", flag, s, err, want)
		}
		p.kind, p.time = atTime, t
	default:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || !offsets {
			return p, fmt.Errorf("--%s %q: want %s", flag, s, want)
		}
		p.kind, p.offset = atOffset, n
	}
	return p, nil
}

// errNoTopic reports that a topic does not exist.
var errNoTopic = errors.New("no such topic")

// resolve returns the offset at p in each partition of topic: the first
// offset at or after a time (the end offset when every record is older),
// the start or end offset, or a given offset, which must lie between the
// partition's start and end.
func (p position) resolve(ctx context.Context, adm *kadm.Client, topic string) (map[int32]int64, error) {
	starts, ends, err := bounds(ctx, adm, topic)
	if err != nil {
		return nil, err
	}
	var listed kadm.ListedOffsets
	switch p.kind {
	case atEarliest:
		return starts, nil
	case atLatest:
		return ends, nil
	case atTime:
		// Negative timestamps ask Kafka for special offsets (-1 the end,
		// -2 the start); any time before 1970 means the first record.
		if listed, err = adm.ListOffsetsAfterMilli(ctx, max(p.time.UnixMilli(), 0), topic); err == nil {
			err = listed.Error()
		}
		if err != nil {
			return nil, fmt.Errorf("offsets of %s at %s: %w", topic, p.time.Format(time.RFC3339), err)
		}
		offs := make(map[int32]int64, len(ends))
		for part, end := range ends {
			o, ok := listed.Lookup(topic, part)
			if !ok || o.Offset < 0 {
				offs[part] = end
				continue
			}
			offs[part] = o.Offset
		}
		return offs, nil
	default:
		offs := make(map[int32]int64, len(ends))
		for part, end := range ends {
			if p.offset < starts[part] || p.offset > end {
				return nil, fmt.Errorf("offset %d is outside partition %d of %s: its positions run from %d (its oldest record) to %d (past its newest)", p.offset, part, topic, starts[part], end)
			}
			offs[part] = p.offset
		}
		return offs, nil
	}
}

// bounds returns the start and end offset of each partition of topic.
func bounds(ctx context.Context, adm *kadm.Client, topic string) (starts, ends map[int32]int64, err error) {
	list := func(f func(context.Context, ...string) (kadm.ListedOffsets, error)) (map[int32]int64, error) {
		listed, err := f(ctx, topic)
		if err == nil {
			err = listed.Error()
		}
		if errors.Is(err, kerr.UnknownTopicOrPartition) {
			// kadm answers for a missing topic with a partition -1 that
			// holds this error.
			return nil, fmt.Errorf("%s: %w", topic, errNoTopic)
		}
		if err != nil {
			return nil, fmt.Errorf("offsets of %s: %w", topic, err)
		}
		offs := map[int32]int64{}
		listed.Each(func(o kadm.ListedOffset) {
			if o.Partition >= 0 {
				offs[o.Partition] = o.Offset
			}
		})
		if len(offs) == 0 {
			return nil, fmt.Errorf("%s: %w", topic, errNoTopic)
		}
		return offs, nil
	}
	if starts, err = list(adm.ListStartOffsets); err != nil {
		return nil, nil, err
	}
	if ends, err = list(adm.ListEndOffsets); err != nil {
		return nil, nil, err
	}
	return starts, ends, nil
}
