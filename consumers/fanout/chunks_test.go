package fanout_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

// TestChunksNeverSplitAnEvent sends every event to three streams and
// applies batches in chunks whose sizes are not multiples of three, so a
// chunk cut after ChunkSize entries would end between two entries of one
// event. The offset a chunk stores must cover all the entries of the
// events below it: after every chunk, and at the end, each stream holds
// one entry per event below the stored offset, in order.
func TestChunksNeverSplitAnEvent(t *testing.T) {
	t.Parallel()
	rdb := spatetest.RedisClient(t)
	ctx := context.Background()
	for _, chunk := range []int{1, 2, 4, 5, 10} {
		t.Run(fmt.Sprint("chunk=", chunk), func(t *testing.T) {
			prefix := spatetest.KeyPrefix(t)
			routes, err := fanout.LoadRoutes("spate.yaml", []byte(strings.ReplaceAll(`
routes:
  - types: ["*"]
    stream: "PREFIX:a"
  - types: ["*"]
    stream: "PREFIX:b"
  - types: ["*"]
    stream: "PREFIX:c"
`, "PREFIX:", prefix)))
			if err != nil {
				t.Fatal(err)
			}
			w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Prefix: prefix, Routes: routes, ChunkSize: chunk})
			if err != nil {
				t.Fatal(err)
			}
			streams := []string{prefix + "a", prefix + "b", prefix + "c"}
			var points int
			fanout.SetHook(w, func(string) {
				points++
				offs, err := w.Offsets(ctx, "events", []int32{0})
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range streams {
					if n := rdb.XLen(ctx, s).Val(); n != offs[0] {
						t.Fatalf("after a chunk: stored offset %d, stream %s holds %d entries; want one per event below the offset", offs[0], s, n)
					}
				}
			})
			all := records(t, 0, 20)
			for _, b := range [][]*kgo.Record{all[:7], all, all[3:20]} {
				if err := w.Apply(ctx, batch(b)); err != nil {
					t.Fatal(err)
				}
			}
			if points == 0 {
				t.Fatal("no batch took more than one chunk: the test proved nothing")
			}
			for _, s := range streams {
				wantIDs(t, ids(t, rdb, s), 0, 20, 1)
			}
		})
	}
}
