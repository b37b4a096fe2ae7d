package fanout_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

// TestOffsetsResetIsWhatTheWriterResumesFrom sets a group's offsets the way
// spate offsets reset does and checks that the writer of that group reads
// them as its own: it resumes from them, and skips records below a reset
// that moved forward. Other groups keep theirs.
func TestOffsetsResetIsWhatTheWriterResumesFrom(t *testing.T) {
	t.Parallel()
	rdb := spatetest.RedisClient(t)
	ctx := context.Background()
	prefix := spatetest.KeyPrefix(t)
	mine := fanout.Config{Prefix: prefix} // the default group
	other := fanout.Config{Prefix: prefix, Group: "other-group"}
	w, err := fanout.New(rdb, schemas.Builtin(), mine)
	if err != nil {
		t.Fatal(err)
	}
	all := records(t, 0, 20)
	if err := w.Apply(ctx, batch(all[:10])); err != nil {
		t.Fatal(err)
	}
	if _, err := fanout.SetOffsets(ctx, rdb, other, "events", map[int32]int64{0: 3}); err != nil {
		t.Fatal(err)
	}

	replaced, err := fanout.SetOffsets(ctx, rdb, mine, "events", map[int32]int64{0: 4, 1: 9})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int32]int64{0: 10}, replaced); diff != "" {
		t.Errorf("replaced offsets (-want +got):\n%s", diff)
	}
	resumed, err := w.Offsets(ctx, "events", []int32{0, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int32]int64{0: 4, 1: 9}, resumed); diff != "" {
		t.Errorf("writer's offsets after the reset (-want +got):\n%s", diff)
	}
	for _, c := range []struct {
		cfg  fanout.Config
		want map[int32]int64
	}{
		{mine, map[int32]int64{0: 4, 1: 9}},
		{fanout.Config{Prefix: prefix, Group: fanout.DefaultGroup}, map[int32]int64{0: 4, 1: 9}},
		{other, map[int32]int64{0: 3}},
		{fanout.Config{Prefix: spatetest.KeyPrefix(t)}, map[int32]int64{}},
	} {
		got, err := fanout.StoredOffsets(ctx, rdb, c.cfg, "events", []int32{0, 1, 2})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("StoredOffsets(%+v) (-want +got):\n%s", c.cfg, diff)
		}
	}

	// Forward past records never written: the writer skips them.
	if _, err := fanout.SetOffsets(ctx, rdb, mine, "events", map[int32]int64{0: 15}); err != nil {
		t.Fatal(err)
	}
	if err := w.Apply(ctx, batch(all[10:20])); err != nil {
		t.Fatal(err)
	}
	got := append(ids(t, rdb, w.Stream("shop.order.placed.v1")), ids(t, rdb, w.Stream("shop.order.cancelled.v1"))...)
	want := []string{"e-0", "e-2", "e-4", "e-6", "e-8", "e-16", "e-18", "e-1", "e-3", "e-5", "e-7", "e-9", "e-15", "e-17", "e-19"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("stream entries after a reset to 15 and a batch of 10..19 (-want +got):\n%s", diff)
	}
}

// TestSetOffsetsRefusesNegative: a negative offset is refused as a whole,
// and no partition changes.
func TestSetOffsetsRefusesNegative(t *testing.T) {
	t.Parallel()
	rdb := spatetest.RedisClient(t)
	ctx := context.Background()
	cfg := fanout.Config{Prefix: spatetest.KeyPrefix(t)}
	if _, err := fanout.SetOffsets(ctx, rdb, cfg, "events", map[int32]int64{0: 4, 1: 4}); err != nil {
		t.Fatal(err)
	}
	if _, err := fanout.SetOffsets(ctx, rdb, cfg, "events", map[int32]int64{0: 9, 1: -1}); err == nil {
		t.Error("SetOffsets with a negative offset: got no error")
	}
	got, err := fanout.StoredOffsets(ctx, rdb, cfg, "events", []int32{0, 1})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int32]int64{0: 4, 1: 4}, got); diff != "" {
		t.Errorf("offsets after a refused reset (-want +got):\n%s", diff)
	}
}
