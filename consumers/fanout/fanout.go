// Package fanout writes events to Redis Streams exactly once, and trims
// them without losing what readers have not read.
//
// Each event goes to every stream its routes name (see Route); with no
// routes, to the stream of its type, <prefix><type> ("spate:" by default).
// The XADDs of a run of a partition's records and that partition's next
// offset are written by one Lua script, which Redis runs atomically: it
// skips records below the stored offset, so a batch redelivered after a crash
// or rebalance, or resent by go-redis after a reply was lost, adds nothing
// twice. On assignment the consumer group resumes from the offsets in Redis.
//
// Trimming (Writer.Trim) applies each route's retention but, unless the
// route is lossy, never deletes an entry that a consumer group registered on
// the stream has not read, or has read and not acknowledged.
//
// An entry's fields are the event's CloudEvents attributes (id, source, type,
// subject, time, datacontenttype, dataschema when set, extensions by name)
// and data, the payload as protojson with the .proto field names.
//
// The script touches the offsets key and the streams together, so on Redis
// Cluster they must share a hash slot: give a prefix with a hash tag.
package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
)

// DefaultGroup is the consumer group of fan-out writers unless configured otherwise.
const DefaultGroup = "spate-fanout"

// Config tunes a Writer. Its zero value works.
type Config struct {
	// Group is the consumer group whose offsets the writer stores; it must
	// match the group consuming into it. Zero: DefaultGroup.
	Group string
	// Prefix of the offsets key and of the default route's streams.
	// Zero: "spate:".
	Prefix string
	// Routes send events to streams. Zero: one stream per type,
	// <Prefix><type>, kept as long as DefaultRetention says.
	Routes []Route
	// DefaultRetention is the retention of the streams when Routes is
	// empty: its MaxLen, MaxAge and Lossy (its Types and Stream are not
	// used). Routes give their own. Zero: the streams are never trimmed.
	DefaultRetention Route
	// ChunkSize is how many entries one script call adds, at most, to keep
	// Redis responsive to others; a chunk never splits one event's entries,
	// so an event with more entries than this makes a chunk of its own.
	// Zero or less: 500.
	ChunkSize int
	// Logger. Zero: none.
	Logger *slog.Logger
	// Metrics registers the writer's metrics. Zero: not registered.
	Metrics prometheus.Registerer
}

// Writer is a consumers.Handler that adds events to Redis Streams.
type Writer struct {
	rdb     redis.UniversalClient
	reg     *schemas.Registry
	cfg     Config
	log     *slog.Logger
	routes  []Route
	metrics *metrics

	// hook, if set (by tests), is called with "mid-batch" after a script
	// call stored a chunk of a batch whose later chunks are not stored yet.
	hook func(point string)

	gaugedMu sync.Mutex
	gauged   map[groupSeries]bool // the lag and pending series the last trim pass set
}

// groupSeries names the lag and pending series of a group on a stream.
type groupSeries struct {
	stream, group string
}

// New returns a writer adding to rdb and decoding with reg. It fails on a
// route whose template does not parse, and on Redis Cluster on a stream
// outside the offsets key's hash slot.
func New(rdb redis.UniversalClient, reg *schemas.Registry, cfg Config) (*Writer, error) {
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "spate:"
	}
	routes := slices.Clone(cfg.Routes)
	rt := cfg.DefaultRetention
	switch {
	case rt.MaxLen < 0 || rt.MaxAge < 0:
		return nil, fmt.Errorf("fanout: default retention: maxlen %d, maxage %s: want 0 (no limit) or more", rt.MaxLen, rt.MaxAge)
	case len(routes) > 0 && (rt.MaxLen != 0 || rt.MaxAge != 0 || rt.Lossy):
		return nil, errors.New("fanout: the default retention is for the streams of no routes: give each route its own")
	case len(routes) == 0:
		escaped := strings.NewReplacer("{", "{{", "}", "}}").Replace(cfg.Prefix)
		routes = []Route{{Types: []string{"*"}, Stream: escaped + "{type}", MaxLen: rt.MaxLen, MaxAge: rt.MaxAge, Lossy: rt.Lossy, all: true}}
	}
	for i := range routes {
		if err := routes[i].compile(); err != nil {
			return nil, fmt.Errorf("fanout: route %d: %w", i+1, err)
		}
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = 500
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Writer{rdb: rdb, reg: reg, cfg: cfg, log: log, routes: routes}
	if _, ok := rdb.(*redis.ClusterClient); ok {
		if err := w.sameSlot(); err != nil {
			return nil, err
		}
	}
	if len(cfg.Routes) == 0 {
		log.Info("a stream per event type", "streams", cfg.Prefix+"<type>", "maxlen", rt.MaxLen, "maxage", rt.MaxAge, "lossy", rt.Lossy)
	}
	w.metrics = newMetrics(cfg.Metrics)
	return w, nil
}

// sameSlot checks that the offsets key and every stream the routes can
// build have one hash tag, so that on Redis Cluster a script can write
// them together.
func (w *Writer) sameSlot() error {
	const fix = "on Redis Cluster the offsets key and the streams must share a hash slot: give the stream prefix and the route templates one hash tag, such as {spate}: (written {{spate}}: in a template)"
	key := w.offsetsKey()
	tag, ok := (&Route{parts: []keyPart{{literal: key}}}).hashTag()
	if !ok {
		return fmt.Errorf("fanout: offsets key %s has no hash tag; %s", key, fix)
	}
	for i, rt := range w.routes {
		if t, ok := rt.hashTag(); !ok || t != tag {
			what := fmt.Sprintf("route %d (%s)", i+1, rt.Stream)
			if len(w.cfg.Routes) == 0 {
				what = "the streams " + w.cfg.Prefix + "<type>"
			}
			return fmt.Errorf("fanout: %s: not in the slot of the offsets key's hash tag {%s}; %s", what, tag, fix)
		}
	}
	return nil
}

// Stream returns the stream key of an event type when no routes are given.
func (w *Writer) Stream(eventType string) string { return w.cfg.Prefix + eventType }

// Streams returns the keys of the streams the routes send ev to, in the
// order of the routes; none if no route takes its type.
func (w *Writer) Streams(ev *spatev1.Event) ([]string, error) {
	var keys []string
	for i := range w.routes {
		if rt := &w.routes[i]; rt.matches(ev.Type) {
			key, err := rt.key(ev)
			if err != nil {
				return nil, err
			}
			keys = append(keys, key)
		}
	}
	return keys, nil
}

// offsetsKey is the hash holding the next offset of each topic/partition.
func (w *Writer) offsetsKey() string { return w.cfg.Prefix + "offsets:" + w.cfg.Group }

func offsetField(topic string, partition int32) string {
	return topic + "/" + strconv.Itoa(int(partition))
}

// Ping checks that Redis answers, and that it does not evict keys the
// writer needs: see ErrEvicts.
// A user whose ACL denies INFO (a @dangerous command) gets a plain PING:
// the policy is then not checked.
func (w *Writer) Ping(ctx context.Context) error {
	info, err := w.rdb.Info(ctx, "memory").Result()
	if err != nil && strings.HasPrefix(err.Error(), "NOPERM") {
		return w.rdb.Ping(ctx).Err()
	}
	if err != nil {
		return err
	}
	return evicts(info)
}

// ErrEvicts is returned by Ping when Redis would evict any key under memory
// pressure (a maxmemory limit with an allkeys-* maxmemory-policy): it could
// evict the offsets hash, and the writer would then add events again, or a
// stream with entries no one has read. The volatile-* policies evict only
// keys with a time to live, which the writer never sets.
var ErrEvicts = errors.New("redis evicts any key under memory pressure")

// evicts returns ErrEvicts if the INFO memory text info says so.
func evicts(info string) error {
	var maxmemory, policy string
	for line := range strings.Lines(info) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch k {
		case "maxmemory":
			maxmemory = v
		case "maxmemory_policy":
			policy = v
		}
	}
	if maxmemory != "0" && strings.HasPrefix(policy, "allkeys-") {
		return fmt.Errorf("%w (maxmemory %s, maxmemory-policy %s): it could evict the fan-out's offsets and streams, and events would be added twice or lost; set maxmemory-policy noeviction", ErrEvicts, maxmemory, policy)
	}
	return nil
}

// Offsets implements consumers.Handler.
func (w *Writer) Offsets(ctx context.Context, topic string, partitions []int32) (map[int32]int64, error) {
	fields := make([]string, len(partitions))
	for i, p := range partitions {
		fields[i] = offsetField(topic, p)
	}
	vals, err := w.rdb.HMGet(ctx, w.offsetsKey(), fields...).Result()
	if err != nil {
		return nil, fmt.Errorf("load offsets of %s: %w", topic, err)
	}
	offs := make(map[int32]int64, len(partitions))
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue
		}
		o, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("load offsets of %s: field %s holds %q", topic, fields[i], s)
		}
		offs[partitions[i]] = o
	}
	return offs, nil
}

// addScript adds the entries at or above the stored offset and stores the
// next offset, atomically: unless it is below the stored one, and even if
// it is 0 (a group starting at the end of an empty partition stores where
// it starts). It returns how many entries it added. Before any
// write it checks that each key it would add to is a stream or nothing: if
// not, it writes nothing and fails with notStreamErr and the entry's place
// (Redis keeps the writes a script made before an error, so a failure
// half-way would duplicate them at the next try).
//
// KEYS[1] is the offsets hash, KEYS[2..] the stream of each entry.
// ARGV[1] is the hash field, ARGV[2] the next offset; then, per entry, its
// offset, its number of extra field/value arguments, the values of the
// fields every entry has (id, source, type, subject, time and data; the
// script adds datacontenttype, always application/json), and the extra
// fields and values. The names are in the script, not in every call: a call
// passes half the arguments, and Redis copies each into the script's ARGV.
var addScript = redis.NewScript(`
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local stored = tonumber(raw or '0')
local a = 3
local checked = {}
for k = 2, #KEYS do
	if tonumber(ARGV[a]) >= stored and not checked[KEYS[k]] then
		local t = redis.call('TYPE', KEYS[k]).ok
		if t ~= 'none' and t ~= 'stream' then
			return redis.error_reply('` + notStreamErr + ` ' .. (k - 1))
		end
		checked[KEYS[k]] = true
	end
	a = a + 8 + tonumber(ARGV[a + 1])
end
a = 3
local added = 0
for k = 2, #KEYS do
	local off = tonumber(ARGV[a])
	local n = tonumber(ARGV[a + 1])
	if off >= stored then
		redis.call('XADD', KEYS[k], '*', 'id', ARGV[a + 2], 'source', ARGV[a + 3], 'type', ARGV[a + 4],
			'subject', ARGV[a + 5], 'time', ARGV[a + 6], 'datacontenttype', 'application/json', 'data', ARGV[a + 7],
			unpack(ARGV, a + 8, a + 7 + n))
		added = added + 1
	end
	a = a + 8 + n
end
local nxt = tonumber(ARGV[2])
if nxt > stored or not raw then
	redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return added
`)

// entryValues is how many values of the fields every entry has a script
// call passes.
const entryValues = 6

// notStreamErr starts addScript's error for a key that holds something
// other than a stream; the entry's place in the call (from 1) follows.
const notStreamErr = "SPATE-NOT-A-STREAM"

// Apply implements consumers.Handler.
func (w *Writer) Apply(ctx context.Context, b consumers.Batch) error {
	type entry struct {
		stream string
		route  string
		record *kgo.Record
		fields []any
	}
	entries := make([]entry, 0, len(b.Records))
	field := offsetField(b.Topic, b.Partition)
	// A record that cannot go to Redis is poison, unless it is below the
	// stored offset: then it was written before, by a writer that could
	// (another member, with a newer schema, say), and is skipped like the
	// records around it. The stored offset is read only on this path.
	stored := int64(-1)
	poison := func(r *kgo.Record, perr error) (skip bool, err error) {
		if stored < 0 {
			s, err := w.rdb.HGet(ctx, w.offsetsKey(), field).Int64()
			switch {
			case errors.Is(err, redis.Nil):
				s = 0
			case err != nil:
				return false, fmt.Errorf("apply %s/%d: load offset: %w", b.Topic, b.Partition, err)
			}
			stored = s
		}
		if r.Offset < stored {
			return true, nil
		}
		return false, perr
	}
records:
	for _, r := range b.Records {
		ev, err := cekafka.Event(r)
		if err != nil {
			if skip, err := poison(r, consumers.Poison(r, "envelope", err)); !skip {
				return err
			}
			continue
		}
		at := len(entries)
		for i := range w.routes {
			rt := &w.routes[i]
			if !rt.matches(ev.Type) {
				continue
			}
			key, err := rt.key(ev)
			if err != nil {
				if skip, err := poison(r, &consumers.PoisonError{Record: r, Sink: "route " + rt.Stream, Class: "stream-key", Err: err}); !skip {
					return err
				}
				entries = entries[:at]
				continue records
			}
			entries = append(entries, entry{key, rt.Stream, r, nil})
		}
		if len(entries) == at {
			continue // no route takes its type: its payload is not read
		}
		fields, err := w.fields(r, ev)
		if err != nil {
			if skip, err := poison(r, err); !skip {
				return err
			}
			entries = entries[:at]
			continue
		}
		for i := at; i < len(entries); i++ {
			entries[i].fields = fields
		}
	}
	for start := 0; ; {
		// A chunk holds up to ChunkSize entries but never ends between two
		// entries of one record: the offset it stores says that all of a
		// record's entries are in. A record with more entries than
		// ChunkSize makes a chunk of its own.
		end := min(start+w.cfg.ChunkSize, len(entries))
		for end > start && end < len(entries) && entries[end].record == entries[end-1].record {
			end--
		}
		if end == start {
			for end < len(entries) && entries[end].record == entries[start].record {
				end++
			}
		}
		chunk := entries[start:end]
		next := b.Next
		if end < len(entries) {
			next = chunk[len(chunk)-1].record.Offset + 1
		}
		keys := make([]string, 1, 1+len(chunk))
		keys[0] = w.offsetsKey()
		args := make([]any, 0, 2+len(chunk)*10)
		args = append(args, field, next)
		for _, e := range chunk {
			keys = append(keys, e.stream)
			args = append(args, e.record.Offset, len(e.fields)-entryValues)
			args = append(args, e.fields...)
		}
		added, err := addScript.Run(ctx, w.rdb, keys, args...).Int()
		if at, ok := strings.CutPrefix(fmt.Sprint(err), notStreamErr+" "); ok {
			if i, err := strconv.Atoi(at); err == nil && i >= 1 && i <= len(chunk) {
				e := chunk[i-1]
				return &consumers.PoisonError{Record: e.record, Sink: "route " + e.route, Class: "stream-key",
					Err: fmt.Errorf("key %q holds something other than a stream", e.stream)}
			}
		}
		if err != nil {
			return fmt.Errorf("apply %s/%d@%d: %w", b.Topic, b.Partition, next, err)
		}
		// The entries below the stored offset, which the script skipped,
		// come first.
		for _, e := range chunk[len(chunk)-min(added, len(chunk)):] {
			w.metrics.entries.WithLabelValues(e.route).Inc()
		}
		if end == len(entries) {
			break
		}
		if w.hook != nil {
			w.hook("mid-batch")
		}
		start = end
	}
	return nil
}

// fields decodes the payload of ev, the event of record r, and returns its
// stream entry's field values, as addScript takes them: the values of id,
// source, type, subject, time and data, then dataschema and extensions as
// name/value pairs. An event whose payload does not decode is poison.
func (w *Writer) fields(r *kgo.Record, ev *spatev1.Event) ([]any, error) {
	data, err := w.reg.JSON(ev.Type, ev.Datacontenttype, ev.Data)
	switch {
	case errors.Is(err, schemas.ErrUnknownType):
		return nil, consumers.Poison(r, "unknown-type", err)
	case err != nil:
		return nil, consumers.Poison(r, "payload", err)
	}
	t := r.Timestamp
	if ev.Time != nil {
		t = ev.Time.AsTime()
	}
	values := append(make([]any, 0, entryValues+2+2*len(ev.Extensions)),
		ev.Id, ev.Source, ev.Type, ev.Subject, t.UTC().Format(time.RFC3339Nano), data)
	if ev.Dataschema != "" {
		values = append(values, "dataschema", ev.Dataschema)
	}
	for k, v := range ev.Extensions {
		values = append(values, k, v)
	}
	return values, nil
}
