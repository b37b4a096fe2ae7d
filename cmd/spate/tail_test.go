package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/spate-io/spate/spatetest"
)

// lockedBuffer is an output that tests read while a command, its loggers
// and its clients write to it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// lines returns the complete lines written so far.
func (b *lockedBuffer) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.b.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return strings.Split(s[:i], "\n")
	}
	return nil
}

// startTail runs spate tail with args until the returned stop is called,
// which returns the command's error.
func startTail(t *testing.T, args ...string) (out *lockedBuffer, stop func() error) {
	t.Helper()
	out = &lockedBuffer{}
	var stderr lockedBuffer
	root := newRoot(out, &stderr)
	root.SetArgs(append([]string{"tail"}, args...))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	var (
		once sync.Once
		err  error
	)
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = fmt.Errorf("tail did not stop within 30 s of its context ending")
			}
			if s := stderr.String(); s != "" {
				t.Logf("tail's stderr:\n%s", s)
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return out, stop
}

// awaitLines waits until out holds n lines, and returns them.
func awaitLines(t *testing.T, out *lockedBuffer, n int) []string {
	t.Helper()
	spatetest.Eventually(t, 30*time.Second, func() string {
		if got := len(out.lines()); got < n {
			return fmt.Sprintf("%d lines, want %d:\n%s", got, n, strings.Join(out.lines(), "\n"))
		}
		return ""
	})
	return out.lines()
}

func tailClient(t *testing.T) (*redis.Client, string) {
	t.Helper()
	url := spatetest.Redis(t)
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	return rdb, url
}

// tailEntries are stream entries as spate fanout writes them, and one
// that is no event.
var tailEntries = [][]any{
	{"id", "e-1", "source", "/shop", "type", "shop.order.placed.v1", "subject", "order-1",
		"time", "2024-05-01T12:00:00.123456789Z", "datacontenttype", "application/json",
		"data", `{"orderId": "order-1",  "amountCents": "4200"}`},
	{"id", "e-2", "source", "/shop", "type", "shop.order.cancelled.v1", "subject", "order-1",
		"time", "2024-05-01T12:00:01Z", "datacontenttype", "application/json",
		"data", `{"orderId":"order-1","reason":"out of tea"}`, "dataschema", "urn:shop", "tenant", "acme"},
	{"n", "3", "note", "not an event"},
}

func tailAdd(t *testing.T, rdb *redis.Client, stream string, entries ...[]any) []string {
	t.Helper()
	var ids []string
	for _, e := range entries {
		id, err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: stream, Values: e}).Result()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func TestTailJSON(t *testing.T) {
	t.Parallel()
	rdb, url := tailClient(t)
	stream := spatetest.KeyPrefix(t) + "shop.order.placed.v1"
	ids := tailAdd(t, rdb, stream, tailEntries[:2]...)
	out, stop := startTail(t, stream, "--redis-url", url, "--json", "--from", "0")
	awaitLines(t, out, 2)
	ids = append(ids, tailAdd(t, rdb, stream, tailEntries[2])...) // live
	lines := awaitLines(t, out, 3)
	if err := stop(); err != nil {
		t.Fatalf("tail: %v", err)
	}

	want := []string{
		`{"stream_id":"` + ids[0] + `","id":"e-1","source":"/shop","type":"shop.order.placed.v1","subject":"order-1","time":"2024-05-01T12:00:00.123456789Z","datacontenttype":"application/json","data":{"orderId":"order-1","amountCents":"4200"}}`,
		`{"stream_id":"` + ids[1] + `","id":"e-2","source":"/shop","type":"shop.order.cancelled.v1","subject":"order-1","time":"2024-05-01T12:00:01Z","datacontenttype":"application/json","dataschema":"urn:shop","tenant":"acme","data":{"orderId":"order-1","reason":"out of tea"}}`,
		`{"stream_id":"` + ids[2] + `","n":"3","note":"not an event"}`,
	}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("NDJSON (-want +got):\n%s", diff)
	}
	for i, l := range lines {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Errorf("line %d is not JSON: %v", i, err)
		}
	}
}

// An NDJSON line holds each name once and is valid UTF-8, whatever the
// entry's fields are.
func TestTailJSONLineIsValidForAnyEntry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		values map[string]any
		want   string
	}{
		{map[string]any{"stream_id": "forged", "_stream_id": "also"},
			`{"stream_id":"1-0","_stream_id":"also","__stream_id":"forged"}`},
		{map[string]any{"datacontenttype": "application/json", "data": "{\"a\": \"\xff\"}"},
			`{"stream_id":"1-0","datacontenttype":"application/json","data":"{\"a\": \"\ufffd\"}"}`},
	} {
		line := tailPrinter{json: true}.format("1-0", tc.values)
		if got := strings.TrimSuffix(string(line), "\n"); got != tc.want {
			t.Errorf("entry %q: line\n%s\nwant\n%s", tc.values, got, tc.want)
		}
		if !json.Valid(line) {
			t.Errorf("entry %q: line %q is not JSON", tc.values, line)
		}
	}
}

func TestTailReadable(t *testing.T) {
	t.Parallel()
	rdb, url := tailClient(t)
	prefix := spatetest.KeyPrefix(t)
	ids := tailAdd(t, rdb, prefix+"shop.order.placed.v1", append(tailEntries, []any{"note", `say "hi"`},
		[]any{"id", "e-3", "type", "shop.order.placed.v1", "subject", "order-9\x1b[2J\n2026-01-01T00:00:00.000Z forged"})...)
	// An event type gets --stream-prefix; --json=false prints for people
	// even when stdout is no terminal.
	out, stop := startTail(t, "shop.order.placed.v1", "--stream-prefix", prefix, "--redis-url", url, "--json=false", "--from", "0")
	lines := awaitLines(t, out, 5)
	if err := stop(); err != nil {
		t.Fatalf("tail: %v", err)
	}
	want := []string{
		`2024-05-01T12:00:00.123Z shop.order.placed.v1 order-1 e-1 {"orderId":"order-1","amountCents":"4200"}`,
		`2024-05-01T12:00:01.000Z shop.order.cancelled.v1 order-1 e-2 {"orderId":"order-1","reason":"out of tea"} tenant=acme`,
		ids[2] + ` n=3 note="not an event"`,
		ids[3] + ` note="say \"hi\""`,
		`- shop.order.placed.v1 "order-9\x1b[2J\n2026-01-01T00:00:00.000Z forged" e-3`,
	}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}

func TestTailFromDurationAgo(t *testing.T) {
	t.Parallel()
	rdb, url := tailClient(t)
	stream := spatetest.KeyPrefix(t) + "orders"
	old := time.Now().Add(-2 * time.Hour).UnixMilli()
	if err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: stream, ID: fmt.Sprint(old, "-0"), Values: []any{"n", "old"}}).Err(); err != nil {
		t.Fatal(err)
	}
	ids := tailAdd(t, rdb, stream, []any{"n", "recent"})
	out, stop := startTail(t, stream, "--redis-url", url, "--json", "--from=-1h")
	awaitLines(t, out, 1)
	tailAdd(t, rdb, stream, []any{"n", "live"})
	lines := awaitLines(t, out, 2)
	if err := stop(); err != nil {
		t.Fatalf("tail: %v", err)
	}
	if want := `{"stream_id":"` + ids[0] + `","n":"recent"}`; lines[0] != want {
		t.Errorf("first line: got %s, want %s", lines[0], want)
	}
	if !strings.Contains(lines[1], `"n":"live"`) {
		t.Errorf("second line: got %s, want the live entry", lines[1])
	}
}

func TestTailNewEntriesOnlyByDefault(t *testing.T) {
	t.Parallel()
	rdb, url := tailClient(t)
	stream := spatetest.KeyPrefix(t) + "orders"
	tailAdd(t, rdb, stream, []any{"n", "old"})
	out, stop := startTail(t, stream, "--redis-url", url, "--json")
	// Add entries until tail, which starts after the last entry, prints one.
	spatetest.Eventually(t, 30*time.Second, func() string {
		if len(out.lines()) > 0 {
			return ""
		}
		tailAdd(t, rdb, stream, []any{"n", "new"})
		return "no line yet"
	})
	if err := stop(); err != nil {
		t.Fatalf("tail: %v", err)
	}
	for _, l := range out.lines() {
		if !strings.Contains(l, `"n":"new"`) {
			t.Errorf("got %s, want new entries only", l)
		}
	}
}

func TestTailGroupAcknowledges(t *testing.T) {
	t.Parallel()
	rdb, url := tailClient(t)
	stream := spatetest.KeyPrefix(t) + "shop.order.placed.v1"
	ids := tailAdd(t, rdb, stream, tailEntries...)
	out, stop := startTail(t, stream, "--redis-url", url, "--json", "--from", "0", "--group", "audit")
	lines := awaitLines(t, out, 3)
	spatetest.Eventually(t, 30*time.Second, func() string {
		p, err := rdb.XPending(t.Context(), stream, "audit").Result()
		if err != nil || p.Count != 0 {
			return fmt.Sprintf("pending: %+v, %v", p, err)
		}
		return ""
	})
	if err := stop(); err != nil {
		t.Fatalf("tail: %v", err)
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, `{"stream_id":"`+ids[i]+`"`) {
			t.Errorf("line %d: got %s, want entry %s", i, l, ids[i])
		}
	}
	info, err := rdb.XInfoGroups(t.Context(), stream).Result()
	if err != nil || len(info) != 1 || info[0].Name != "audit" || info[0].LastDeliveredID != ids[2] {
		t.Errorf("groups: %+v, %v; want audit, delivered up to %s", info, err, ids[2])
	}
}

func TestTailGroupIsNotTakenFromTheEnvironment(t *testing.T) {
	t.Setenv("SPATE_GROUP", "spate-fanout")
	rdb, url := tailClient(t)
	stream := spatetest.KeyPrefix(t) + "orders"
	tailAdd(t, rdb, stream, []any{"n", "1"})
	out, stop := startTail(t, stream, "--redis-url", url, "--json", "--from", "0")
	awaitLines(t, out, 1)
	if err := stop(); err != nil {
		t.Fatalf("tail: %v", err)
	}
	if groups, err := rdb.XInfoGroups(t.Context(), stream).Result(); err != nil || len(groups) != 0 {
		t.Errorf("groups: %+v, %v; want none", groups, err)
	}
}

func TestTailBadFrom(t *testing.T) {
	t.Parallel()
	for _, from := range []string{"yesterday", "-", "-10", "-0s", "-ten minutes", "1700000000000-x", "$$"} {
		var stdout, stderr bytes.Buffer
		root := newRoot(&stdout, &stderr)
		// No server needed: --from is checked first.
		root.SetArgs([]string{"tail", "orders", "--redis-url", "redis://127.0.0.1:1/0", "--from", from})
		err := root.ExecuteContext(t.Context())
		if want := fmt.Sprintf("--from %q: want $ or latest (new entries), 0 or earliest (the whole stream)", from); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--from %s: got %v, want an error starting %s", from, err, want)
		}
	}
}

func TestTailParseFrom(t *testing.T) {
	t.Parallel()
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	ms := now.UnixMilli()
	for _, tc := range []struct{ from, want string }{
		{"$", "$"},
		{"0", "0"},
		{"latest", "$"},
		{"earliest", "0"},
		// XREAD reads after the ID: the one just before, so that the entry
		// at the ID or time given is read.
		{"1714564800000", "1714564799999-18446744073709551615"},
		{"1714564800000-7", "1714564800000-6"},
		{"1-0", "0-18446744073709551615"},
		{"-10m", fmt.Sprint(ms-10*60*1000-1, "-18446744073709551615")},
		{"-1h30m", fmt.Sprint(ms-90*60*1000-1, "-18446744073709551615")},
		{"-250ms", fmt.Sprint(ms-250-1, "-18446744073709551615")},
		{"2024-05-01T11:00:00Z", fmt.Sprint(ms-60*60*1000-1, "-18446744073709551615")},
		{"2024-05-01T14:00:00.5+02:00", fmt.Sprint(ms+500-1, "-18446744073709551615")},
		{"1970-01-01T00:00:00Z", "0"},
	} {
		got, err := parseTailFrom(tc.from, now)
		if err != nil || got != tc.want {
			t.Errorf("parseTailFrom(%q) = %q, %v; want %q", tc.from, got, err, tc.want)
		}
	}
}

// spate tail says when its stream does not exist yet (a route's stream
// given by the wrong name waits for ever otherwise), and refuses a key of
// another type.
func TestTailSaysWhatItsKeyIs(t *testing.T) {
	t.Parallel()
	rdb, url := tailClient(t)
	missing := spatetest.KeyPrefix(t) + "missing"
	var stdout, stderr lockedBuffer
	root := newRoot(&stdout, &stderr)
	root.SetArgs([]string{"tail", missing, "--redis-url", url})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	spatetest.Eventually(t, 30*time.Second, func() string {
		if want := "stream " + missing + " does not exist (yet)"; !strings.Contains(stderr.String(), want) {
			return fmt.Sprintf("stderr %q, want %q", stderr.String(), want)
		}
		return ""
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("tail of a missing stream, stopped: %v", err)
	}
	hash := spatetest.KeyPrefix(t) + "a-hash"
	if err := rdb.HSet(t.Context(), hash, "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	root = newRoot(&stdout, &stderr)
	root.SetArgs([]string{"tail", hash, "--redis-url", url})
	if err := root.ExecuteContext(t.Context()); err == nil || !strings.Contains(err.Error(), "holds a hash, not a stream") {
		t.Errorf("tail of a hash: %v, want a refusal", err)
	}
}

// TestTailFromIncludesTheEntryThere: --from a time, or an entry's ID,
// starts with the entry at that time or ID, not the one after.
func TestTailFromIncludesTheEntryThere(t *testing.T) {
	t.Parallel()
	rdb, url := tailClient(t)
	stream := spatetest.KeyPrefix(t) + "s"
	at := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	for _, v := range []string{"before", "at", "later"} {
		id := "*"
		switch v {
		case "before":
			id = fmt.Sprint(at.UnixMilli()-1, "-0")
		case "at":
			id = fmt.Sprint(at.UnixMilli(), "-0")
		}
		if err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: stream, ID: id, Values: []any{"n", v}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, from := range []string{at.UTC().Format(time.RFC3339Nano), fmt.Sprint(at.UnixMilli(), "-0")} {
		out, stop := startTail(t, stream, "--redis-url", url, "--json", "--from", from)
		lines := awaitLines(t, out, 2)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(lines[0], `"n":"at"`) || !strings.Contains(lines[1], `"n":"later"`) {
			t.Errorf("--from %s: lines %v, want the entry at that point first", from, lines)
		}
	}
}
