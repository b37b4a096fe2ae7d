package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/producers"
	"github.com/spate-io/spate/producers/edge"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

func newDedupeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dedupe",
		Short: "Show what the edge's dedupe store holds for events, and resolve the claims of an edge that stopped",
		Long: `An edge with --dedupe-redis-url claims each event's id (its source and id,
under the API key that sent it) in Redis before it publishes the event, and
records the event's receipt once Kafka has written it: a retry within
--dedupe-window gets that receipt back and is not published again.

An edge that stops before Kafka answered (it crashed, or its stop outlasted
the 30 s it waits for Kafka) leaves its claims without receipts. Retries of
those events get 409 for the rest of the window, since Kafka may or may not
have written them. show tells such claims apart; resolve looks for each
one's record in Kafka and ends the claim: with the record's receipt when
Kafka has it, so that retries get it, or by releasing it when Kafka does
not, so that a retry publishes the event. Once the edge has stopped,
neither writes an event twice.

Name each event by its source and id, in pairs, and give the --topic of the
edges that published it and the --key that sent it: both are part of what
the store holds it by.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newDedupeShowCmd(), newDedupeResolveCmd())
	return cmd
}

// dedupeFlags are the flags the dedupe commands share.
type dedupeFlags struct {
	logFlags
	kafkaFlags
	redisURL string
	key      string
}

// register adds the flags; withKafka, those of the logs and Kafka's
// brokers too, besides --topic.
func (f *dedupeFlags) register(fs *pflag.FlagSet, withKafka bool) {
	if withKafka {
		f.logFlags.register(fs)
		f.kafkaFlags.register(fs, []string{"127.0.0.1:9092"})
	} else {
		fs.StringVar(&f.topic, "topic", producers.DefaultTopic, "Kafka topic of the edges that published the events (their --topic)")
	}
	fs.StringVar(&f.redisURL, "dedupe-redis-url", "redis://127.0.0.1:6379/0", "the Redis of the edges' dedupe store (their --dedupe-redis-url); spate dev prints the URL of its server")
	fs.StringVar(&f.key, "key", "", "the name the events were sent under: the API key's or client certificate's in the edges' --keys file or, without one, the client certificate's (its first URI or DNS name, else its common name); none for edges without either")
}

// open returns the dedupe store of the flags and the Redis client to close.
func (f *dedupeFlags) open() (*edge.Dedupe, *redis.Client, error) {
	opts, err := redis.ParseURL(f.redisURL)
	if err != nil {
		return nil, nil, fmt.Errorf("--dedupe-redis-url: %w", err)
	}
	rdb := redis.NewClient(opts)
	return edge.NewDedupe(rdb, 0, ""), rdb, nil
}

// dedupeEvents checks that args name events, by source and id in pairs.
func dedupeEvents(_ *cobra.Command, args []string) error {
	switch {
	case len(args) == 1:
		return fmt.Errorf("name each event by its source and id, in pairs: got 1 argument")
	case len(args) == 0 || len(args)%2 != 0:
		return fmt.Errorf("name each event by its source and id, in pairs: got %d arguments", len(args))
	}
	return nil
}

// eventsOf returns the events args name, each once.
func eventsOf(args []string) []*spatev1.Event {
	evs := make([]*spatev1.Event, 0, len(args)/2)
	seen := map[eventRef]bool{}
	for i := 0; i < len(args); i += 2 {
		if ref := (eventRef{args[i], args[i+1]}); !seen[ref] {
			seen[ref] = true
			evs = append(evs, &spatev1.Event{Source: ref.source, Id: ref.id})
		}
	}
	return evs
}

func newDedupeShowCmd() *cobra.Command {
	var f dedupeFlags
	cmd := &cobra.Command{
		Use:   "show SOURCE ID [SOURCE ID ...]",
		Short: "Show what the dedupe store holds for each event: its receipt, a claim not settled, or nothing",
		Long: `Show prints, for each event, what the edges' dedupe store holds for it:

  published  its first receipt (topic/partition@offset): retries get it
  claimed    a claim whose publish has not settled, and when it was made:
             retries get 409 until it settles or is resolved
  -          nothing: the event was not published within the window, or
             its publish failed and was released

and how long the store remembers it still. It changes nothing, and needs
no Kafka. A wrong --topic or --key shows every event as not held.`,
		Example: `  spate dedupe show /shop order-1001 --dedupe-redis-url redis://redis:6379/0
  spate dedupe show /shop order-1001 /shop order-1002 --key checkout`,
		Args: dedupeEvents,
		RunE: func(cmd *cobra.Command, args []string) error {
			d, rdb, err := f.open()
			if err != nil {
				return err
			}
			defer rdb.Close()
			evs := eventsOf(args)
			hs, err := d.Held(cmd.Context(), f.topic, f.key, evs)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SOURCE\tID\tSTATE\tDETAIL\tREMEMBERED")
			now := time.Now()
			for i, h := range hs {
				state, detail := heldState(h, now)
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", evs[i].Source, evs[i].Id, state, detail, remembered(h.TTL))
			}
			return w.Flush()
		},
	}
	f.register(cmd.Flags(), false)
	annotateEnv(cmd.Flags())
	cmdLineOnly(cmd.Flags(), "key")
	return cmd
}

// heldState words what the store holds for an event.
func heldState(h edge.Held, now time.Time) (state, detail string) {
	switch {
	case h.Receipt != nil:
		return "published", receiptText(h.Receipt)
	case h.Claim != "" && h.Since.IsZero():
		return "claimed", "by an earlier version, which does not say when"
	case h.Claim != "":
		return "claimed", fmt.Sprintf("at %s, %s ago", h.Since.UTC().Format(time.RFC3339), now.Sub(h.Since).Round(time.Second))
	}
	return "-", "-"
}

func receiptText(r *spatev1.Receipt) string {
	return fmt.Sprintf("%s/%d@%d", r.Topic, r.Partition, r.Offset)
}

func remembered(ttl time.Duration) string {
	switch {
	case ttl < 0:
		return "for ever"
	case ttl == 0:
		return "-"
	}
	return "for " + ttl.Round(time.Second).String()
}

func newDedupeResolveCmd() *cobra.Command {
	var f dedupeFlags
	var olderThan time.Duration
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "resolve SOURCE ID [SOURCE ID ...]",
		Short: "End the claims an edge left when it stopped before Kafka answered: with the record Kafka has, or released",
		Long: `Resolve ends the claims of events whose publish never settled, because the
edge publishing them stopped before Kafka answered. It looks in --topic for
each claimed event's record (the same source and id, sent under the same
--key), reading every record from a minute before the earliest claim to
the topic's end: the edge produces a record after claiming it. Then:

  found      the claim becomes the record's receipt: retries get it, as if
             the edge had recorded it itself
  not found  the claim is released: the next retry publishes the event

A claim is left alone when it is younger than --older-than: an edge that
is still running keeps a claim until Kafka answers, however long Kafka
takes, and may still write the record. So resolve the claims of an edge
that has stopped, once it has. A claim whose record is not found is left
alone too when Kafka may have removed it: retention removed records from
where the search begins, or the topic is compacted. So are events already
published, not held, or claimed by an earlier version (whose claims do not
say when they were made). Transactional records are not taken: an edge
never writes one. With --dry-run, resolve searches and says what it would
do.`,
		Example: `  spate dedupe resolve /shop order-1001 /shop order-1002 --kafka-brokers kafka:9092 --dedupe-redis-url redis://redis:6379/0
  spate dedupe resolve /shop order-1001 --key checkout --dry-run`,
		Args: dedupeEvents,
		RunE: func(cmd *cobra.Command, args []string) error {
			if olderThan < 0 {
				return fmt.Errorf("--older-than %v: want 0 or more", olderThan)
			}
			d, rdb, err := f.open()
			if err != nil {
				return err
			}
			defer rdb.Close()
			e, err := newEnv(&f.logFlags, &f.kafkaFlags, "", cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			r := dedupeResolver{d: d, e: e, key: f.key, olderThan: olderThan, dryRun: dryRun, out: cmd.OutOrStdout(), stderr: cmd.ErrOrStderr()}
			return r.resolve(cmd.Context(), eventsOf(args), time.Now())
		},
	}
	f.register(cmd.Flags(), true)
	annotateEnv(cmd.Flags())
	cmd.Flags().DurationVar(&olderThan, "older-than", 10*time.Minute, "resolve only claims at least this old: a running edge keeps its claims until Kafka answers")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "search Kafka and say what would be done, changing nothing")
	cmdLineOnly(cmd.Flags(), "key", "older-than", "dry-run")
	return cmd
}

// resolveSkew is how long before its claim's time an event's record is
// searched from: the edge produces it after the claim, and stamps it with
// the same clock (with the topic's message.timestamp.type CreateTime), or
// Kafka does (LogAppendTime), whose clock may be behind.
const resolveSkew = time.Minute

type dedupeResolver struct {
	d         *edge.Dedupe
	e         *env
	key       string
	olderThan time.Duration
	dryRun    bool
	out       io.Writer
	stderr    io.Writer
}

// eventRef names an event, as records carry it.
type eventRef struct{ source, id string }

func (r dedupeResolver) resolve(ctx context.Context, evs []*spatev1.Event, now time.Time) error {
	hs, err := r.d.Held(ctx, r.e.topic, r.key, evs)
	if err != nil {
		return err
	}
	say := func(i int, format string, a ...any) {
		fmt.Fprintf(r.out, "%s %s: %s\n", evs[i].Source, evs[i].Id, fmt.Sprintf(format, a...))
	}
	var todo []int
	var from time.Time // the earliest claim to resolve
	for i, h := range hs {
		switch {
		case h.Receipt != nil:
			say(i, "published at %s: nothing to resolve", receiptText(h.Receipt))
		case h.Claim == "":
			say(i, "not held: nothing to resolve")
		case h.Since.IsZero():
			say(i, "claimed by an earlier version, which does not say when: left alone; look for its record with kcat, and send it again with a new id if Kafka lacks it")
		case h.Since.After(now):
			say(i, "claimed at %s, later than this machine's clock says it is now: left alone", h.Since.UTC().Format(time.RFC3339))
		case now.Sub(h.Since) < r.olderThan:
			say(i, "claimed %s ago: left alone, a running edge may still settle it (--older-than %v)", now.Sub(h.Since).Round(time.Second), r.olderThan)
		default:
			todo = append(todo, i)
			if from.IsZero() || h.Since.Before(from) {
				from = h.Since
			}
		}
	}
	if len(todo) == 0 {
		return nil
	}
	want := make(map[eventRef]int, len(todo))
	for _, i := range todo {
		want[eventRef{evs[i].Source, evs[i].Id}] = i
	}
	found, cut, err := r.search(ctx, from.Add(-resolveSkew), want)
	if err != nil {
		return err
	}
	for _, i := range todo {
		rec := found[i]
		switch {
		case rec == nil && cut != "":
			say(i, "not found, but %s: left alone; send it again with a new id if Kafka lacks it", cut)
		case r.dryRun && rec != nil:
			say(i, "in Kafka at %s: would take that receipt (dry run)", receiptText(rec))
		case r.dryRun:
			say(i, "not in Kafka: would release the claim (dry run)")
		default:
			ok, err := r.d.Resolve(ctx, hs[i], rec)
			switch {
			case err != nil:
				return err
			case !ok:
				say(i, "its claim changed while resolving: left alone; run show again")
			case rec != nil:
				say(i, "in Kafka at %s: retries now get that receipt", receiptText(rec))
			default:
				say(i, "not in Kafka: claim released, the next retry publishes it")
			}
		}
	}
	return nil
}

// search reads the records of the topic stamped from a time on, to the
// topic's end, and returns the receipts of those of the events wanted (by
// their index) that were sent under the resolver's key, the first of each.
// Records are read to the end, not to some time after from: a record's
// place in a partition does not follow its stamp (edges' clocks differ,
// and a produce retried keeps its first stamp). cut says why a record not
// found may have been written all the same ("" when it was not): Kafka
// removed records that could have been it, by retention or compaction.
func (r dedupeResolver) search(ctx context.Context, from time.Time, want map[eventRef]int) (found map[int]*spatev1.Receipt, cut string, err error) {
	cl, err := kgo.NewClient(r.e.kafkaOpts("spate-dedupe")...)
	if err != nil {
		return nil, "", fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if compacted, err := isCompacted(ctx, adm, r.e.topic); err != nil {
		return nil, "", err
	} else if compacted {
		cut = "the topic is compacted, which may have removed it"
	}
	_, ends, err := bounds(ctx, adm, r.e.topic)
	if err != nil {
		return nil, "", err
	}
	starts, err := position{kind: atTime, time: from}.resolve(ctx, adm, r.e.topic)
	if err != nil {
		return nil, "", err
	}
	var total int64
	for p, end := range ends {
		total += max(end-starts[p], 0)
	}
	prog := startProgress(r.stderr, r.e.log, "searching "+r.e.topic, total)
	defer prog.finish()
	found = map[int]*spatev1.Receipt{}
	err = consumers.ReadRange(ctx, r.e.kafkaOpts("spate-dedupe"), r.e.topic, starts, ends, func(rec *kgo.Record) error {
		prog.add(1)
		if rec.Attrs.IsTransactional() {
			// Not an edge's (its producer is idempotent, never
			// transactional): a copy, committed or aborted, or a marker.
			return nil
		}
		var ref eventRef
		var principal string
		for _, h := range rec.Headers {
			switch h.Key {
			case cekafka.HeaderSource:
				ref.source = string(h.Value)
			case cekafka.HeaderID:
				ref.id = string(h.Value)
			case edge.HeaderPrincipal:
				principal = string(h.Value)
			}
		}
		i, ok := want[ref]
		if ok && principal == r.key && found[i] == nil {
			found[i] = &spatev1.Receipt{Id: ref.id, Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	// Where retention removed records from where the search began, or up
	// to there (those could have been stamped from then on too), by the
	// time it ended, it may have missed the record.
	logStarts, _, err := bounds(ctx, adm, r.e.topic)
	if err != nil {
		return nil, "", err
	}
	for p, start := range starts {
		if logStarts[p] > start || logStarts[p] == start && start > 0 {
			cut = cmp.Or(cut, "Kafka no longer holds every record since its claim (retention removed the oldest), which may have been it")
		}
	}
	return found, cut, nil
}

// isCompacted reports whether topic's cleanup.policy compacts it.
func isCompacted(ctx context.Context, adm *kadm.Client, topic string) (bool, error) {
	rcs, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return false, fmt.Errorf("configs of %s: %w", topic, err)
	}
	rc, err := rcs.On(topic, nil)
	if err == nil {
		err = rc.Err
	}
	if err != nil {
		return false, fmt.Errorf("configs of %s: %w", topic, err)
	}
	for _, c := range rc.Configs {
		if c.Key == "cleanup.policy" && c.Value != nil && strings.Contains(*c.Value, "compact") {
			return true, nil
		}
	}
	return false, nil
}
