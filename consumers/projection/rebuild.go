package projection

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/schemas"
)

// RebuildConfig tunes a Rebuild. Projections is required; the zero value
// of the rest works.
type RebuildConfig struct {
	// Projections to rebuild, together: a projection whose statements read
	// another's tables is rebuilt with it (see Select).
	Projections []Projection
	// Topic the projections consume. Zero: spate.events.
	Topic string
	// Group is the live projector group: the rebuild catches up with its
	// offsets and swaps in at exactly them. Zero: DefaultGroup.
	Group string
	// From is where a new rebuild starts in each partition. Zero: at each
	// partition's start. A rebuild that resumes continues where it stopped,
	// unless it started later than From asks: then it starts over.
	From map[int32]int64
	// PartialHistory lets a rebuild start at the oldest event Kafka keeps
	// where retention deleted events it would have applied (from offset 0
	// or From; an interrupted run whose next events were deleted starts
	// over): the rebuilt tables then lack those events. Zero: such a
	// rebuild fails with ErrHistoryGone before it applies anything.
	// Retention deleting events a running rebuild has not read yet fails
	// it with ErrHistoryGone either way; run again, it starts over with
	// PartialHistory.
	PartialHistory bool
	// SkipRejected lets a rebuild swap in although it skipped events that
	// the live projector applied (it did not dead-letter them): the new
	// definitions reject them, say. Zero: the swap refuses with
	// ErrSkippedApplied, leaving the live tables as they are.
	SkipRejected bool
	// RetrySkipped makes the swap try again, once the new tables hold
	// every event up to the live offsets, the skipped events that the
	// live tables hold (applied, or dead-lettered and re-driven). The
	// rebuild applies the partitions in another order than the live
	// projector did, so an event can fail in its turn only because of it:
	// a foreign key to a row that another partition's event writes, say.
	// Retried, such an event applies after the later events of its
	// partition, as a re-drive does: what they did to the rows it writes
	// (an update that then found none), it may undo. The retries run while
	// the swap holds the live offsets, so the live projector waits for
	// them. Zero: those events count as skipped, and the swap refuses
	// unless SkipRejected.
	RetrySkipped bool
	// Rate caps the events applied per second. Zero: no cap.
	Rate float64
	// BatchSize is the most events one transaction applies. Zero: 5000.
	BatchSize int
	// Logger receives progress and the swap. Zero: none.
	Logger *slog.Logger
	// Progress, if set, is called after each batch with the events this run
	// applied and the events it has to apply to catch up with the live
	// projector, which grows while the live projector moves on.
	Progress func(done, total int64)
}

// ErrRebuildRunning reports that another process is rebuilding the same
// projections.
var ErrRebuildRunning = errors.New("a rebuild of these projections is running (one that was just killed holds its lock until Postgres notices: retry in a moment)")

// ErrRedrivenSkipped reports that a rebuild skipped events, as its
// projections rejected them, that were re-driven into the live tables: the
// rebuild does not swap its tables in, as they would lack those events.
var ErrRedrivenSkipped = errors.New("events the rebuild skipped were re-driven")

// ErrSkippedApplied reports that a rebuild could not apply events that the
// live projector applied (see RebuildConfig.SkipRejected).
var ErrSkippedApplied = errors.New("the rebuild could not apply events the live projector applied")

// ErrHistoryGone reports that Kafka's retention deleted events a rebuild
// would apply (see RebuildConfig.PartialHistory).
var ErrHistoryGone = errors.New("history to rebuild from that Kafka no longer has")

// A Rebuild builds projections afresh from the history in Kafka into
// shadow tables, in a schema of their own, while the live projector keeps
// applying new events to the live tables. Once it has caught up with the
// live projector it swaps the shadow tables in, in one transaction that
// holds the live projector's offsets still: readers of the live tables see
// the old tables until the swap commits and the new ones after, never a
// half-built table, and the new tables are at exactly the offsets the live
// projector resumes from.
//
// The previous tables are kept in a schema spate_retired_<names> until the
// next rebuild of the same projections. A rebuild that stopped (Ctrl-C, a
// crash) leaves the live tables untouched and resumes from its shadow
// tables when run again with the same definitions; with changed ones it
// starts over.
//
// The projections' tables must be named without a schema in their
// statements: the rebuild finds them through the search path, the shadow
// schema first. Events that a projection cannot apply are skipped and
// counted in the result. If the live tables hold one of them, the swap
// refuses (ErrSkippedApplied, ErrRedrivenSkipped) unless
// RebuildConfig.SkipRejected, or RebuildConfig.RetrySkipped applies it
// once the rebuild has caught up. The swap records in spate_rebuilt which
// events the new tables hold, from where the rebuild started to the swap's
// offsets but for those skipped, so that Redrive does not apply a dead
// letter the rebuild applied.
//
// A rebuild holds only the history Kafka keeps: see
// RebuildConfig.PartialHistory.
type Rebuild struct {
	pool *pgxpool.Pool
	reg  *schemas.Registry
	cfg  RebuildConfig
	opts []kgo.Opt
	log  *slog.Logger

	names   []string
	shadow  string // schema of the shadow tables
	retired string // schema the previous tables move to
	// legacy names the schemas a release before the hash of several names
	// gave these projections (spate_rebuild_<legacy>, spate_retired_<legacy>),
	// where they differ: see warnOfLegacy.
	legacy string
	def    string // checksum of the rebuilt definitions
}

// RebuildResult says what a rebuild did.
type RebuildResult struct {
	// Applied counts the events this run applied. Skipped counts the
	// events the new tables lack because a projection could not apply
	// them, in this run or in the one it resumed; Retried those that
	// failed in their turn but applied once the rebuild had caught up (see
	// Rebuild), which Applied counts too.
	Applied, Skipped, Retried int64
	// Offsets are the next offsets of each partition at which the new
	// tables were swapped in.
	Offsets map[int32]int64
	// Tables are the tables swapped in; Retired the schema that holds the
	// tables they replaced.
	Tables  []string
	Retired string
	// Resumed tells that the run continued an interrupted rebuild.
	Resumed bool
}

// rebuildGroup names the rebuild's offsets in its shadow schema.
const rebuildGroup = "spate-rebuild"

// rebuildPartitionsDDL creates, in the shadow schema %s, where the rebuild
// started in each partition and the offsets of the events it skipped: with
// its offsets, what the shadow tables hold. The swap records it in
// spate_rebuilt, so that a re-drive does not apply an event twice.
const rebuildPartitionsDDL = `CREATE TABLE IF NOT EXISTS %s.spate_rebuild_partitions (
	partition   int      PRIMARY KEY,
	from_offset bigint   NOT NULL,
	skipped     bigint[] NOT NULL DEFAULT '{}'
)`

// NewRebuild returns a rebuild of cfg.Projections writing through pool. The
// Kafka client options opts carry seed brokers, TLS and the like.
func NewRebuild(pool *pgxpool.Pool, reg *schemas.Registry, cfg RebuildConfig, opts ...kgo.Opt) (*Rebuild, error) {
	if len(cfg.Projections) == 0 {
		return nil, errors.New("rebuild: no projections")
	}
	if cfg.Topic == "" {
		cfg.Topic = "spate.events"
	}
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 5000
	}
	if cfg.Rate > 0 {
		// Small batches, so that a throttled run holds its rate smoothly.
		cfg.BatchSize = max(1, min(cfg.BatchSize, int(cfg.Rate/10)))
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Rebuild{pool: pool, reg: reg, cfg: cfg, opts: opts, log: log}
	byName := named(cfg.Projections)
	r.names = slices.Sorted(maps.Keys(byName))
	// One projection's schemas bear its name where that makes a short
	// lower-case identifier; any other set's, a hash of its names, so that
	// two sets never share one ({"a_b"} and {"a", "b"}).
	suffix := r.names[0]
	if len(r.names) > 1 || len("spate_retired_")+len(suffix) > 63 || !plainName.MatchString(suffix) {
		sum := sha256.Sum256([]byte(strings.Join(r.names, "\x00")))
		suffix = hex.EncodeToString(sum[:8])
	}
	r.shadow, r.retired = "spate_rebuild_"+suffix, "spate_retired_"+suffix
	if old := strings.Join(r.names, "_"); old != suffix && len("spate_retired_")+len(old) <= 63 && strings.ToLower(old) == old {
		r.legacy = old
	}
	defs := definitions(cfg.Projections)
	var d strings.Builder
	for _, n := range r.names {
		fmt.Fprintf(&d, "%s=%s;", n, defs[n])
	}
	sum := sha256.Sum256([]byte(d.String()))
	r.def = hex.EncodeToString(sum[:8])
	return r, nil
}

// plainName matches a projection name that can name its rebuild's schemas
// as it is.
var plainName = regexp.MustCompile(`^[a-z0-9_]+$`)

// warnOfLegacy logs the schemas an earlier release's rebuild of these
// projections left under r.legacy, which this one neither resumes nor
// replaces; unless a projection of that name is recorded, whose own
// rebuild's schemas they are.
func (r *Rebuild) warnOfLegacy(ctx context.Context, conn *pgxpool.Conn) error {
	if r.legacy == "" {
		return nil
	}
	var left []string
	var projections bool // spate_projections exists
	err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(nspname ORDER BY nspname), '{}'), to_regclass('spate_projections') IS NOT NULL
		FROM pg_namespace WHERE nspname = ANY ($1)`, []string{"spate_rebuild_" + r.legacy, "spate_retired_" + r.legacy}).Scan(&left, &projections)
	if err != nil {
		return err
	}
	if len(left) > 0 && projections {
		var recorded bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM spate_projections WHERE projection = $1)`, r.legacy).Scan(&recorded); err != nil {
			return err
		}
		if recorded {
			return nil
		}
	}
	for _, schema := range left {
		r.log.Warn("an earlier release's rebuild of these projections left this schema, which this one neither resumes nor replaces: drop it once you no longer need it",
			"schema", schema, "now", r.shadow+", "+r.retired)
	}
	return nil
}

// Schema returns the schema of the shadow tables.
func (r *Rebuild) Schema() string { return r.shadow }

// Run rebuilds and swaps, or returns when ctx ends, leaving the live tables
// as they were and the shadow tables to resume from.
func (r *Rebuild) Run(ctx context.Context) (*RebuildResult, error) {
	lock, err := r.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("rebuild: %w", err)
	}
	defer lock.Release()
	var locked bool
	key := "spate_rebuild:" + r.shadow
	if err := lock.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, key).Scan(&locked); err != nil {
		return nil, fmt.Errorf("rebuild: %w", err)
	}
	if !locked {
		return nil, fmt.Errorf("rebuild %s: %w", strings.Join(r.names, ", "), ErrRebuildRunning)
	}
	defer lock.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, key)

	if err := r.warnOfLegacy(ctx, lock); err != nil {
		return nil, fmt.Errorf("rebuild: %w", err)
	}
	if err := r.checkLiveGroup(ctx, lock); err != nil {
		return nil, err
	}
	res, err := r.attempt(ctx)
	var over startOver
	if errors.As(err, &over) {
		r.log.Warn(over.why+": starting over", "schema", r.shadow)
		if err := r.dropShadow(ctx); err != nil {
			return nil, err
		}
		res, err = r.attempt(ctx)
	}
	return res, err
}

// ErrNoLiveOffsets is the error of a rebuild for a group that stored no
// offset of the topic in the database.
var ErrNoLiveOffsets = errors.New("the live projector group stored no offsets of the topic")

// checkLiveGroup refuses a rebuild for a group that stored no offset of the
// topic: with a wrong group or topic there is nothing to catch up with,
// and the swap would put empty tables live while the projector goes on
// from its own offsets. A projector that has not run yet has nothing to
// rebuild either.
func (r *Rebuild) checkLiveGroup(ctx context.Context, q *pgxpool.Conn) error {
	var stored bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM spate_offsets WHERE consumer_group = $1 AND topic = $2)`, r.cfg.Group, r.cfg.Topic).Scan(&stored)
	var pge *pgconn.PgError
	switch {
	case errors.As(err, &pge) && pge.Code == "42P01": // undefined_table: no projector ever ran here
	case err != nil:
		return fmt.Errorf("rebuild: live offsets: %w", err)
	}
	if !stored {
		return fmt.Errorf("rebuild %s: %w: group %s, topic %s; check the group and topic of the projector that fills these tables (a rebuild catches up with its offsets), or start that projector first",
			strings.Join(r.names, ", "), ErrNoLiveOffsets, r.cfg.Group, r.cfg.Topic)
	}
	return nil
}

// startOver makes Run drop the shadow schema and start afresh, saying why.
type startOver struct{ why string }

func (s startOver) Error() string { return "start over: " + s.why }

// attempt prepares or resumes the shadow tables, catches up and swaps.
func (r *Rebuild) attempt(ctx context.Context) (*RebuildResult, error) {
	live, resumed, err := r.prepare(ctx)
	if err != nil {
		return nil, err
	}
	pcfg := r.pool.Config().Copy()
	pcfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{r.shadow}.Sanitize() + ", " + pgx.Identifier{live}.Sanitize()
	shadowPool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("rebuild: %w", err)
	}
	defer shadowPool.Close()
	proj := New(shadowPool, r.reg, Config{Group: rebuildGroup, Projections: r.cfg.Projections, PoisonAfter: 1, Logger: r.log})
	if err := proj.Migrate(ctx); err != nil {
		return nil, fmt.Errorf("rebuild: shadow tables: %w", err)
	}
	if err := r.checkShadowHoldsTables(ctx, shadowPool); err != nil {
		if !resumed {
			if derr := r.dropShadow(ctx); derr != nil {
				r.log.Warn("drop the shadow schema of a rebuild that did not start", "schema", r.shadow, "err", derr)
			}
		}
		return nil, err
	}

	run := &rebuildRun{Rebuild: r, live: live, proj: proj, res: &RebuildResult{Resumed: resumed, Retired: r.retired}, toSkip: map[int32][]int64{}}
	proj.inTx = run.noteSkipped
	if err := run.start(ctx); err != nil {
		if !resumed && !errors.Is(err, context.Canceled) {
			// Refused or failed before it began: leave nothing behind.
			if derr := r.dropShadow(ctx); derr != nil {
				r.log.Warn("drop the shadow schema of a rebuild that did not start", "schema", r.shadow, "err", derr)
			}
		}
		return nil, err
	}
	defer run.cl.Close()
	if resumed {
		r.log.Info("resuming the rebuild", "schema", r.shadow, "offsets", run.applied)
	} else {
		r.log.Info("rebuilding", "projections", r.names, "schema", r.shadow, "from", run.applied)
	}
	if err := run.catchUp(ctx); err != nil {
		return nil, err
	}
	return run.res, nil
}

// ErrShadowHoldsMore is the error of a rebuild whose migrations made, in
// the shadow schema, objects other than tables and what tables own
// (indexes, constraints, sequences of serial columns): a type, a function,
// a view, a sequence of its own. The swap moves tables only, then drops the
// shadow schema, which would drop these and, with a type, the columns of
// the new tables that use it.
var ErrShadowHoldsMore = errors.New("the migrations made objects other than tables")

// checkShadowHoldsTables returns ErrShadowHoldsMore, naming the objects, if
// the shadow schema holds any but tables and what they own.
func (r *Rebuild) checkShadowHoldsTables(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) error {
	rows, err := q.Query(ctx, `
		SELECT 'type ' || t.typname FROM pg_type t
		WHERE t.typnamespace = $1::regnamespace AND t.typrelid = 0 AND t.typelem = 0
		UNION ALL
		SELECT 'function ' || p.proname FROM pg_proc p WHERE p.pronamespace = $1::regnamespace
		UNION ALL
		SELECT CASE c.relkind WHEN 'S' THEN 'sequence ' WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view ' ELSE 'relation ' END || c.relname
		FROM pg_class c
		WHERE c.relnamespace = $1::regnamespace AND c.relkind NOT IN ('r', 'p', 'i', 'I', 't', 'c')
		  AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
		ORDER BY 1`, pgx.Identifier{r.shadow}.Sanitize())
	if err != nil {
		return fmt.Errorf("rebuild: check schema %s: %w", r.shadow, err)
	}
	extra, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("rebuild: check schema %s: %w", r.shadow, err)
	}
	if len(extra) > 0 {
		return fmt.Errorf("rebuild: %w in schema %s (%s): the swap moves tables only, and dropping these would drop what uses them; create them outside the projections' migrations, or in a schema of their own",
			ErrShadowHoldsMore, r.shadow, strings.Join(extra, ", "))
	}
	return nil
}

// dropShadow drops the shadow schema and what it holds.
func (r *Rebuild) dropShadow(ctx context.Context) error {
	if _, err := r.pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{r.shadow}.Sanitize()+` CASCADE`); err != nil {
		return fmt.Errorf("rebuild: drop schema %s: %w", r.shadow, err)
	}
	return nil
}

// prepare creates the shadow schema, or finds the one an interrupted
// rebuild of the same definitions left, and returns the live schema.
func (r *Rebuild) prepare(ctx context.Context) (live string, resumed bool, err error) {
	err = pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT current_schema()`).Scan(&live); err != nil {
			return fmt.Errorf("no schema to create tables in (search_path): %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('spate_migrate'))`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, offsetsDDL+";"+redrivesDDL+";"+rebuiltDDL); err != nil {
			return err
		}
		shadow := pgx.Identifier{r.shadow}.Sanitize()
		var started bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, shadow+".spate_rebuild").Scan(&started); err != nil {
			return err
		}
		if started {
			var def string
			var noted bool // by a release that notes where it started and what it skipped
			err := tx.QueryRow(ctx, `SELECT definition, to_regclass($1) IS NOT NULL FROM `+shadow+`.spate_rebuild`,
				shadow+".spate_rebuild_partitions").Scan(&def, &noted)
			switch {
			case err == nil && def == r.def && noted:
				resumed = true
				return nil
			case err != nil && !errors.Is(err, pgx.ErrNoRows):
				return err
			}
			r.log.Warn("the interrupted rebuild cannot be resumed (the definitions changed, or an older release began it): starting over", "schema", r.shadow)
			if _, err := tx.Exec(ctx, `DROP SCHEMA `+shadow+` CASCADE`); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, fmt.Sprintf(`CREATE SCHEMA IF NOT EXISTS %[1]s;
			CREATE TABLE IF NOT EXISTS %[1]s.spate_rebuild (definition text NOT NULL, started_at timestamptz NOT NULL DEFAULT now());
			DELETE FROM %[1]s.spate_rebuild;
			%[2]s`, shadow, fmt.Sprintf(rebuildPartitionsDDL, shadow)))
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.spate_rebuild (definition) VALUES ($1)`, shadow), r.def)
		return err
	})
	if err != nil {
		return "", false, fmt.Errorf("rebuild: prepare schema %s: %w", r.shadow, err)
	}
	return live, resumed, nil
}

// rebuildRun is the state of one Run.
type rebuildRun struct {
	*Rebuild
	live string
	proj *Projector
	res  *RebuildResult
	cl   *kgo.Client

	logStart map[int32]int64 // where each partition's history started in Kafka when the run started

	pending map[int32][]*kgo.Record // fetched, not applied yet, in offset order
	fetched map[int32]int64         // the offset after the last record fetched, a transaction's marker included
	paused  map[int32]bool
	limit   *rate.Limiter

	mu      sync.Mutex        // partitions apply concurrently
	applied map[int32]int64   // the shadow's next offset per partition
	toSkip  map[int32][]int64 // skipped events the shadow's offset has not moved past yet
	done    int64

	checkedSkips int // how many skipped events checkSkipped last checked
	// held holds the skipped events the live tables hold, in partition and
	// offset order, with their records when RetrySkipped; dlqTrimmed tells
	// that the retention of the dead-letter topic deleted some of its
	// records when checkSkipped read it.
	held       []skippedEvent
	dlqTrimmed bool
}

// skippedAt is a skipped event's place in the topic.
type skippedAt struct {
	Partition int32
	Offset    int64
}

// skippedEvent is a skipped event the live tables hold: re-driven into
// them, or applied. ev is its record decoded, nil if it was not read, does
// not decode, or Kafka no longer has it.
type skippedEvent struct {
	skippedAt
	redriven bool
	ev       *Event
}

// noteSkipped notes, in the transaction of a batch of the shadow tables,
// the events skipped that the batch's offset moves past. Noted apart, a
// crash in between could note an event that the run resumed then applied.
func (r *rebuildRun) noteSkipped(ctx context.Context, tx pgx.Tx, b consumers.Batch) error {
	r.mu.Lock()
	var offs []int64
	for _, o := range r.toSkip[b.Partition] {
		if o < b.Next {
			offs = append(offs, o)
		}
	}
	r.mu.Unlock()
	if len(offs) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `UPDATE `+pgx.Identifier{r.shadow}.Sanitize()+`.spate_rebuild_partitions
		SET skipped = ARRAY(SELECT DISTINCT o FROM unnest(skipped || $2::bigint[]) AS o ORDER BY o) WHERE partition = $1`, b.Partition, offs)
	if err != nil {
		return fmt.Errorf("note skipped events: %w", err)
	}
	return nil
}

// checkResumedFrom has an interrupted rebuild start over when it started
// later in a partition than this one asks (From, or the log's start): its
// tables lack history asked for. One that started earlier is resumed.
// stored holds the shadow's offsets, of the partitions it resumes.
func (r *rebuildRun) checkResumedFrom(ctx context.Context, stored map[int32]int64) error {
	if len(stored) == 0 {
		return nil
	}
	rows, err := r.pool.Query(ctx, `SELECT partition, from_offset FROM `+pgx.Identifier{r.shadow}.Sanitize()+`.spate_rebuild_partitions`)
	if err != nil {
		return fmt.Errorf("rebuild: where the interrupted rebuild started: %w", err)
	}
	var p int32
	var from int64
	var later []string
	_, err = pgx.ForEachRow(rows, []any{&p, &from}, func() error {
		_, resumed := stored[p]
		if want := max(r.cfg.From[p], r.logStart[p]); resumed && want < from {
			later = append(later, fmt.Sprintf("partition %d at %d, not %d", p, from, want))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rebuild: where the interrupted rebuild started: %w", err)
	}
	if len(later) > 0 {
		return startOver{"the interrupted rebuild started later than this one asks (" + strings.Join(later, ", ") + ")"}
	}
	return nil
}

// start loads the shadow's offsets (storing the start offsets of a new
// rebuild) and starts fetching from them.
func (r *rebuildRun) start(ctx context.Context) error {
	admCl, err := kgo.NewClient(r.opts...)
	if err != nil {
		return fmt.Errorf("rebuild: kafka client: %w", err)
	}
	starts, err := kadm.NewClient(admCl).ListStartOffsets(ctx, r.cfg.Topic)
	if err == nil {
		err = starts.Error()
	}
	admCl.Close()
	if err != nil {
		return fmt.Errorf("rebuild: offsets of %s: %w", r.cfg.Topic, err)
	}
	r.logStart = map[int32]int64{}
	starts.Each(func(o kadm.ListedOffset) { r.logStart[o.Partition] = o.Offset })
	if len(r.logStart) == 0 {
		return fmt.Errorf("rebuild: topic %s has no partitions", r.cfg.Topic)
	}
	parts := slices.Sorted(maps.Keys(r.logStart))
	stored, err := r.proj.Offsets(ctx, r.cfg.Topic, parts)
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	// Where each partition's rebuild starts, or goes on from, and where
	// Kafka's history of it now starts.
	from := map[int32]int64{}
	var gone []string
	for _, p := range parts {
		o, resumed := stored[p]
		if !resumed {
			o = r.cfg.From[p]
		}
		from[p] = o
		if o < r.logStart[p] {
			g := fmt.Sprintf("partition %d starts at offset %d, not %d", p, r.logStart[p], o)
			if resumed {
				g += " (where the interrupted rebuild stopped)"
			}
			gone = append(gone, g)
		}
	}
	if err := r.checkResumedFrom(ctx, stored); err != nil {
		return err
	}
	if len(gone) > 0 && !r.cfg.PartialHistory {
		return fmt.Errorf("rebuild: %w: in %s, %s; the rebuilt tables would lack the events its retention deleted", ErrHistoryGone, r.cfg.Topic, strings.Join(gone, ", "))
	}
	shadow := pgx.Identifier{r.shadow}.Sanitize()
	r.applied = map[int32]int64{}
	for _, p := range parts {
		next := max(from[p], r.logStart[p])
		switch o, ok := stored[p]; {
		case ok && o < next:
			// PartialHistory: the shadow tables hold events up to o, but
			// not those between o and next. Starting over leaves out all
			// of those Kafka no longer has.
			return startOver{"Kafka's retention deleted events the interrupted rebuild had not applied yet"}
		case !ok:
			_, err := r.pool.Exec(ctx, `INSERT INTO `+shadow+`.spate_rebuild_partitions (partition, from_offset) VALUES ($1, $2)
				ON CONFLICT (partition) DO UPDATE SET from_offset = excluded.from_offset, skipped = '{}'`, p, next)
			if err != nil {
				return fmt.Errorf("rebuild: %w", err)
			}
			if err := r.proj.Apply(ctx, consumers.Batch{Topic: r.cfg.Topic, Partition: p, Next: next}); err != nil {
				return fmt.Errorf("rebuild: %w", err)
			}
		}
		r.applied[p] = next
	}
	offs := map[int32]kgo.Offset{}
	for p, o := range r.applied {
		offs[p] = kgo.NewOffset().At(o)
	}
	own := []kgo.Opt{
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{r.cfg.Topic: offs}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// A transaction's marker takes an offset: a live offset past one
		// that ends a partition is reached only by seeing it.
		kgo.KeepControlRecords(),
		// Retention deleting events not fetched yet must fail the run,
		// not skip them.
		kgo.ConsumeResetOffset(kgo.NoResetOffset()),
	}
	if r.cl, err = kgo.NewClient(append(own, r.opts...)...); err != nil {
		return fmt.Errorf("rebuild: kafka client: %w", err)
	}
	r.pending, r.fetched, r.paused = map[int32][]*kgo.Record{}, maps.Clone(r.applied), map[int32]bool{}
	r.limit = rate.NewLimiter(rate.Inf, 0)
	if r.cfg.Rate > 0 {
		r.limit = rate.NewLimiter(rate.Limit(r.cfg.Rate), r.cfg.BatchSize)
	}
	return nil
}

// liveOffsets returns the live projector's stored offsets.
func (r *rebuildRun) liveOffsets(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, forUpdate bool) (map[int32]int64, error) {
	sql := fmt.Sprintf(`SELECT partition, next_offset FROM %s.spate_offsets WHERE consumer_group = $1 AND topic = $2 ORDER BY partition`,
		pgx.Identifier{r.live}.Sanitize())
	if forUpdate {
		sql += ` FOR UPDATE`
	}
	rows, err := q.Query(ctx, sql, r.cfg.Group, r.cfg.Topic)
	if err != nil {
		return nil, fmt.Errorf("live offsets: %w", err)
	}
	offs := map[int32]int64{}
	var p int32
	var o int64
	_, err = pgx.ForEachRow(rows, []any{&p, &o}, func() error {
		offs[p] = o
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("live offsets: %w", err)
	}
	return offs, nil
}

// target is where partition p must get to: the live projector's offset, or
// where the shadow is if the live projector never stored one. A live offset
// below Kafka's log start counts as the log start: the live projector goes
// on from there, as the events between are gone (and on an idle partition
// it would never store an offset past them).
func (r *rebuildRun) target(live map[int32]int64, p int32) int64 {
	if o, ok := live[p]; ok {
		return max(o, r.logStart[p])
	}
	return r.applied[p]
}

// catchUp applies history up to the live projector's offsets, never past
// them, and swaps once it has caught up.
func (r *rebuildRun) catchUp(ctx context.Context) error {
	var waiting bool
	for {
		live, err := r.liveOffsets(ctx, r.pool, false)
		if err != nil {
			return fmt.Errorf("rebuild: %w", err)
		}
		var gap, total int64
		var ahead []int32
		for p, next := range r.applied {
			t := r.target(live, p)
			if next > t {
				ahead = append(ahead, p)
				continue
			}
			gap += t - next
		}
		total = r.done + gap
		if r.cfg.Progress != nil {
			r.cfg.Progress(r.done, total)
		}
		if len(ahead) > 0 && !waiting {
			r.log.Info("waiting for the live projector to reach the rebuild's start", "group", r.cfg.Group, "partitions", ahead)
		}
		waiting = len(ahead) > 0
		if !waiting && gap <= int64(r.cfg.BatchSize) {
			if err := r.checkSkipped(ctx); err != nil {
				return err
			}
			swapped, err := r.swap(ctx)
			if err != nil || swapped {
				return err
			}
		}
		if err := r.fetch(ctx, live); err != nil {
			return err
		}
		if err := r.applyPending(ctx, live); err != nil {
			return err
		}
	}
}

// fetch polls for records, briefly, and pauses partitions that have
// enough waiting.
func (r *rebuildRun) fetch(ctx context.Context, live map[int32]int64) error {
	pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	fs := r.cl.PollRecords(pctx, 4*r.cfg.BatchSize)
	cancel()
	if err := ctx.Err(); err != nil {
		return err
	}
	var gone error
	fs.EachError(func(t string, p int32, err error) {
		switch {
		case errors.Is(err, kerr.OffsetOutOfRange):
			gone = fmt.Errorf("rebuild: %w: Kafka's retention deleted events of partition %d of %s that the rebuild had not applied yet", ErrHistoryGone, p, t)
		case !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled):
			r.log.Warn("fetch", "topic", t, "partition", p, "err", err)
		}
	})
	if gone != nil {
		return gone
	}
	fs.EachRecord(func(rec *kgo.Record) {
		r.fetched[rec.Partition] = rec.Offset + 1
		if rec.Attrs.IsControl() {
			if _, ok := r.pending[rec.Partition]; !ok {
				r.pending[rec.Partition] = nil // applyPending looks at it
			}
			return
		}
		r.pending[rec.Partition] = append(r.pending[rec.Partition], rec)
	})
	var pause, resume []int32
	for p, recs := range r.pending {
		full := len(recs) >= 4*r.cfg.BatchSize
		if full && !r.paused[p] {
			pause = append(pause, p)
		} else if !full && r.paused[p] {
			resume = append(resume, p)
		}
		r.paused[p] = full
	}
	if len(pause) > 0 {
		r.cl.PauseFetchPartitions(map[string][]int32{r.cfg.Topic: pause})
	}
	if len(resume) > 0 {
		r.cl.ResumeFetchPartitions(map[string][]int32{r.cfg.Topic: resume})
	}
	return nil
}

// applyPending applies the fetched records below the live offsets, a batch
// per partition, the partitions concurrently.
func (r *rebuildRun) applyPending(ctx context.Context, live map[int32]int64) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, p := range slices.Sorted(maps.Keys(r.pending)) {
		// Goroutines started for other partitions write r.applied.
		r.mu.Lock()
		t, applied := r.target(live, p), r.applied[p]
		r.mu.Unlock()
		recs := r.pending[p]
		n := 0
		for n < len(recs) && n < r.cfg.BatchSize && recs[n].Offset < t {
			n++
		}
		// The offset may move past the records applied only as far as
		// what was fetched shows: to the next record fetched, or past
		// the last (a marker, maybe), at most t. Records beyond those
		// fetched may still lie below t.
		next := min(r.fetched[p], t)
		if n < len(recs) {
			next = min(recs[n].Offset, t)
		}
		if n == 0 && applied >= next {
			continue
		}
		if n > 0 {
			if err := r.limit.WaitN(ctx, n); err != nil {
				return err
			}
		}
		r.pending[p] = recs[n:]
		g.Go(func() error { return r.apply(gctx, p, recs[:n], next) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// apply applies recs of partition p and moves the shadow's offset to next,
// skipping the records a projection cannot apply and retrying other
// failures until ctx ends.
func (r *rebuildRun) apply(ctx context.Context, p int32, recs []*kgo.Record, next int64) error {
	backoff := 100 * time.Millisecond
	for {
		err := r.proj.Apply(ctx, consumers.Batch{Topic: r.cfg.Topic, Partition: p, Records: recs, Next: next})
		var pe *consumers.PoisonError
		switch {
		case err == nil:
			r.mu.Lock()
			r.res.Applied += int64(len(recs))
			r.done += next - r.applied[p]
			r.applied[p] = next
			r.toSkip[p] = slices.DeleteFunc(r.toSkip[p], func(o int64) bool { return o < next })
			r.mu.Unlock()
			return nil
		case errors.As(err, &pe):
			i := slices.IndexFunc(recs, func(rec *kgo.Record) bool { return rec.Offset == pe.Record.Offset })
			if i < 0 {
				return fmt.Errorf("rebuild: %w", err)
			}
			r.log.Warn("skipping an event the projections cannot apply", "partition", p, "offset", pe.Record.Offset, "class", pe.Class, "err", pe.Err)
			if i > 0 {
				if err := r.apply(ctx, p, recs[:i], recs[i].Offset); err != nil {
					return err
				}
			}
			// Noted by the batch that moves the offset past it
			// (noteSkipped), in its transaction.
			r.mu.Lock()
			r.toSkip[p] = append(r.toSkip[p], pe.Record.Offset)
			r.mu.Unlock()
			recs = recs[i+1:] // and then only the offset moves past it
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		r.log.Warn("rebuild: retrying", "partition", p, "wait", wait, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// checkSkipped finds the events the rebuild skipped that the live tables
// hold: those the live projector did not dead-letter, and those re-driven.
// With RetrySkipped it reads them, for the swap to try again (see
// retrySkipped). The live projector notes its dead letters in
// spate_dead_letters; the dead-letter topic is read only for skipped
// events not found there (dead-lettered by an earlier release). It does
// this when the skipped events changed since its last check.
func (r *rebuildRun) checkSkipped(ctx context.Context) error {
	skipped, err := r.queryAt(ctx, "skipped events", `SELECT partition, o FROM `+pgx.Identifier{r.shadow}.Sanitize()+`.spate_rebuild_partitions, unnest(skipped) AS o ORDER BY 1, 2`)
	if err != nil {
		return err
	}
	if len(skipped) == r.checkedSkips {
		return nil
	}
	// The live tables lack the events the live projector dead-lettered,
	// and those an earlier rebuild of these projections skipped.
	dead := map[skippedAt]bool{}
	known, err := r.queryAt(ctx, "events the live tables lack", fmt.Sprintf(`SELECT partition, o FROM %[1]s.spate_rebuilt, unnest(skipped) AS o
		WHERE projection = ANY ($1) AND topic = $2
		UNION SELECT partition, "offset" FROM %[1]s.spate_dead_letters WHERE consumer_group = $3 AND topic = $2`,
		pgx.Identifier{r.live}.Sanitize()), r.names, r.cfg.Topic, r.cfg.Group)
	if err != nil {
		return err
	}
	for _, e := range known {
		dead[e] = true
	}
	// Dead letters written before spate_dead_letters noted them are only
	// in the dead-letter topic.
	var trimmed bool
	if slices.ContainsFunc(skipped, func(s skippedAt) bool { return !dead[s] }) {
		if trimmed, err = r.readDeadLetters(ctx, dead); err != nil {
			return err
		}
	}
	// An event dead-lettered live that a rebuild applied since is held by
	// the tables that rebuild swapped in.
	if err := r.unmarkRebuilt(ctx, dead); err != nil {
		return err
	}
	var redriven map[skippedAt]bool
	if r.cfg.RetrySkipped {
		done, err := r.queryAt(ctx, "re-driven events", `SELECT partition, "offset" FROM `+pgx.Identifier{r.live}.Sanitize()+`.spate_redrives
			WHERE consumer_group = $1 AND topic = $2`, r.cfg.Group, r.cfg.Topic)
		if err != nil {
			return err
		}
		redriven = map[skippedAt]bool{}
		for _, e := range done {
			redriven[e] = true
		}
	}
	var held []skippedEvent
	for _, s := range skipped {
		if !dead[s] || redriven[s] {
			held = append(held, skippedEvent{skippedAt: s, redriven: redriven[s]})
		}
	}
	if r.cfg.RetrySkipped {
		if err := r.readSkipped(ctx, held); err != nil {
			return err
		}
	}
	r.held, r.dlqTrimmed, r.checkedSkips = held, trimmed, len(skipped)
	return nil
}

// queryAt returns the (partition, offset) rows of sql, what they are
// naming them in an error.
func (r *rebuildRun) queryAt(ctx context.Context, what, sql string, args ...any) ([]skippedAt, error) {
	rows, err := r.pool.Query(ctx, sql, args...)
	if err == nil {
		var at []skippedAt
		if at, err = pgx.CollectRows(rows, pgx.RowToStructByPos[skippedAt]); err == nil {
			return at, nil
		}
	}
	return nil, fmt.Errorf("rebuild: %s: %w", what, err)
}

// unmarkRebuilt unmarks in dead the events that the tables of an earlier
// rebuild of these projections hold (see spate_rebuilt), as one of the
// projections holds them.
func (r *rebuildRun) unmarkRebuilt(ctx context.Context, dead map[skippedAt]bool) error {
	rows, err := r.pool.Query(ctx, `SELECT partition, from_offset, to_offset, skipped FROM `+pgx.Identifier{r.live}.Sanitize()+`.spate_rebuilt
		WHERE projection = ANY ($1) AND topic = $2`, r.names, r.cfg.Topic)
	if err != nil {
		return fmt.Errorf("rebuild: earlier rebuilds: %w", err)
	}
	type rebuilt struct {
		Partition int32
		From, To  int64
		Skipped   []int64
	}
	held, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rebuilt])
	if err != nil {
		return fmt.Errorf("rebuild: earlier rebuilds: %w", err)
	}
	for e, d := range dead {
		if !d {
			continue
		}
		for _, h := range held {
			if e.Partition == h.Partition && h.From <= e.Offset && e.Offset < h.To && !slices.Contains(h.Skipped, e.Offset) {
				dead[e] = false
			}
		}
	}
	return nil
}

// readDeadLetters reads the dead-letter topic and marks in dead the
// events the live group sent there before spate_dead_letters noted dead
// letters. A later dead letter not noted there is of an event the group
// applied after all (it stopped between writing the dead letter and
// moving past the event). It reports whether the topic's retention
// deleted some of its records.
func (r *rebuildRun) readDeadLetters(ctx context.Context, dead map[skippedAt]bool) (trimmed bool, err error) {
	var comment *string
	if err := r.pool.QueryRow(ctx, `SELECT obj_description(to_regclass($1), 'pg_class')`,
		pgx.Identifier{r.live}.Sanitize()+".spate_dead_letters").Scan(&comment); err != nil {
		return false, fmt.Errorf("rebuild: spate_dead_letters: %w", err)
	}
	var since time.Time // zero: unknown, every dead letter counts
	if comment != nil {
		if t, ok := strings.CutPrefix(*comment, deadLettersSince); ok {
			since, _ = time.Parse(time.RFC3339Nano, t)
		}
	}
	dlq := consumers.DLQTopic(r.cfg.Topic)
	adm, err := kgo.NewClient(r.opts...)
	if err != nil {
		return false, fmt.Errorf("rebuild: kafka client: %w", err)
	}
	starts, serr := kadm.NewClient(adm).ListStartOffsets(ctx, dlq)
	ends, eerr := kadm.NewClient(adm).ListEndOffsets(ctx, dlq)
	adm.Close()
	if err := cmp.Or(serr, eerr); err != nil {
		return false, fmt.Errorf("rebuild: offsets of %s: %w", dlq, err)
	}
	switch err := cmp.Or(starts.Error(), ends.Error()); {
	case errors.Is(err, kerr.UnknownTopicOrPartition): // no dead-letter topic: nothing was dead-lettered
		return false, nil
	case err != nil:
		return false, fmt.Errorf("rebuild: offsets of %s: %w", dlq, err)
	}
	from, to := map[int32]int64{}, map[int32]int64{}
	starts.Each(func(o kadm.ListedOffset) {
		from[o.Partition] = o.Offset
		trimmed = trimmed || o.Offset > 0
	})
	ends.Each(func(o kadm.ListedOffset) { to[o.Partition] = o.Offset })
	err = consumers.ReadRange(ctx, r.opts, dlq, from, to, func(rec *kgo.Record) error {
		if d, err := consumers.ParseDeadLetter(rec); err == nil && d.Group == r.cfg.Group && d.Topic == r.cfg.Topic &&
			(since.IsZero() || d.Time.Before(since)) {
			dead[skippedAt{d.Partition, d.Offset}] = true
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("rebuild: read %s: %w", dlq, err)
	}
	return trimmed, nil
}

// readSkipped reads and decodes the records of the events evs, reading
// each partition from the first to the last of them.
func (r *rebuildRun) readSkipped(ctx context.Context, evs []skippedEvent) error {
	if len(evs) == 0 {
		return nil
	}
	from, to := map[int32]int64{}, map[int32]int64{}
	at := map[skippedAt]*skippedEvent{}
	for i := range evs {
		e := &evs[i]
		if o, ok := from[e.Partition]; !ok || e.Offset < o {
			from[e.Partition] = e.Offset
		}
		to[e.Partition] = max(to[e.Partition], e.Offset+1)
		at[e.skippedAt] = e
	}
	err := consumers.ReadRange(ctx, r.opts, r.cfg.Topic, from, to, func(rec *kgo.Record) error {
		e := at[skippedAt{rec.Partition, rec.Offset}]
		if e == nil || rec.Attrs.IsControl() {
			return nil
		}
		if ev, err := r.proj.decode(rec); err == nil {
			e.ev = ev
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rebuild: read skipped events: %w", err)
	}
	return nil
}

// retrySkipped tries again, in the swap's transaction tx, once the shadow
// tables hold every event up to the live projector's offsets, the skipped
// events the live tables hold (r.held; see RebuildConfig.RetrySkipped).
// Each event applies to every projection, in a savepoint of its own, and
// leaves the list of skipped events in the same transaction; as one event
// applied may let another through, it goes round while any applies. It
// returns the events applied, and those that still fail.
func (r *rebuildRun) retrySkipped(ctx context.Context, tx pgx.Tx) (retried []skippedAt, still []skippedEvent, err error) {
	skipped := pgx.Identifier{r.shadow}.Sanitize() + ".spate_rebuild_partitions"
	evs := r.held
	for {
		var left []skippedEvent
		n := len(retried)
		for _, e := range evs {
			if e.ev == nil {
				left = append(left, e)
				continue
			}
			sp, err := tx.Begin(ctx) // a savepoint
			if err != nil {
				return nil, nil, err
			}
			for _, pr := range r.proj.projs {
				if err = pr.Apply(checkEncoding(ctx), sp, []*Event{e.ev}); err != nil {
					break
				}
			}
			if err == nil {
				_, err = sp.Exec(ctx, `UPDATE `+skipped+` SET skipped = array_remove(skipped, $2) WHERE partition = $1`, e.Partition, e.Offset)
			}
			if err == nil {
				if err := sp.Commit(ctx); err != nil {
					return nil, nil, err
				}
				retried = append(retried, e.skippedAt)
				continue
			}
			if rerr := sp.Rollback(ctx); rerr != nil {
				return nil, nil, rerr
			}
			if !deterministic(err) && !errors.Is(err, consumers.ErrPoison) {
				return nil, nil, err
			}
			left = append(left, e)
		}
		evs = left
		if len(retried) == n || len(evs) == 0 {
			break
		}
	}
	return retried, evs, nil
}

// skippedAppliedError refuses a swap that would lack the events lacking,
// which the live projector applied.
func (r *rebuildRun) skippedAppliedError(lacking []skippedEvent) error {
	var names []string
	for _, s := range lacking {
		name := fmt.Sprintf("partition %d offset %d", s.Partition, s.Offset)
		if r.cfg.RetrySkipped && s.ev == nil {
			name += " (tried again: Kafka no longer has it, or it does not decode)"
		}
		names = append(names, name)
	}
	why := "The new definitions reject them, or their failure depends on the order of events across partitions, which the rebuild applies in another order than the live projector did (a foreign key to a row another partition writes, a total that overflows)"
	if r.dlqTrimmed {
		why += ", or they were dead-lettered by a release that did not note it in spate_dead_letters, and the retention of " + consumers.DLQTopic(r.cfg.Topic) + " deleted their dead letters"
	}
	return fmt.Errorf("rebuild: %w: %s of %s; swapped in, the new tables would lack them. %s",
		ErrSkippedApplied, strings.Join(names, ", "), r.cfg.Topic, why)
}

// errNotCaughtUp makes a swap give way to more catching up.
var errNotCaughtUp = errors.New("not caught up")

// swap holds the live projector's offsets still, applies what the shadow
// lacks up to them, and swaps the shadow tables in, in one transaction.
// It reports false if it had to give way: to records not fetched yet, to
// one that cannot be applied, or to a lock it could not get in time.
func (r *rebuildRun) swap(ctx context.Context) (bool, error) {
	live, shadow := pgx.Identifier{r.live}.Sanitize(), pgx.Identifier{r.shadow}.Sanitize()
	var tables []string
	var at map[int32]int64
	var gap int
	var retried []skippedAt
	var lacking []skippedEvent
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		lo, err := r.liveOffsets(ctx, tx, true)
		if err != nil {
			return err
		}
		at = lo
		if _, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, shadow+", "+live); err != nil {
			return err
		}
		if gap, err = r.applyGap(ctx, tx, lo); err != nil {
			return err
		}
		still := r.held
		if r.cfg.RetrySkipped {
			if retried, still, err = r.retrySkipped(ctx, tx); err != nil {
				return err
			}
		}
		// Re-driven events still skipped are refused below.
		lacking = slices.DeleteFunc(slices.Clone(still), func(e skippedEvent) bool { return e.redriven })
		if len(lacking) > 0 && !r.cfg.SkipRejected {
			return r.skippedAppliedError(lacking)
		}
		if _, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, live); err != nil {
			return err
		}
		// An event the rebuild skipped that was re-driven into the live
		// tables (the fix made there, not in the definitions) would be
		// lost: the new tables lack it, and it counts as re-driven.
		skipped, err := tx.Query(ctx, fmt.Sprintf(`SELECT format('partition %%s offset %%s', d.partition, d."offset")
			FROM %s.spate_redrives AS d JOIN %s.spate_rebuild_partitions AS s ON s.partition = d.partition
			WHERE d.consumer_group = $1 AND d.topic = $2 AND d."offset" = ANY (s.skipped)
			ORDER BY d.partition, d."offset"`, live, shadow), r.cfg.Group, r.cfg.Topic)
		if err != nil {
			return err
		}
		redriven, err := pgx.CollectRows(skipped, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(redriven) > 0 {
			return fmt.Errorf("%w into the live tables (%s of %s); swapped in, the new tables would lack them: rebuild with definitions that accept them",
				ErrRedrivenSkipped, strings.Join(redriven, ", "), r.cfg.Topic)
		}
		rows, err := tx.Query(ctx, `
			SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
			  AND c.relname NOT IN ('spate_offsets', 'spate_migrations', 'spate_projections', 'spate_dead_letters', 'spate_rebuild', 'spate_rebuild_partitions')
			ORDER BY c.relname`, r.shadow)
		if err != nil {
			return err
		}
		if tables, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		retired := pgx.Identifier{r.retired}.Sanitize()
		if _, err := tx.Exec(ctx, `DROP SCHEMA IF EXISTS `+retired+` CASCADE; CREATE SCHEMA `+retired); err != nil {
			return err
		}
		var old []string
		for _, t := range tables {
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, live+"."+pgx.Identifier{t}.Sanitize()).Scan(&exists); err != nil {
				return err
			}
			if exists {
				old = append(old, live+"."+pgx.Identifier{t}.Sanitize())
			}
		}
		if len(old) > 0 {
			// Readers of the live tables wait for the swap while it waits
			// for them. Give way to them, and before Postgres's deadlock
			// check (after deadlock_timeout, 1 s by default) could pick a
			// reader that locks the tables in another order as its victim.
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '500ms'`); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `LOCK TABLE `+strings.Join(old, ", ")+` IN ACCESS EXCLUSIVE MODE`); err != nil {
				return err
			}
		}
		// FOR UPDATE held the live offsets that were there, but not a
		// partition's first: its batch may have committed since they were
		// read. With the tables locked (in the live projector's order:
		// tables, then offsets), hold every offset still and read again.
		if _, err := tx.Exec(ctx, `LOCK TABLE `+live+`.spate_offsets IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return err
		}
		if lo, err := r.liveOffsets(ctx, tx, false); err != nil {
			return err
		} else if !maps.Equal(lo, at) {
			return errNotCaughtUp
		}
		var b strings.Builder
		for _, t := range old {
			fmt.Fprintf(&b, "ALTER TABLE %s SET SCHEMA %s;\n", t, retired)
		}
		for _, t := range tables {
			fmt.Fprintf(&b, "ALTER TABLE %s.%s SET SCHEMA %s;\n", shadow, pgx.Identifier{t}.Sanitize(), live)
		}
		if _, err := tx.Exec(ctx, b.String()); err != nil {
			return err
		}
		var q pgx.Batch
		// What the new tables hold, for re-drives (see spate_rebuilt).
		parts := slices.Sorted(maps.Keys(r.applied))
		to := make([]int64, len(parts))
		for i, p := range parts {
			to[i] = r.target(at, p)
		}
		q.Queue(fmt.Sprintf(`DELETE FROM %s.spate_rebuilt WHERE projection = ANY($1)`, live), r.names)
		q.Queue(fmt.Sprintf(`INSERT INTO %s.spate_rebuilt (projection, topic, partition, from_offset, to_offset, skipped)
			SELECT n.projection, $2, s.partition, s.from_offset, t.to_offset, s.skipped
			FROM unnest($1::text[]) AS n (projection)
			CROSS JOIN unnest($3::int[], $4::bigint[]) AS t (partition, to_offset)
			JOIN %s.spate_rebuild_partitions AS s USING (partition)`, live, shadow), r.names, r.cfg.Topic, parts, to)
		q.Queue(fmt.Sprintf(`DELETE FROM %s.spate_migrations WHERE projection = ANY($1)`, live), r.names)
		q.Queue(fmt.Sprintf(`INSERT INTO %s.spate_migrations SELECT * FROM %s.spate_migrations WHERE projection = ANY($1)`, live, shadow), r.names)
		q.Queue(fmt.Sprintf(`DELETE FROM %s.spate_projections WHERE projection = ANY($1)`, live), r.names)
		q.Queue(fmt.Sprintf(`INSERT INTO %s.spate_projections (projection, checksum)
			SELECT projection, checksum FROM %s.spate_projections WHERE projection = ANY($1)`, live, shadow), r.names)
		if err := tx.SendBatch(ctx, &q).Close(); err != nil {
			return err
		}
		// Checked again here: CASCADE would drop what the new tables use.
		if err := r.checkShadowHoldsTables(ctx, tx); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DROP SCHEMA `+shadow+` CASCADE`)
		return err
	})
	var pge interface{ SQLState() string }
	switch {
	case err == nil:
	case errors.Is(err, errNotCaughtUp), errors.Is(err, consumers.ErrPoison):
		return false, nil
	case errors.Is(err, ErrSkippedApplied):
		return false, err
	case errors.As(err, &pge) && (pge.SQLState() == "55P03" || pge.SQLState() == "40P01"): // lock timeout, deadlock
		r.log.Info("the swap gave way to readers of the live tables; trying again", "err", err)
		return false, nil
	default:
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, fmt.Errorf("rebuild: swap: %w", err)
	}
	r.res.Offsets, r.res.Tables = at, tables
	r.res.Applied += int64(gap + len(retried))
	r.res.Retried, r.res.Skipped = int64(len(retried)), int64(r.checkedSkips-len(retried))
	if len(retried) > 0 {
		r.log.Warn("applied events that had failed in their turn once the rebuild caught up, after the later events of their partitions", "events", retried)
	}
	if len(lacking) > 0 {
		var at []skippedAt
		for _, e := range lacking {
			at = append(at, e.skippedAt)
		}
		r.log.Warn("the new tables lack events the live projector applied", "events", at)
	}
	for p, next := range r.applied {
		r.done += r.target(at, p) - next
	}
	if r.cfg.Progress != nil {
		r.cfg.Progress(r.done, r.done)
	}
	r.log.Info("swapped in", "tables", tables, "offsets", at, "previous_tables", r.retired)
	return true, nil
}

// applyGap applies, in the swap's transaction (its search path the shadow
// schema first), the records between the shadow's offsets and the live
// ones lo, and returns how many.
func (r *rebuildRun) applyGap(ctx context.Context, tx pgx.Tx, lo map[int32]int64) (applied int, err error) {
	for p, o := range lo {
		if _, ok := r.applied[p]; !ok && o > 0 {
			// The shadow does not read it: swapped in, it would lack
			// the partition's events.
			return 0, fmt.Errorf("rebuild: partition %d of %s was added after the rebuild started; run it again to take it in", p, r.cfg.Topic)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(r.applied)) {
		t := r.target(lo, p)
		from := r.applied[p]
		if from > t {
			return 0, errNotCaughtUp
		}
		if from == t {
			continue
		}
		recs := r.pending[p]
		n := 0
		for n < len(recs) && recs[n].Offset < t {
			n++
		}
		// Every record below t must be here: one at or past t was
		// fetched, or all up to t (the last a marker, maybe).
		if n == len(recs) && r.fetched[p] < t {
			return 0, errNotCaughtUp
		}
		evs := make([]*Event, 0, n)
		for _, rec := range recs[:n] {
			ev, err := r.proj.decode(rec)
			if err != nil {
				return 0, err
			}
			evs = append(evs, ev)
		}
		// With find: an event the live projector dead-lettered meanwhile
		// fails as poison, naming it, and the swap gives way until the
		// catch-up has skipped it.
		b := consumers.Batch{Topic: r.cfg.Topic, Partition: p, Records: recs[:n], Next: t}
		if _, _, err := r.proj.applyIn(ctx, tx, b, evs, nil, true); err != nil {
			return 0, err
		}
		applied += n
	}
	return applied, nil
}
