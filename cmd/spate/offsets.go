package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/consumers/projection"
)

func newOffsetsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "offsets",
		Short: "Show a consumer group's offsets and lag, or reset them",
		Long: `Offsets shows where a consumer group is in each partition of a topic, and
resets that position.

The offsets that count are where the group's sink keeps them: a projector
group (spate project) stores them in Postgres, in spate_offsets, in the
transaction that writes its projections; a fan-out group (spate fanout) in
Redis, in the hash <stream-prefix>offsets:<group>, with its stream entries.
Their Kafka commits are for lag monitoring only. So give --postgres-url for
a projector group, --redis-url for a fan-out group, or neither for a group
that keeps its offsets in Kafka.`,
		Example: `  spate offsets show --group spate-project --postgres-url postgres://spate@db/spate
  spate offsets reset --group spate-fanout --redis-url redis://redis:6379/0 --to 2026-11-23T08:00:00Z --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newOffsetsShowCmd(), newOffsetsResetCmd())
	return cmd
}

func newOffsetsShowCmd() *cobra.Command {
	var f offsetsFlags
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show a group's offset and lag in each partition",
		Long: `Show prints, for each partition of --topic: the group's next offset where its
sink stores it (STORED), the offset the group committed to Kafka (COMMITTED),
the partition's log start and end, and the lag, LOG END - STORED. It also
prints the group's state in Kafka and how many live members it has.

The output is a table on a terminal, and one JSON document otherwise or with
--json (--json=false forces the table).`,
		Example: `  spate offsets show --group spate-project --postgres-url postgres://spate@db/spate
  spate offsets show --group spate-fanout --redis-url redis://redis:6379/0 --json | jq '.lag'`,
		Args:              cobra.NoArgs,
		PersistentPreRunE: f.preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.validate(); err != nil {
				return err
			}
			return withOffsets(cmd.Context(), &f, cmd.ErrOrStderr(), func(ctx context.Context, o *offsetsSession) error {
				snap, err := o.snapshot(ctx)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if outputJSON(cmd, f.json, out) {
					return offsetsJSON(out, o.showReport(snap))
				}
				return o.printShow(out, snap)
			})
		},
	}
	f.register(cmd.Flags())
	annotateEnv(cmd.Flags())
	return cmd
}

func newOffsetsResetCmd() *cobra.Command {
	var f offsetsFlags
	var to string
	var dryRun, force, reapply bool
	cmd := &cobra.Command{
		Use:   "reset",
		Short: "Move a group to earliest, latest, a time or an offset in each partition",
		Long: `Reset moves the group, in every partition of --topic, to --to:
  earliest                   the start of each partition
  latest                     the end: only new records are consumed
  2026-11-23T08:00:00Z       a time (RFC 3339): the first offset at or after it,
                             by record timestamp; the end where all are older
  -24h                       a duration ago, the same way
  42                         that offset in every partition

It prints each partition's old and new offset. The new ones are written where
the group keeps them, all in one step (one Postgres transaction, one Redis
MULTI/EXEC), and then committed to Kafka too, so that lag monitoring agrees;
if only that commit fails, the reset stands, and a warning says so.

Members read the stored offsets when they are assigned partitions. So reset
refuses while the group has live members: stop them first. With --force it
resets anyway, and the members must then be restarted: until then they go on
from where they were and store their own positions over the new ones.

A projector group (--postgres-url) is not moved back unless --reapply: its
projections would apply those events a second time (event_log refuses them,
counters count them twice). spate replay projection builds projections
again from Kafka's history.

--dry-run prints what would change and changes nothing.`,
		Example: `  spate offsets reset --group spate-project --postgres-url postgres://spate@db/spate --to 2026-11-23T08:00:00Z --dry-run
  spate offsets reset --group spate-fanout --redis-url redis://redis:6379/0 --to -2h
  spate offsets reset --group billing --to latest`,
		Args:              cobra.NoArgs,
		PersistentPreRunE: f.preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.validate(); err != nil {
				return err
			}
			if to == "" {
				return fmt.Errorf("--to is required: earliest, latest, a time (RFC 3339, e.g. 2026-11-23T08:00:00Z), a duration ago (e.g. -24h) or an offset")
			}
			pos, err := parsePosition("to", to, time.Now(), true)
			if err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			return withOffsets(cmd.Context(), &f, stderr, func(ctx context.Context, o *offsetsSession) error {
				rep, err := o.reset(ctx, pos, dryRun, force, reapply, stderr)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if outputJSON(cmd, f.json, out) {
					return offsetsJSON(out, rep)
				}
				return o.printReset(out, rep)
			})
		},
	}
	f.register(cmd.Flags())
	fs := cmd.Flags()
	fs.BoolVar(&dryRun, "dry-run", false, "print the old and new offsets, change nothing")
	annotateEnv(fs)
	// What to do is said on the command line, never left in the environment.
	fs.StringVar(&to, "to", "", "where to move the group: earliest, latest, a time (RFC 3339), a duration ago (-24h) or an offset (required)")
	fs.BoolVar(&force, "force", false, "reset even while the group has live members, who must then restart, or in a store that holds none of the group's offsets while Kafka knows it")
	fs.BoolVar(&reapply, "reapply", false, "move a projector group back, so that it applies events again: only when its tables do not hold them")
	cmdLineOnly(fs, "to", "force", "reapply")
	return cmd
}

// offsetsFlags are the flags of spate offsets show and reset.
type offsetsFlags struct {
	logFlags
	kafkaFlags
	group       string
	postgresURL string
	redisURL    string
	prefix      string
	json        bool
	timeout     time.Duration

	given map[string]bool // flags given on the command line, not taken from the environment
}

func (f *offsetsFlags) register(fs *pflag.FlagSet) {
	f.logFlags.register(fs)
	// Results go to stdout; of the logs, only trouble is worth showing.
	f.level, fs.Lookup("log-level").DefValue = "warn", "warn"
	f.kafkaFlags.register(fs, []string{"127.0.0.1:9092"})
	fs.StringVar(&f.group, "group", "", "the consumer group (required): spate-project, spate-fanout or another")
	fs.StringVar(&f.postgresURL, "postgres-url", "", "PostgreSQL URL: the group is a projector's, and its offsets are in spate_offsets there")
	fs.StringVar(&f.redisURL, "redis-url", "", "Redis URL, redis://host:port/db: the group is a fan-out's, and its offsets are in Redis")
	fs.StringVar(&f.prefix, "stream-prefix", "spate:", "with --redis-url: the fan-out's --stream-prefix, which its offsets hash starts with")
	fs.BoolVar(&f.json, "json", false, "print JSON (default: when stdout is not a terminal)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "how long the command may take to reach Kafka, Postgres and Redis and finish")
}

// preRun notes which flags were given on the command line, then takes the
// others from the environment, as the root does.
func (f *offsetsFlags) preRun(cmd *cobra.Command, _ []string) error {
	fs := cmd.Flags()
	f.given = map[string]bool{}
	fs.Visit(func(fl *pflag.Flag) { f.given[fl.Name] = true })
	return envFallback(fs)
}

// source names a flag as the user gave it: on the command line or through
// its environment variable.
func (f *offsetsFlags) source(flag string) string {
	if f.given[flag] {
		return "--" + flag
	}
	return "--" + flag + " (from " + envName(flag) + ")"
}

// validate refuses flags that are missing or contradict each other.
func (f *offsetsFlags) validate() error {
	if f.postgresURL != "" && f.redisURL != "" {
		return fmt.Errorf("both %s and %s given: a group keeps its offsets in one place; give --postgres-url for a projector group or --redis-url for a fan-out group",
			f.source("postgres-url"), f.source("redis-url"))
	}
	if f.group == "" {
		return errors.New("--group is required: spate-project for the projector (with --postgres-url), spate-fanout for the fan-out (with --redis-url), or another consumer group")
	}
	if len(f.brokers) == 0 {
		return errors.New("--kafka-brokers is required")
	}
	if f.topic == "" {
		return errors.New("--topic is required")
	}
	if f.timeout <= 0 {
		return fmt.Errorf("--timeout %v: want a positive duration", f.timeout)
	}
	return nil
}

// offsetsSession is what spate offsets works with: Kafka, and the store that
// holds the group's offsets.
type offsetsSession struct {
	adm   *kadm.Client
	store offsetStore
	group string
	topic string
}

// offsetStore is where a group's offsets are the truth.
type offsetStore struct {
	name  string // postgres, redis or kafka
	where string // for people
	load  func(ctx context.Context, partitions []int32) (map[int32]int64, error)
	// set stores offs in one atomic step and returns the offsets it replaced.
	set func(ctx context.Context, offs map[int32]int64) (map[int32]int64, error)
}

// withOffsets connects to Kafka and the store, runs fn and disconnects.
func withOffsets(ctx context.Context, f *offsetsFlags, stderr io.Writer, fn func(context.Context, *offsetsSession) error) error {
	_, kafkaLog, err := f.loggers(stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(f.brokers...), kgo.ClientID("spate-offsets"), kgo.WithLogger(kslog.New(kafkaLog)))
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	o := &offsetsSession{adm: kadm.NewClient(cl), group: f.group, topic: f.topic}
	switch {
	case f.postgresURL != "":
		cfg, err := pgxpool.ParseConfig(f.postgresURL)
		if err != nil {
			return fmt.Errorf("--postgres-url: %w", err)
		}
		cfg.MaxConns = 2
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		defer pool.Close()
		at := fmt.Sprintf("database %s at %s", cfg.ConnConfig.Database, cfg.ConnConfig.Host)
		if err := pool.Ping(ctx); err != nil {
			return fmt.Errorf("postgres, %s: %w", at, err)
		}
		o.store = offsetStore{
			name:  "postgres",
			where: "postgres (table spate_offsets, " + at + ")",
			load: func(ctx context.Context, _ []int32) (map[int32]int64, error) {
				return projection.StoredOffsets(ctx, pool, f.group, f.topic)
			},
			set: func(ctx context.Context, offs map[int32]int64) (map[int32]int64, error) {
				return projection.SetOffsets(ctx, pool, f.group, f.topic, offs)
			},
		}
	case f.redisURL != "":
		opts, err := redis.ParseURL(f.redisURL)
		if err != nil {
			return fmt.Errorf("--redis-url: %w", err)
		}
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		at := fmt.Sprintf("%s db %d", opts.Addr, opts.DB)
		if err := rdb.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis at %s: %w", at, err)
		}
		cfg := fanout.Config{Group: f.group, Prefix: f.prefix}
		o.store = offsetStore{
			name:  "redis",
			where: fmt.Sprintf("redis (the offsets hash under --stream-prefix %q, at %s)", f.prefix, at),
			load: func(ctx context.Context, parts []int32) (map[int32]int64, error) {
				return fanout.StoredOffsets(ctx, rdb, cfg, f.topic, parts)
			},
			set: func(ctx context.Context, offs map[int32]int64) (map[int32]int64, error) {
				return fanout.SetOffsets(ctx, rdb, cfg, f.topic, offs)
			},
		}
	default:
		o.store = offsetStore{
			name:  "kafka",
			where: "Kafka only (no --postgres-url or --redis-url: for spate project and spate fanout, Kafka's commits are for lag monitoring, and the offsets that count are in Postgres or Redis)",
			load: func(ctx context.Context, _ []int32) (map[int32]int64, error) {
				return o.committed(ctx)
			},
			set: func(ctx context.Context, offs map[int32]int64) (map[int32]int64, error) {
				old, err := o.committed(ctx)
				if err != nil {
					return nil, err
				}
				return old, o.commit(ctx, offs)
			},
		}
	}
	if err := fn(ctx, o); err != nil {
		if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w (--timeout %v)", err, f.timeout)
		}
		return err
	}
	return nil
}

// offsetsSnapshot is the group's position in each partition.
type offsetsSnapshot struct {
	state      string // the group's state in Kafka: Stable, Empty, Dead...
	members    int    // live members
	partitions []int32
	starts     map[int32]int64
	ends       map[int32]int64
	committed  map[int32]int64 // in Kafka
	stored     map[int32]int64 // in the store
}

// live reports whether the group has members, or is forming.
func (s *offsetsSnapshot) live() bool {
	return s.members > 0 || s.state == "PreparingRebalance" || s.state == "CompletingRebalance"
}

func (o *offsetsSession) snapshot(ctx context.Context) (*offsetsSnapshot, error) {
	s := &offsetsSnapshot{}
	var err error
	if s.starts, s.ends, err = bounds(ctx, o.adm, o.topic); err != nil {
		return nil, err
	}
	s.partitions = slices.Sorted(maps.Keys(s.ends))
	if s.state, s.members, err = o.describe(ctx); err != nil {
		return nil, err
	}
	if s.committed, err = o.committed(ctx); err != nil {
		return nil, err
	}
	if s.stored, err = o.store.load(ctx, s.partitions); err != nil {
		return nil, fmt.Errorf("%s: %w", o.store.name, err)
	}
	return s, nil
}

// describe returns the group's state and number of members in Kafka. A
// group Kafka does not know is Dead, with none.
func (o *offsetsSession) describe(ctx context.Context) (state string, members int, err error) {
	described, err := o.adm.DescribeGroups(ctx, o.group)
	if err != nil {
		return "", 0, fmt.Errorf("describe group %s: %w", o.group, err)
	}
	d, ok := described[o.group]
	switch {
	case !ok:
		return "", 0, fmt.Errorf("describe group %s: Kafka did not answer for it", o.group)
	case errors.Is(d.Err, kerr.GroupIDNotFound):
		// Kafka says the same of a group of the new consumer protocol
		// (KIP-848), which could have members: make sure it is not one.
		listed, err := o.adm.ListGroups(ctx)
		if err != nil {
			return "", 0, fmt.Errorf("list groups: %w", err)
		}
		if _, ok := listed[o.group]; ok {
			return "", 0, fmt.Errorf("group %s is not a classic consumer group, which Spate's consumers are: check --group", o.group)
		}
		return "Dead", 0, nil
	case d.Err != nil:
		return "", 0, fmt.Errorf("describe group %s: %w", o.group, d.Err)
	}
	return d.State, len(d.Members), nil
}

// committed returns the offsets the group committed to Kafka for the topic.
func (o *offsetsSession) committed(ctx context.Context) (map[int32]int64, error) {
	resps, err := o.adm.FetchOffsets(ctx, o.group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return map[int32]int64{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("committed offsets of group %s: %w", o.group, err)
	}
	offs := map[int32]int64{}
	for p, r := range resps[o.topic] {
		if r.Err != nil {
			return nil, fmt.Errorf("committed offset of group %s in %s/%d: %w", o.group, o.topic, p, r.Err)
		}
		if r.At >= 0 {
			offs[p] = r.At
		}
	}
	return offs, nil
}

// commit commits offs to Kafka for the group.
func (o *offsetsSession) commit(ctx context.Context, offs map[int32]int64) error {
	commits := make(kadm.Offsets)
	for p, at := range offs {
		commits.Add(kadm.Offset{Topic: o.topic, Partition: p, At: at, LeaderEpoch: -1})
	}
	if err := o.adm.CommitAllOffsets(ctx, o.group, commits); err != nil {
		return fmt.Errorf("commit offsets of group %s to Kafka: %w", o.group, err)
	}
	return nil
}

// showReport is what spate offsets show prints as JSON.
type showReport struct {
	Group      string          `json:"group"`
	Topic      string          `json:"topic"`
	Store      string          `json:"store"` // postgres, redis or kafka
	State      string          `json:"state"`
	Members    int             `json:"members"`
	Partitions []showPartition `json:"partitions"`
	Lag        *int64          `json:"lag"` // the sum of the partitions' known lags; null when none is known
}

type showPartition struct {
	Partition int32  `json:"partition"`
	Stored    *int64 `json:"stored"`    // null: none stored
	Committed *int64 `json:"committed"` // null: none committed
	Start     int64  `json:"start"`
	End       int64  `json:"end"`
	Lag       *int64 `json:"lag"` // end - stored (negative: stored beyond the end); null without a stored offset
}

func (o *offsetsSession) showReport(s *offsetsSnapshot) showReport {
	r := showReport{Group: o.group, Topic: o.topic, Store: o.store.name, State: s.state, Members: s.members}
	for _, p := range s.partitions {
		sp := showPartition{Partition: p, Stored: offsetAt(s.stored, p), Committed: offsetAt(s.committed, p), Start: s.starts[p], End: s.ends[p]}
		if sp.Stored != nil {
			lag := sp.End - *sp.Stored
			sp.Lag = &lag
			if r.Lag == nil {
				r.Lag = new(int64)
			}
			*r.Lag += lag
		}
		r.Partitions = append(r.Partitions, sp)
	}
	return r
}

func (o *offsetsSession) printShow(w io.Writer, s *offsetsSnapshot) error {
	r := o.showReport(s)
	var b strings.Builder
	o.header(&b, s)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tSTORED\tCOMMITTED\tLOG START\tLOG END\tLAG")
	unstored, beyond := false, false
	for _, p := range r.Partitions {
		unstored = unstored || p.Stored == nil
		beyond = beyond || p.Lag != nil && *p.Lag < 0
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\n", p.Partition, offsetText(p.Stored), offsetText(p.Committed), p.Start, p.End, offsetText(p.Lag))
	}
	fmt.Fprintf(tw, "total\t\t\t\t\t%s\n", offsetText(r.Lag))
	tw.Flush()
	if r.Lag == nil {
		fmt.Fprintf(&b, "no offset of group %s is stored in %s: check --group, and the store (a projector group keeps its offsets in Postgres, --postgres-url; a fan-out group in Redis, --redis-url)\n", o.group, o.store.name)
	}
	if unstored {
		fmt.Fprintln(&b, "-: no offset stored; the group starts such a partition at its --start-at (earliest unless told)")
	}
	if beyond {
		fmt.Fprintln(&b, "negative lag: the stored offset is beyond the log end (was the topic recreated?); the sink skips records below it until the group is reset")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// header describes the group and where its offsets are.
func (o *offsetsSession) header(b *strings.Builder, s *offsetsSnapshot) {
	members := "no live members"
	if s.members == 1 {
		members = "1 live member"
	} else if s.members > 1 {
		members = fmt.Sprintf("%d live members", s.members)
	}
	state := s.state
	if state == "Dead" {
		state = "Dead (unknown to Kafka)"
	}
	fmt.Fprintf(b, "group %s: %s, %s\n", o.group, state, members)
	fmt.Fprintf(b, "topic %s; offsets in %s\n\n", o.topic, o.store.where)
}

// resetReport is what spate offsets reset prints as JSON.
type resetReport struct {
	Group      string           `json:"group"`
	Topic      string           `json:"topic"`
	Store      string           `json:"store"` // postgres, redis or kafka
	State      string           `json:"state"`
	Members    int              `json:"members"`
	To         string           `json:"to"`           // as given
	At         string           `json:"at,omitempty"` // the time it means (RFC 3339), if a time
	DryRun     bool             `json:"dry_run"`
	Partitions []resetPartition `json:"partitions"`
	// Reset is true once the store holds the new offsets.
	Reset bool `json:"reset"`
	// KafkaCommitted is true once Kafka holds them too (for the kafka
	// store, the same as Reset); KafkaError says why not.
	KafkaCommitted bool   `json:"kafka_committed"`
	KafkaError     string `json:"kafka_error,omitempty"`

	snap *offsetsSnapshot
}

type resetPartition struct {
	Partition int32  `json:"partition"`
	Old       *int64 `json:"old"` // null: none stored
	New       int64  `json:"new"`
}

// reset moves the group to pos in every partition, unless dryRun. It
// refuses while the group has live members, unless force, and to move a
// projector group back, unless reapply. Warnings go to stderr.
func (o *offsetsSession) reset(ctx context.Context, pos position, dryRun, force, reapply bool, stderr io.Writer) (*resetReport, error) {
	s, err := o.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	target, err := pos.resolve(ctx, o.adm, o.topic)
	if err != nil {
		return nil, err
	}
	for _, p := range s.partitions {
		if _, ok := target[p]; !ok {
			return nil, fmt.Errorf("resolve %s in %s: no offset for partition %d", pos, o.topic, p)
		}
	}
	rep := &resetReport{Group: o.group, Topic: o.topic, Store: o.store.name, State: s.state, Members: s.members, To: pos.String(), DryRun: dryRun, snap: s}
	if pos.kind == atTime {
		rep.At = pos.time.UTC().Truncate(time.Millisecond).Format(time.RFC3339Nano) // Kafka looks up milliseconds
	}
	fill := func(old map[int32]int64) {
		rep.Partitions = rep.Partitions[:0]
		for _, p := range s.partitions {
			rep.Partitions = append(rep.Partitions, resetPartition{Partition: p, Old: offsetAt(old, p), New: target[p]})
		}
	}
	fill(s.stored)
	live := fmt.Sprintf("group %s has %d live member(s) (state %s)", o.group, s.members, s.state)
	if s.live() {
		switch {
		case dryRun && o.store.name == "kafka":
			fmt.Fprintf(stderr, "warning: %s: a reset would be refused until they stop (Kafka takes offsets from outside a group only while it has none; --force cannot help)\n", live)
		case dryRun:
			fmt.Fprintf(stderr, "warning: %s: a reset would be refused without --force\n", live)
		case o.store.name == "kafka":
			return nil, fmt.Errorf("%s: Kafka takes offsets from outside a group only while it has none, so stop them first (--force cannot help here)", live)
		case !force:
			return nil, fmt.Errorf("%s: refusing to reset offsets under them; stop them first, or pass --force and then restart them (members read the offsets only when assigned partitions)", live)
		}
	}
	if o.store.name == "postgres" {
		var back []string
		for _, p := range s.partitions {
			if old, ok := s.stored[p]; ok && target[p] < old {
				back = append(back, fmt.Sprintf("%d from %d to %d", p, old, target[p]))
			}
		}
		if len(back) > 0 && !reapply {
			why := fmt.Sprintf("moving %s back (partitions %s) would apply those events to its projections a second time: event_log refuses the ones it holds, so they would be dead-lettered, and counters and totals would count them twice. To build the projections again from Kafka's history, use spate replay projection. If the tables do not hold those events (they were emptied, or the topic was created again and they were emptied of its old events), pass --reapply", o.group, strings.Join(back, "; "))
			if !dryRun {
				return nil, errors.New(why)
			}
			fmt.Fprintf(stderr, "warning: %s\n", why)
		}
	}
	if len(s.stored) == 0 && s.state != "Dead" && o.store.name != "kafka" {
		// Kafka knows a group whose store holds nothing: its offsets
		// are most likely in another store.
		why := fmt.Sprintf("group %s has no offsets in %s for %s, but Kafka knows it (%s): its offsets are likely kept elsewhere (the fan-out's in Redis, --redis-url; a projector's in Postgres, --postgres-url)", o.group, o.store.name, o.topic, s.state)
		switch {
		case dryRun:
			fmt.Fprintf(stderr, "warning: %s; a reset would be refused without --force\n", why)
		case !force:
			return nil, fmt.Errorf("%s; pass --force to store them in %s all the same", why, o.store.name)
		}
	}
	if dryRun {
		return rep, nil
	}
	if len(s.stored) == 0 && s.state == "Dead" {
		fmt.Fprintf(stderr, "warning: group %s had no offsets in %s for %s and is unknown to Kafka: check --group; the new offsets are stored all the same\n", o.group, o.store.name, o.topic)
	}
	replaced, err := o.store.set(ctx, target)
	if err != nil {
		return nil, fmt.Errorf("reset offsets in %s: %w", o.store.name, err)
	}
	rep.Reset = true
	fill(replaced)
	for _, p := range s.partitions {
		before, was := s.stored[p]
		after, is := replaced[p]
		if before != after || was != is {
			fmt.Fprintf(stderr, "warning: partition %d changed from %s to %s while resetting: a member of the group is running\n", p, offsetText(offsetAt(s.stored, p)), offsetText(offsetAt(replaced, p)))
		}
	}
	if o.store.name == "kafka" {
		rep.KafkaCommitted = true
	} else if err := o.commit(ctx, target); err != nil {
		rep.KafkaError = err.Error()
		why := ""
		if s.live() {
			why = " (Kafka takes commits from outside a group only while it has no members)"
		}
		fmt.Fprintf(stderr, "warning: the offsets are reset in %s, which is the truth, but %v%s; lag monitoring shows the old offsets until the group commits again\n", o.store.name, err, why)
	} else {
		rep.KafkaCommitted = true
	}
	if s.live() {
		fmt.Fprintf(stderr, "warning: %s: restart them now, so that they resume from the new offsets; until then they go on from where they were\n", live)
	} else if _, members, err := o.describe(ctx); err == nil && members > 0 {
		fmt.Fprintf(stderr, "warning: a member joined group %s during the reset: restart the group's members, so that they resume from the new offsets\n", o.group)
	}
	return rep, nil
}

func (o *offsetsSession) printReset(w io.Writer, r *resetReport) error {
	var b strings.Builder
	o.header(&b, r.snap)
	if r.At != "" && r.At != r.To {
		fmt.Fprintf(&b, "reset to %s (%s)\n", r.To, r.At)
	} else {
		fmt.Fprintf(&b, "reset to %s\n", r.To)
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tOLD\tNEW\tMOVE")
	for _, p := range r.Partitions {
		move := "new"
		if p.Old != nil {
			move = fmt.Sprintf("%+d", p.New-*p.Old)
			if p.New == *p.Old {
				move = "0"
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", p.Partition, offsetText(p.Old), p.New, move)
	}
	tw.Flush()
	switch {
	case r.DryRun:
		fmt.Fprintln(&b, "dry run: nothing changed")
	case r.Store == "kafka":
		fmt.Fprintf(&b, "reset %d partitions: committed to Kafka\n", len(r.Partitions))
	case r.KafkaCommitted:
		fmt.Fprintf(&b, "reset %d partitions in %s, and committed to Kafka for lag monitoring\n", len(r.Partitions), r.Store)
	default:
		fmt.Fprintf(&b, "reset %d partitions in %s; not committed to Kafka (see the warning)\n", len(r.Partitions), r.Store)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func offsetAt(m map[int32]int64, p int32) *int64 {
	if o, ok := m[p]; ok {
		return &o
	}
	return nil
}

func offsetText(o *int64) string {
	if o == nil {
		return "-"
	}
	return strconv.FormatInt(*o, 10)
}

func offsetsJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
