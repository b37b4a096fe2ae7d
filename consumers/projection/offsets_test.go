package projection_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/spatetest"
)

// TestOffsetsResetIsWhatTheProjectorResumesFrom sets a group's offsets the
// way spate offsets reset does and checks that the projector of that group
// reads them as its own: it resumes from them, and skips records below a
// reset that moved forward. Other groups and topics keep theirs.
func TestOffsetsResetIsWhatTheProjectorResumesFrom(t *testing.T) {
	t.Parallel()
	p, pool := newProjector(t)
	ctx := context.Background()
	all := records(t, 0, 30)
	if err := p.Apply(ctx, batch(all[:20])); err != nil {
		t.Fatal(err)
	}
	if _, err := projection.SetOffsets(ctx, pool, "other-group", "events", map[int32]int64{0: 3}); err != nil {
		t.Fatal(err)
	}

	replaced, err := projection.SetOffsets(ctx, pool, projection.DefaultGroup, "events", map[int32]int64{0: 5, 1: 7})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int32]int64{0: 20}, replaced); diff != "" {
		t.Errorf("replaced offsets (-want +got):\n%s", diff)
	}
	resumed, err := p.Offsets(ctx, "events", []int32{0, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int32]int64{0: 5, 1: 7}, resumed); diff != "" {
		t.Errorf("projector's offsets after the reset (-want +got):\n%s", diff)
	}
	for _, c := range []struct {
		group, topic string
		want         map[int32]int64
	}{
		{projection.DefaultGroup, "events", map[int32]int64{0: 5, 1: 7}},
		{"other-group", "events", map[int32]int64{0: 3}},
		{projection.DefaultGroup, "other-topic", map[int32]int64{}},
	} {
		got, err := projection.StoredOffsets(ctx, pool, c.group, c.topic)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("StoredOffsets(%s, %s) (-want +got):\n%s", c.group, c.topic, diff)
		}
	}

	// Forward past records never applied: the projector skips them.
	if _, err := projection.SetOffsets(ctx, pool, projection.DefaultGroup, "events", map[int32]int64{0: 25}); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, batch(all[20:30])); err != nil {
		t.Fatal(err)
	}
	got := eventLog(t, pool)
	want := append(offsetRange(0, 20), offsetRange(25, 30)...)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("event_log offsets after a reset to 25 and a batch of 20..29 (-want +got):\n%s", diff)
	}
}

func offsetRange(from, to int64) []int64 {
	var offs []int64
	for o := from; o < to; o++ {
		offs = append(offs, o)
	}
	return offs
}

// TestOffsetsNeedTheTable: in a database no projector has run against, the
// offsets cannot be read or set, the error says why, and nothing is created.
func TestOffsetsNeedTheTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, spatetest.Postgres(t))

	if _, err := projection.StoredOffsets(ctx, pool, "g", "events"); !errors.Is(err, projection.ErrNoOffsetsTable) {
		t.Errorf("StoredOffsets: got %v, want ErrNoOffsetsTable", err)
	}
	if _, err := projection.SetOffsets(ctx, pool, "g", "events", map[int32]int64{0: 1}); !errors.Is(err, projection.ErrNoOffsetsTable) {
		t.Errorf("SetOffsets: got %v, want ErrNoOffsetsTable", err)
	}
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('spate_offsets') IS NOT NULL`).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Error("spate_offsets exists after the failed calls; want them to create nothing")
	}
}

// TestSetOffsetsRefusesNegative: a negative offset is refused as a whole,
// and no partition changes.
func TestSetOffsetsRefusesNegative(t *testing.T) {
	t.Parallel()
	_, pool := newProjector(t)
	ctx := context.Background()
	if _, err := projection.SetOffsets(ctx, pool, "g", "events", map[int32]int64{0: 4, 1: 4}); err != nil {
		t.Fatal(err)
	}
	if _, err := projection.SetOffsets(ctx, pool, "g", "events", map[int32]int64{0: 9, 1: -1}); err == nil {
		t.Error("SetOffsets with a negative offset: got no error")
	}
	got, err := projection.StoredOffsets(ctx, pool, "g", "events")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int32]int64{0: 4, 1: 4}, got); diff != "" {
		t.Errorf("offsets after a refused reset (-want +got):\n%s", diff)
	}
}
