package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// Headers added to each record spate replay stream copies into a topic,
// naming the record it copies. cekafka ignores them (they are not ce_*), so
// the copy decodes as the same event.
const (
	headerReplayTopic     = "spate_replay_topic"
	headerReplayPartition = "spate_replay_partition"
	headerReplayOffset    = "spate_replay_offset"
)

// replayStoreTimeout bounds storing a chunk that was read before the
// command was told to stop: the chunk is finished, not abandoned.
const replayStoreTimeout = 30 * time.Second

func newReplayStreamCmd() *cobra.Command {
	var (
		lf logFlags
		kf kafkaFlags
		f  replayFlags
	)
	cmd := &cobra.Command{
		Use:   "stream --from POSITION [--to POSITION] (--to-stream KEY | --to-topic TOPIC)",
		Short: "Copy a range of a topic, filtered, into a Redis stream or another topic, exactly once",
		Long: `Stream copies the records of --topic from --from up to --to (exclusive; by
default the end of each partition when the command starts) into one Redis
stream (--to-stream) or another Kafka topic (--to-topic), keeping only the
events whose type matches --type and whose subject is --subject.

--from and --to are earliest, latest, a time (RFC 3339), a duration ago (-24h)
or an offset (the same in every partition). A time stands for the first
record of each partition at or after it, by record timestamp.

Each record is copied exactly once, as the fan-out writes streams:
  --to-stream  the entries and each partition's next offset are written by one
               Lua script, under the offsets hash <stream-prefix>offsets:replay:<job>;
               entries look like the fan-out's (attributes and data as JSON).
  --to-topic   each chunk of records is produced in a Kafka transaction that
               also commits how far the job got, as the offsets of the
               consumer group spate-replay-<job>; key, value and headers are
               copied, the record is partitioned by its key, and the headers
               spate_replay_topic, spate_replay_partition and spate_replay_offset
               name the original. Read the copy with isolation read_committed.

The job is named by a hash of the topic, --from, the filters and the target,
not by --to. Running the same command again, after Ctrl-C or a crash, resumes
where the last run stopped and copies nothing twice; once a range is done,
running it again copies only what lies past it (without --to: what arrived
since). A relative --from (-24h) is part of the name as written.

Records that are not CloudEvents, or (--to-stream) whose payload does not
decode, are skipped with a warning. Progress goes to stderr: a bar on a
terminal, otherwise a log line every few seconds; a summary goes to stdout.`,
		Example: `  # one hour of order events into a stream, for an audit consumer
  spate replay stream --from 2026-11-23T08:00:00Z --to 2026-11-23T09:00:00Z \
      --type 'shop.order.*' --to-stream audit:orders --redis-url redis://redis:6379/0

  # one customer's order of the last day into a topic, to re-drive a consumer
  spate replay stream --from -24h --subject order-1001 --to-topic spate.events.redrive --create-topic

  # offsets 1200 to 1300 of every partition
  spate replay stream --topic spate.events --from 1200 --to 1300 --to-topic spate.events.debug`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			j, err := f.job(kf.topic, time.Now())
			if err != nil {
				return err
			}
			e, err := newEnv(&lf, &kf, f.schemas, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return j.run(cmd.Context(), e, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	lf.register(fs)
	kf.register(fs, []string{"127.0.0.1:9092"})
	fs.StringVar(&f.from, "from", "", "first record to copy: earliest, latest, a time (RFC 3339), a duration ago (-24h) or an offset (required)")
	fs.StringVar(&f.to, "to", "", "end of the range, exclusive, in the same forms as --from (default: the end of each partition when the command starts)")
	fs.StringVar(&f.toStream, "to-stream", "", "Redis stream key to copy into (needs --redis-url)")
	fs.StringVar(&f.toTopic, "to-topic", "", "Kafka topic to copy into; it must exist (or --create-topic) and differ from --topic")
	fs.BoolVar(&f.createTopic, "create-topic", false, "create --to-topic if it does not exist, with as many partitions as --topic")
	fs.StringVar(&f.typ, "type", "*", "copy only events whose type matches this glob (path.Match: shop.order.*)")
	fs.StringVar(&f.subject, "subject", "", "copy only events with this subject (default: any)")
	fs.StringVar(&f.redisURL, "redis-url", "", "Redis URL, redis://host:port/db, for --to-stream")
	fs.StringVar(&f.prefix, "stream-prefix", "spate:", "prefix of the hash that records the progress of --to-stream jobs; on Redis Cluster give it the stream key's hash tag")
	fs.StringVar(&f.schemas, "schemas", "", "a FileDescriptorSet with event types besides the compiled-in ones, to write their payloads as JSON")
	fs.IntVar(&f.chunk, "chunk", 1000, "records read per step: each step is one Kafka transaction, or at most a few Redis script calls")
	annotateEnv(fs)
	cmdLineOnly(fs, "from", "to", "to-stream", "to-topic", "create-topic", "type", "subject")
	return cmd
}

// replayFlags are the flags of spate replay stream that define the job.
type replayFlags struct {
	from, to          string
	toStream, toTopic string
	createTopic       bool
	typ, subject      string
	redisURL, prefix  string
	schemas           string
	chunk             int
}

// job checks the flags and returns the job they describe, copying from
// topic; relative times are taken from now.
func (f *replayFlags) job(topic string, now time.Time) (*replayJob, error) {
	switch {
	case f.toStream == "" && f.toTopic == "":
		return nil, errors.New("give the target: --to-stream KEY (a Redis stream) or --to-topic TOPIC (a Kafka topic)")
	case f.toStream != "" && f.toTopic != "":
		return nil, fmt.Errorf("both --to-stream %q and --to-topic %q are given; give one", f.toStream, f.toTopic)
	case f.toTopic != "" && f.toTopic == topic:
		return nil, fmt.Errorf("--to-topic %q is --topic, the topic being read; copy into another topic", f.toTopic)
	case f.toTopic != "" && strings.HasSuffix(f.toTopic, ".dlq"):
		return nil, fmt.Errorf("--to-topic %q is a dead-letter topic: only consumer groups write dead letters there (spate dlq reads them); copy into another topic", f.toTopic)
	case f.from == "":
		return nil, errors.New("--from is required: where the range starts (earliest, a time such as 2026-11-23T08:00:00Z, a duration ago such as -24h, or an offset)")
	case f.toStream != "" && f.redisURL == "":
		return nil, errors.New("--to-stream needs --redis-url")
	case f.chunk <= 0:
		return nil, fmt.Errorf("--chunk %d: want a positive number of records", f.chunk)
	}
	if _, err := path.Match(f.typ, ""); err != nil || f.typ == "" {
		return nil, fmt.Errorf("--type %q: want a glob such as shop.order.* (path.Match syntax)", f.typ)
	}
	from, err := parsePosition("from", f.from, now, true)
	if err != nil {
		return nil, err
	}
	to := position{kind: atLatest, text: "latest"}
	if f.to != "" {
		if to, err = parsePosition("to", f.to, now, true); err != nil {
			return nil, err
		}
	}
	if positionBefore(to, from) {
		return nil, fmt.Errorf("--to %s is before --from %s", to, from)
	}
	return &replayJob{topic: topic, from: from, to: to, typ: f.typ, subject: f.subject,
		stream: f.toStream, toTopic: f.toTopic, createTopic: f.createTopic, redisURL: f.redisURL, prefix: f.prefix, chunk: f.chunk}, nil
}

// positionBefore reports whether a lies before b in every partition,
// whatever the topic holds: both times, or both offsets, or latest and
// earliest.
func positionBefore(a, b position) bool {
	switch {
	case a.kind == atTime && b.kind == atTime:
		return a.time.Before(b.time)
	case a.kind == atOffset && b.kind == atOffset:
		return a.offset < b.offset
	}
	return a.kind == atEarliest && b.kind == atLatest
}

// replayJob copies a range of a topic, filtered, into a stream or a topic.
type replayJob struct {
	topic       string
	from, to    position
	typ         string // path.Match glob of the types kept
	subject     string // the subject kept; empty: any
	stream      string // target stream key, or
	toTopic     string // target topic
	createTopic bool   // create toTopic if it does not exist
	redisURL    string // for stream
	prefix      string // of the offsets hash, for stream
	chunk       int    // records per poll
}

// id names the job: a hash of what decides which records go where, so that
// the same command run again finds the progress of the last run. --to is
// left out: a job's progress is how far it got in each partition, and a
// later --to (or none, on a topic that grew) continues from there.
func (j *replayJob) id() string {
	target := "stream\x00" + j.stream
	if j.toTopic != "" {
		target = "topic\x00" + j.toTopic
	}
	sum := sha256.Sum256([]byte(strings.Join([]string{"v1", target, j.topic, positionKey(j.from), j.typ, j.subject}, "\x00")))
	return hex.EncodeToString(sum[:6])
}

// positionKey is p in a canonical form: the same position written two ways
// names the same job.
func positionKey(p position) string {
	switch p.kind {
	case atEarliest:
		return "earliest"
	case atLatest:
		return "latest"
	case atOffset:
		return "offset:" + strconv.FormatInt(p.offset, 10)
	}
	if d, err := time.ParseDuration(strings.TrimPrefix(p.text, "-")); err == nil && strings.HasPrefix(p.text, "-") {
		return "ago:" + d.String()
	}
	return "time:" + p.time.UTC().Format(time.RFC3339Nano)
}

// keep reports whether the job copies ev.
func (j *replayJob) keep(ev *spatev1.Event) bool {
	if j.subject != "" && ev.Subject != j.subject {
		return false
	}
	ok, _ := path.Match(j.typ, ev.Type) // the pattern was checked
	return ok
}

// progressIn says where the job keeps its progress.
func (j *replayJob) progressIn(id string) string {
	if j.toTopic != "" {
		return "consumer group spate-replay-" + id
	}
	return "redis hash " + j.prefix + "offsets:replay:" + id
}

func (j *replayJob) target() string {
	if j.toTopic != "" {
		return "topic " + j.toTopic
	}
	return "stream " + j.stream
}

// replaySink is where a job copies to, and where it keeps its progress.
type replaySink interface {
	// stored returns the next offset the job stored for each partition of
	// topic that has one.
	stored(ctx context.Context, partitions []int32) (map[int32]int64, error)
	// store writes the kept records of batches and each batch's Next as
	// the job's progress in its partition, atomically, and returns how
	// many records it wrote.
	store(ctx context.Context, batches []consumers.Batch) (int, error)
}

// replayHookKey keys a func(copied int64) in the command's context, which
// tests set: it is called after each chunk is stored with the records
// copied so far.
type replayHookKey struct{}

// replayCounts are what a run did.
type replayCounts struct {
	read, copied, filtered, skipped int64
}

// run copies the job's range, logging to e.log, with progress on errw and a
// summary on out.
func (j *replayJob) run(ctx context.Context, e *env, out, errw io.Writer) error {
	id := j.id()
	log := e.log.With("job", id, "topic", j.topic, "target", j.target())
	admCl, err := kgo.NewClient(e.kafkaOpts("spate-replay")...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer admCl.Close()
	adm := kadm.NewClient(admCl)
	from, err := j.from.resolve(ctx, adm, j.topic)
	if err != nil {
		return fmt.Errorf("--from %s: %w", j.from, err)
	}
	end, err := j.to.resolve(ctx, adm, j.topic)
	if err != nil {
		return fmt.Errorf("--to %s: %w", j.to, err)
	}
	parts := slices.Sorted(maps.Keys(from))
	for _, p := range parts {
		if end[p] < from[p] {
			return fmt.Errorf("--to %s is before --from %s in partition %d of %s (offset %d < %d)", j.to, j.from, p, j.topic, end[p], from[p])
		}
	}

	var sink replaySink
	if j.toTopic != "" {
		s, err := newReplayTopicSink(ctx, e, adm, j, id)
		if err != nil {
			return err
		}
		defer s.close()
		sink = s
	} else {
		s, rdb, err := newReplayStreamSink(ctx, e, log, j, id)
		if err != nil {
			return err
		}
		defer rdb.Close()
		sink = s
	}

	stored, err := sink.stored(ctx, parts)
	if err != nil {
		return err
	}
	start := make(map[int32]int64, len(parts))
	var total, already int64
	for _, p := range parts {
		start[p] = max(from[p], stored[p])
		if s, ok := stored[p]; ok {
			already += min(max(s, from[p]), end[p]) - from[p]
		}
		total += max(end[p]-start[p], 0)
	}
	log.Info("replaying", "from", j.from.String(), "to", j.to.String(), "type", j.typ, "subject", j.subject,
		"records", total, "done_before", already, "progress_in", j.progressIn(id))

	var counts replayCounts
	if total > 0 {
		prog := startProgress(errw, log, "replay "+j.topic, total)
		counts, err = j.copy(ctx, e, log, sink, start, end, prog)
		prog.finish()
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "copied %d of %d records read from %s into %s (%d filtered out, %d skipped as unusable); job %s\n",
		counts.copied, counts.read, j.topic, j.target(), counts.filtered, counts.skipped, id)
	return nil
}

// copy reads each partition from start to end and stores what it keeps.
func (j *replayJob) copy(ctx context.Context, e *env, log *slog.Logger, sink replaySink, start, end map[int32]int64, prog *progress) (replayCounts, error) {
	var counts replayCounts
	next := maps.Clone(start)       // the next offset to read
	storedNext := maps.Clone(start) // the next offset stored
	offsets := map[int32]kgo.Offset{}
	for p, o := range start {
		if o < end[p] {
			offsets[p] = kgo.NewOffset().At(o)
		}
	}
	cl, err := kgo.NewClient(append(e.kafkaOpts("spate-replay"),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{j.topic: maps.Clone(offsets)}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),                    // they take offsets too: the way to see a partition's end
		kgo.ConsumeResetOffset(kgo.NoResetOffset()), // records deleted under us are an error, not a silent jump
	)...)
	if err != nil {
		return counts, fmt.Errorf("kafka consumer: %w", err)
	}
	defer cl.Close()
	hook, _ := ctx.Value(replayHookKey{}).(func(copied int64))

	for len(offsets) > 0 {
		if ctx.Err() != nil {
			return counts, j.interrupted(ctx, prog)
		}
		fs := cl.PollRecords(ctx, j.chunk)
		if ctx.Err() != nil {
			return counts, j.interrupted(ctx, prog)
		}
		var errs []error
		fs.EachError(func(t string, p int32, err error) {
			errs = append(errs, fmt.Errorf("read %s/%d at offset %d: %w", t, p, next[p], err))
		})
		if len(errs) > 0 {
			return counts, errors.Join(errs...)
		}
		batches := map[int32]*consumers.Batch{}
		var done []int32
		fs.EachRecord(func(r *kgo.Record) {
			p := r.Partition
			if _, reading := offsets[p]; !reading || r.Offset < next[p] {
				return
			}
			b := batches[p]
			if b == nil {
				b = &consumers.Batch{Topic: j.topic, Partition: p}
				batches[p] = b
			}
			if r.Offset >= end[p] { // the end was a gap (aborted records, a marker)
				next[p], b.Next = end[p], end[p]
			} else {
				next[p], b.Next = r.Offset+1, r.Offset+1
				if !r.Attrs.IsControl() {
					counts.read++
					switch ev, err := cekafka.Event(r); {
					case err != nil:
						counts.skipped++
						log.Warn("skipping a record that is not an event", "partition", p, "offset", r.Offset, "err", err)
					case j.keep(ev):
						b.Records = append(b.Records, r)
					default:
						counts.filtered++
					}
				}
			}
			if next[p] >= end[p] {
				delete(offsets, p)
				done = append(done, p)
			}
		})
		if len(done) > 0 {
			cl.PauseFetchPartitions(map[string][]int32{j.topic: done})
		}
		if len(batches) == 0 {
			continue
		}
		list := make([]consumers.Batch, 0, len(batches))
		var kept int64
		for _, p := range slices.Sorted(maps.Keys(batches)) {
			list = append(list, *batches[p])
			kept += int64(len(batches[p].Records))
		}
		// A chunk that was read is stored even if ctx ends meanwhile.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), replayStoreTimeout)
		n, err := sink.store(sctx, list)
		cancel()
		if err != nil {
			return counts, fmt.Errorf("%w (run the same command again to resume)", err)
		}
		counts.copied += int64(n)
		counts.skipped += kept - int64(n)
		var advanced int64
		for _, b := range list {
			advanced += b.Next - storedNext[b.Partition]
			storedNext[b.Partition] = b.Next
		}
		prog.add(int(advanced))
		if hook != nil {
			hook(counts.copied)
		}
	}
	return counts, nil
}

// interrupted is the error of a run whose ctx ended before it was done.
func (j *replayJob) interrupted(ctx context.Context, prog *progress) error {
	return fmt.Errorf("replay of %s into %s interrupted after %d of %d records; run the same command again to resume: %w",
		j.topic, j.target(), prog.done.Load(), prog.total.Load(), context.Cause(ctx))
}

// replayStreamSink copies into one Redis stream with a fan-out writer whose
// only route takes the job's types to the stream, under the job's own
// offsets: exactly once, as the live fan-out.
type replayStreamSink struct {
	w     *fanout.Writer
	topic string
	log   *slog.Logger
}

// newReplayStreamSink returns the sink and its Redis client, which the
// caller closes.
func newReplayStreamSink(ctx context.Context, e *env, log *slog.Logger, j *replayJob, id string) (*replayStreamSink, *redis.Client, error) {
	opts, err := redis.ParseURL(j.redisURL)
	if err != nil {
		return nil, nil, fmt.Errorf("--redis-url: %w", err)
	}
	rdb := redis.NewClient(opts)
	// Braces are literal in the key: it is a template without placeholders.
	key := strings.NewReplacer("{", "{{", "}", "}}").Replace(j.stream)
	w, err := fanout.New(rdb, e.reg, fanout.Config{
		Group:  "replay:" + id,
		Prefix: j.prefix,
		Routes: []fanout.Route{{Types: []string{j.typ}, Stream: key}},
		Logger: log,
	})
	if err == nil {
		if err = w.Ping(ctx); err != nil {
			err = fmt.Errorf("redis: %w", err)
		}
	}
	if err == nil {
		// Refused now, rather than by each XADD on a run that a rerun
		// cannot resume either.
		var typ string
		if typ, err = rdb.Type(ctx, j.stream).Result(); err != nil {
			err = fmt.Errorf("redis: type of %s: %w", j.stream, err)
		} else if typ != "stream" && typ != "none" {
			err = fmt.Errorf("--to-stream %s holds a %s, not a stream: give another key", j.stream, typ)
		}
	}
	if err != nil {
		rdb.Close()
		return nil, nil, err
	}
	return &replayStreamSink{w: w, topic: j.topic, log: log}, rdb, nil
}

func (s *replayStreamSink) stored(ctx context.Context, partitions []int32) (map[int32]int64, error) {
	return s.w.Offsets(ctx, s.topic, partitions)
}

// store applies each batch; a record the stream cannot take (its payload
// does not decode) is left out with a warning, as the live fan-out would
// send it to the dead-letter topic.
func (s *replayStreamSink) store(ctx context.Context, batches []consumers.Batch) (int, error) {
	n := 0
	for _, b := range batches {
		for {
			err := s.w.Apply(ctx, b)
			var pe *consumers.PoisonError
			if !errors.As(err, &pe) {
				if err != nil {
					return n, err
				}
				break
			}
			// The writer checks every record before it writes any.
			kept := slices.DeleteFunc(slices.Clone(b.Records), func(r *kgo.Record) bool { return r == pe.Record })
			if len(kept) == len(b.Records) {
				return n, err
			}
			s.log.Warn("skipping an event the stream cannot take", "partition", b.Partition, "offset", pe.Record.Offset, "class", pe.Class, "err", pe.Err)
			b.Records = kept
		}
		n += len(b.Records)
	}
	return n, nil
}

// replayTopicSink copies into a topic with a transactional producer: each
// chunk's records and the job's progress, as the offsets of the job's
// consumer group, are committed in one transaction.
//
// franz-go commits offsets in a transaction only for a group it is a member
// of; the job reads partitions directly, so the sink sends AddOffsetsToTxn
// and TxnOffsetCommit itself, and EndTxn too for a chunk that kept no
// record (franz-go ends only transactions it produced in). To keep that
// sound the client speaks the transaction protocol of before KIP-890 part 2
// (TxnOffsetCommit and EndTxn at most v4), which brokers from Kafka 0.11 to
// 4.x accept: there the producer epoch does not change at EndTxn, so
// franz-go's view of the producer stays true after an EndTxn it did not send.
type replayTopicSink struct {
	cl     *kgo.Client
	adm    *kadm.Client
	topic  string // read
	target string // written
	name   string // transactional ID and consumer group
}

func newReplayTopicSink(ctx context.Context, e *env, adm *kadm.Client, j *replayJob, id string) (*replayTopicSink, error) {
	tds, err := adm.ListTopics(ctx, j.toTopic)
	if err != nil {
		return nil, fmt.Errorf("--to-topic %s: %w", j.toTopic, err)
	}
	if td, ok := tds[j.toTopic]; !ok || td.Err != nil {
		switch {
		case ok && !errors.Is(td.Err, kerr.UnknownTopicOrPartition):
			return nil, fmt.Errorf("--to-topic %s: %w", j.toTopic, td.Err)
		case !j.createTopic:
			return nil, fmt.Errorf("--to-topic %s: %w; create it first, or give --create-topic", j.toTopic, errNoTopic)
		}
		if err := createLike(ctx, adm, j.topic, j.toTopic); err != nil {
			return nil, fmt.Errorf("--to-topic %s: %w", j.toTopic, err)
		}
	}
	versions := kversion.Tip()
	versions.SetMaxKeyVersion(int16(kmsg.TxnOffsetCommit), 4)
	versions.SetMaxKeyVersion(int16(kmsg.EndTxn), 4)
	name := "spate-replay-" + id
	cl, err := kgo.NewClient(slices.Concat(e.kafkaOpts("spate-replay"), producers.Opts(), []kgo.Opt{
		kgo.TransactionalID(name),
		kgo.MaxVersions(versions),
	})...)
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	// Loading the producer ID fences earlier runs of the job and aborts the
	// transaction one of them left open, before the progress is read.
	if _, _, err := cl.ProducerID(ctx); err != nil {
		cl.Close()
		return nil, fmt.Errorf("transactional producer %s: %w", name, err)
	}
	return &replayTopicSink{cl: cl, adm: adm, topic: j.topic, target: j.toTopic, name: name}, nil
}

func (s *replayTopicSink) close() { s.cl.Close() }

func (s *replayTopicSink) stored(ctx context.Context, partitions []int32) (map[int32]int64, error) {
	resps, err := s.adm.FetchOffsets(kadm.RequireStable(ctx), s.name)
	if errors.Is(err, kerr.GroupIDNotFound) { // a new job
		return map[int32]int64{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("progress of %s (offsets of group %s): %w", s.topic, s.name, err)
	}
	offs := map[int32]int64{}
	for _, p := range partitions {
		o, ok := resps.Lookup(s.topic, p)
		switch {
		case !ok:
		case o.Err != nil:
			return nil, fmt.Errorf("progress of %s/%d (offsets of group %s): %w", s.topic, p, s.name, o.Err)
		case o.At >= 0:
			offs[p] = o.At
		}
	}
	return offs, nil
}

func (s *replayTopicSink) store(ctx context.Context, batches []consumers.Batch) (int, error) {
	var recs []*kgo.Record
	offs := make(map[int32]int64, len(batches))
	for _, b := range batches {
		offs[b.Partition] = b.Next
		for _, r := range b.Records {
			recs = append(recs, replayRecord(s.target, r))
		}
	}
	if len(recs) == 0 {
		return 0, s.fenced(s.commitOffsetsOnly(ctx, offs))
	}
	if err := s.cl.BeginTransaction(); err != nil {
		return 0, fmt.Errorf("begin transaction %s: %w", s.name, err)
	}
	err := s.cl.ProduceSync(ctx, recs...).FirstErr()
	if err != nil {
		err = fmt.Errorf("produce %d records to %s: %w", len(recs), s.target, err)
	} else {
		err = s.addOffsets(ctx, offs)
	}
	if err == nil {
		if err = s.cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
			err = fmt.Errorf("commit transaction %s: %w", s.name, err)
		}
	}
	if err != nil {
		return 0, s.fenced(errors.Join(err, s.abort()))
	}
	return len(recs), nil
}

// abort ends the open transaction without committing it.
func (s *replayTopicSink) abort() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.cl.AbortBufferedRecords(ctx)
	if err == nil {
		err = s.cl.EndTransaction(ctx, kgo.TryAbort)
	}
	if err != nil {
		return fmt.Errorf("abort transaction %s (the next run aborts it): %w", s.name, err)
	}
	return nil
}

// fenced explains err if it says that another run of the job took over.
func (s *replayTopicSink) fenced(err error) error {
	if errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) {
		return fmt.Errorf("another run of job %s took over: %w", s.name, err)
	}
	return err
}

// addOffsets adds offs, the job's progress in the read topic, to the open
// transaction.
func (s *replayTopicSink) addOffsets(ctx context.Context, offs map[int32]int64) error {
	id, epoch, err := s.cl.ProducerID(ctx)
	if err != nil {
		return fmt.Errorf("transactional producer %s: %w", s.name, err)
	}
	if err := s.addOffsetsToTxn(ctx, id, epoch); err != nil {
		return err
	}
	return s.txnOffsetCommit(ctx, id, epoch, offs)
}

func (s *replayTopicSink) addOffsetsToTxn(ctx context.Context, id int64, epoch int16) error {
	err := retryConcurrentTxn(ctx, func() error {
		req := kmsg.NewPtrAddOffsetsToTxnRequest()
		req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Group = s.name, id, epoch, s.name
		resp, err := req.RequestWith(ctx, s.cl)
		if err != nil {
			return err
		}
		return kerr.ErrorForCode(resp.ErrorCode)
	})
	if err != nil {
		return fmt.Errorf("add the offsets of group %s to transaction %s: %w", s.name, s.name, err)
	}
	return nil
}

func (s *replayTopicSink) txnOffsetCommit(ctx context.Context, id int64, epoch int16, offs map[int32]int64) error {
	req := kmsg.NewPtrTxnOffsetCommitRequest() // generation -1, no member: the group has none
	req.TransactionalID, req.Group, req.ProducerID, req.ProducerEpoch = s.name, s.name, id, epoch
	rt := kmsg.NewTxnOffsetCommitRequestTopic()
	rt.Topic = s.topic
	for _, p := range slices.Sorted(maps.Keys(offs)) {
		rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
		rp.Partition, rp.Offset = p, offs[p]
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, s.cl)
	if err == nil {
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if err = kerr.ErrorForCode(p.ErrorCode); err != nil {
					break
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("commit the progress in %s in transaction %s: %w", s.topic, s.name, err)
	}
	return nil
}

// commitOffsetsOnly stores the job's progress after a chunk that kept no
// record, in a transaction of its own: a plain offset commit could land
// after the commit of a run that fenced this one, and move it back.
func (s *replayTopicSink) commitOffsetsOnly(ctx context.Context, offs map[int32]int64) error {
	id, epoch, err := s.cl.ProducerID(ctx)
	if err != nil {
		return fmt.Errorf("transactional producer %s: %w", s.name, err)
	}
	if err := s.addOffsetsToTxn(ctx, id, epoch); err != nil {
		return err // no transaction began
	}
	err = s.txnOffsetCommit(ctx, id, epoch, offs)
	commit := err == nil
	endErr := retryConcurrentTxn(ctx, func() error {
		req := kmsg.NewPtrEndTxnRequest()
		req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Commit = s.name, id, epoch, commit
		resp, err := req.RequestWith(ctx, s.cl)
		if err != nil {
			return err
		}
		return kerr.ErrorForCode(resp.ErrorCode)
	})
	if endErr != nil {
		endErr = fmt.Errorf("end transaction %s (commit %t): %w", s.name, commit, endErr)
	}
	return errors.Join(err, endErr)
}

// retryConcurrentTxn calls fn until it does not fail with
// CONCURRENT_TRANSACTIONS, which a broker answers while it is still
// completing the previous transaction, or ctx ends.
func retryConcurrentTxn(ctx context.Context, fn func() error) error {
	wait := 10 * time.Millisecond
	for {
		err := fn()
		if !errors.Is(err, kerr.ConcurrentTransactions) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// replayRecord returns the copy of r for topic target: its key, value and
// headers, and headers naming r (replacing those of an earlier copy). The
// copy gets its own timestamp, so that the target's retention counts from
// the copy.
func replayRecord(target string, r *kgo.Record) *kgo.Record {
	hs := make([]kgo.RecordHeader, 0, len(r.Headers)+3)
	for _, h := range r.Headers {
		if !strings.HasPrefix(h.Key, "spate_replay_") {
			hs = append(hs, h)
		}
	}
	hs = append(hs,
		kgo.RecordHeader{Key: headerReplayTopic, Value: []byte(r.Topic)},
		kgo.RecordHeader{Key: headerReplayPartition, Value: strconv.AppendInt(nil, int64(r.Partition), 10)},
		kgo.RecordHeader{Key: headerReplayOffset, Value: strconv.AppendInt(nil, r.Offset, 10)},
	)
	return &kgo.Record{Topic: target, Key: r.Key, Value: r.Value, Headers: hs}
}

// createLike creates topic with as many partitions as like, and the
// broker's default replication factor.
func createLike(ctx context.Context, adm *kadm.Client, like, topic string) error {
	tds, err := adm.ListTopics(ctx, like)
	if err == nil {
		err = tds.Error()
	}
	if err != nil {
		return fmt.Errorf("partitions of %s: %w", like, err)
	}
	created, err := adm.CreateTopic(ctx, int32(len(tds[like].Partitions)), -1, nil, topic)
	if err == nil {
		err = created.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create: %w", err)
	}
	return nil
}
