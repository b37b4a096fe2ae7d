package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/spate-io/spate/consumers/subscribe"
)

// tailBlock is how long one read waits for new entries; it bounds the time
// tail takes to stop after Ctrl-C.
const tailBlock = 500 * time.Millisecond

func newTailCmd() *cobra.Command {
	var (
		lf                      logFlags
		url, group, from, prefx string
		asJSON                  bool
	)
	cmd := &cobra.Command{
		Use:   "tail STREAM",
		Short: "Print the entries of a Redis stream as they arrive",
		Long: `Tail prints the entries of a Redis stream, the ones there already from --from
on and then new ones as they arrive, until Ctrl-C.

STREAM is a stream key, such as spate:shop.order.placed.v1, or an event type,
such as shop.order.placed.v1: a STREAM without ':' gets --stream-prefix.

On a terminal each entry is a line: its time, type, subject and id, its data
as compact JSON, then any field that is not a CloudEvents attribute (an
extension, say) as name=value; source, datacontenttype and dataschema are
left out, and --json shows them. Otherwise, or with
--json, each entry is a JSON object on a line of its own (NDJSON) with the
entry's stream ID (stream_id) and all its fields (one named stream_id as
_stream_id), data embedded as JSON;
--json=false forces lines for people.

Without --group, tail only reads (XREAD): it changes nothing in Redis. With
--group it joins that consumer group like any subscriber, acknowledges what
it printed, and --from says where the group starts if it does not exist yet.

spate dev prints the URL of its Redis server; pass it with --redis-url.`,
		Example: `  spate tail shop.order.placed.v1 --redis-url redis://127.0.0.1:41234/0
  spate tail spate:shop.order.placed.v1 --from -10m --json | jq .data.order_id
  spate tail shop.order.placed.v1 --from 0 --group audit`,
		Args: positional(1, 1, "the STREAM to print"),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, _, err := lf.loggers(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			start, err := parseTailFrom(from, time.Now())
			if err != nil {
				return err
			}
			stream := args[0]
			if !strings.Contains(stream, ":") {
				stream = prefx + stream
			}
			out := cmd.OutOrStdout()
			p := tailPrinter{json: outputJSON(cmd, asJSON, out)}
			opts, err := redis.ParseURL(url)
			if err != nil {
				return fmt.Errorf("--redis-url: %w", err)
			}
			rdb := redis.NewClient(opts)
			defer rdb.Close()
			ctx := cmd.Context()
			if err := rdb.Ping(ctx).Err(); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if !cmd.Flags().Changed("redis-url") {
					return fmt.Errorf("redis at %s (the default; give --redis-url, which spate dev prints): %w", url, err)
				}
				return fmt.Errorf("redis at %s: %w", url, err)
			}
			switch typ, err := rdb.Type(ctx, stream).Result(); {
			case err != nil:
				return fmt.Errorf("redis: type of %s: %w", stream, err)
			case typ == "none":
				// Say so on stderr, whatever the log level: a key that
				// never fills is the usual mistake (a route's stream,
				// given without its full name).
				fmt.Fprintf(cmd.ErrOrStderr(), "spate: stream %s does not exist (yet): waiting for its first entry\n", stream)
			case typ != "stream":
				return fmt.Errorf("%s holds a %s, not a stream", stream, typ)
			}
			if group == "" {
				return tailRead(ctx, rdb, stream, start, p, out, log)
			}
			return tailGroup(ctx, rdb, stream, group, start, p, out, log)
		},
	}
	fs := cmd.Flags()
	lf.register(fs)
	// Entries go to stdout; of the logs, only trouble is worth showing.
	lf.level, fs.Lookup("log-level").DefValue = "warn", "warn"
	fs.StringVar(&url, "redis-url", "redis://127.0.0.1:6379/0", "Redis URL, redis://host:port/db; spate dev prints the URL of its server")
	fs.StringVar(&from, "from", "$", "where to start: $ or latest (new entries), 0 or earliest (the whole stream), an entry ID, a time (RFC 3339) or a duration ago (-10m, -1h); an entry at that ID or time is shown")
	fs.BoolVar(&asJSON, "json", false, "print NDJSON (default: when stdout is not a terminal)")
	fs.StringVar(&prefx, "stream-prefix", "spate:", "prefix added to a STREAM without ':'")
	annotateEnv(fs)
	// SPATE_GROUP names the Kafka group of spate project and fanout: tail
	// joins a group only when told on the command line.
	fs.StringVar(&group, "group", "", "consumer group to read as, acknowledging what is printed (default: read without a group)")
	cmdLineOnly(fs, "group", "from")
	return cmd
}

// tailIDPattern matches a stream entry ID, complete or not.
var tailIDPattern = regexp.MustCompile(`^[0-9]+(-[0-9]+)?$`)

// parseTailFrom turns --from into the stream ID to read after (XREAD and
// XGROUP CREATE take the entries after an ID): $ and 0 as they are, latest
// and earliest (as the other commands say it) as $ and 0; an entry ID, a
// time or a duration ago (relative to now) into the ID just before, so that
// the entry at that ID or millisecond is read.
func parseTailFrom(from string, now time.Time) (string, error) {
	switch {
	case from == "latest", from == "$":
		return "$", nil
	case from == "earliest", from == "0":
		return "0", nil
	case tailIDPattern.MatchString(from):
		msPart, seqPart, ok := strings.Cut(from, "-")
		if !ok {
			seqPart = "0"
		}
		ms, err1 := strconv.ParseUint(msPart, 10, 64)
		seq, err2 := strconv.ParseUint(seqPart, 10, 64)
		if err1 == nil && err2 == nil {
			return streamIDBefore(ms, seq), nil
		}
	case strings.HasPrefix(from, "-"):
		if d, err := time.ParseDuration(from[1:]); err == nil && d > 0 {
			return streamIDBefore(uint64(max(now.Add(-d).UnixMilli(), 0)), 0), nil
		}
	default:
		if t, err := time.Parse(time.RFC3339Nano, from); err == nil && t.UnixMilli() >= 0 {
			return streamIDBefore(uint64(t.UnixMilli()), 0), nil
		}
	}
	return "", fmt.Errorf("--from %q: want $ or latest (new entries), 0 or earliest (the whole stream), an entry ID (1700000000000-0), a time (2024-05-01T12:00:00Z) or a duration ago (-10m)", from)
}

// streamIDBefore returns the stream ID just before ms-seq.
func streamIDBefore(ms, seq uint64) string {
	switch {
	case seq > 0:
		return fmt.Sprintf("%d-%d", ms, seq-1)
	case ms > 0:
		return fmt.Sprintf("%d-%d", ms-1, uint64(math.MaxUint64))
	}
	return "0"
}

// tailRead prints the entries of stream after start until ctx ends, without
// a consumer group.
func tailRead(ctx context.Context, rdb *redis.Client, stream, start string, p tailPrinter, out io.Writer, log *slog.Logger) error {
	last := start
	if start == "$" {
		// XREAD takes $ as "after the last entry when this read began";
		// from read to read that would drop what arrives in between.
		xs, err := rdb.XRevRangeN(ctx, stream, "+", "-", 1).Result()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tail %s: %w", stream, err)
		}
		last = "0-0"
		if len(xs) == 1 {
			last = xs[0].ID
		}
	}
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		res, err := rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{stream, last}, Count: 100, Block: tailBlock}).Result()
		switch {
		case errors.Is(err, redis.Nil):
			continue
		case ctx.Err() != nil:
			return nil
		case redis.HasErrorPrefix(err, "WRONGTYPE"):
			return fmt.Errorf("tail %s: %w", stream, err)
		case err != nil:
			d := wait/2 + rand.N(wait/2+1)
			log.Warn("retrying", "stream", stream, "err", err, "wait", d)
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
			wait = min(2*wait, 5*time.Second)
			continue
		}
		wait = 100 * time.Millisecond
		for _, st := range res {
			for _, x := range st.Messages {
				if _, err := out.Write(p.format(x.ID, x.Values)); err != nil {
					return fmt.Errorf("tail %s: %w", stream, err)
				}
				last = x.ID
			}
		}
	}
	return nil
}

// tailGroup prints the entries of stream as a member of group, acknowledging
// each once printed, until ctx ends.
func tailGroup(ctx context.Context, rdb *redis.Client, stream, group, start string, p tailPrinter, out io.Writer, log *slog.Logger) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var writeErr error
	sub, err := subscribe.New(rdb, subscribe.Config{
		Group:   group,
		Streams: []string{stream},
		StartID: start,
		Block:   tailBlock,
		Logger:  log,
	}, func(_ context.Context, m subscribe.Message) error {
		if _, err := out.Write(p.format(m.ID, m.Values)); err != nil {
			writeErr = err
			stop()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := sub.Run(ctx); err != nil {
		return fmt.Errorf("tail %s: %w", stream, err)
	}
	if writeErr != nil {
		return fmt.Errorf("tail %s: %w", stream, writeErr)
	}
	return nil
}

// outputJSON decides between NDJSON and lines for people: --json if
// given, else NDJSON unless w is a terminal.
func outputJSON(cmd *cobra.Command, asJSON bool, w io.Writer) bool {
	if cmd.Flags().Changed("json") {
		return asJSON
	}
	return !isTerminal(w)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// tailFields are the CloudEvents attributes of an entry, in the order
// NDJSON gives them; other fields follow, sorted, and data comes last.
var tailFields = []string{"id", "source", "type", "subject", "time", "datacontenttype", "dataschema"}

// tailPrinter formats entries for people or as NDJSON.
type tailPrinter struct{ json bool }

// format returns the line of the entry id with values, newline included.
func (p tailPrinter) format(id string, values map[string]any) []byte {
	fields := make(map[string]string, len(values))
	for k, v := range values {
		fields[k] = fmt.Sprint(v)
	}
	var rest []string // fields other than the attributes and data
	for k := range fields {
		if k != "data" && !slices.Contains(tailFields, k) {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	if p.json {
		return tailJSON(id, fields, rest)
	}
	return tailText(id, fields, rest)
}

func tailJSON(id string, fields map[string]string, rest []string) []byte {
	var b bytes.Buffer
	add := func(k string, raw []byte) {
		if b.Len() == 0 {
			b.WriteByte('{')
		} else {
			b.WriteByte(',')
		}
		key, _ := json.Marshal(k) // strings always marshal
		b.Write(key)
		b.WriteByte(':')
		b.Write(raw)
	}
	str := func(s string) []byte {
		raw, _ := json.Marshal(s)
		return raw
	}
	add("stream_id", str(id))
	for _, k := range slices.Concat(tailFields, rest) {
		if v, ok := fields[k]; ok {
			add(tailJSONName(k, fields), str(v))
		}
	}
	if v, ok := fields["data"]; ok {
		if data := tailData(fields); data != nil {
			add("data", data)
		} else {
			add("data", str(v))
		}
	}
	b.WriteString("}\n")
	return b.Bytes()
}

func tailText(id string, fields map[string]string, rest []string) []byte {
	var b strings.Builder
	_, typed := fields["type"]
	_, hasData := fields["data"]
	if !typed && !hasData { // not an event: the stream ID and every field
		b.WriteString(id)
		for _, k := range rest {
			b.WriteString(" " + k + "=" + tailQuote(fields[k]))
		}
		b.WriteByte('\n')
		return []byte(b.String())
	}
	// Quoted where need be: a subject, say, may hold escape sequences a
	// terminal would act on, or a newline that fakes a line.
	col := func(k string) string {
		if v := fields[k]; v != "" {
			return tailQuote(v)
		}
		return "-"
	}
	ts := col("time")
	if t, err := time.Parse(time.RFC3339Nano, fields["time"]); err == nil {
		ts = t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
	}
	b.WriteString(strings.Join([]string{ts, col("type"), col("subject"), col("id")}, " "))
	if data := tailData(fields); data != nil {
		b.WriteString(" ")
		b.Write(data)
	} else if v, ok := fields["data"]; ok {
		b.WriteString(" " + strconv.Quote(v))
	}
	for _, k := range rest {
		b.WriteString(" " + k + "=" + tailQuote(fields[k]))
	}
	b.WriteByte('\n')
	return []byte(b.String())
}

// tailData returns the entry's data as compact JSON, or nil if it has no
// JSON data.
func tailData(fields map[string]string) []byte {
	data, ok := fields["data"]
	if ct := fields["datacontenttype"]; !ok || ct != "" && !strings.HasSuffix(strings.TrimSpace(strings.Split(ct, ";")[0]), "json") {
		return nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(data)); err != nil || !utf8.Valid(b.Bytes()) {
		return nil // a string then: NDJSON is UTF-8
	}
	return b.Bytes()
}

// tailJSONName is the name of field k in an NDJSON line: k, but for a
// field named stream_id, which the entry's ID has, whose name gets '_' in
// front until it is no field's.
func tailJSONName(k string, fields map[string]string) string {
	if k != "stream_id" {
		return k
	}
	for k = "_" + k; ; k = "_" + k {
		if _, ok := fields[k]; !ok {
			return k
		}
	}
}

// tailQuote quotes v if it is empty or holds spaces, quotes, '=' or
// characters that are not printable.
func tailQuote(v string) string {
	if v == "" || strings.ContainsAny(v, " \"=") || strconv.Quote(v) != `"`+v+`"` {
		return strconv.Quote(v)
	}
	return v
}
