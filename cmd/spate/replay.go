package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/consumers/projection"
)

func newReplayCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Rebuild projections from Kafka history, or copy a range of history into a stream or topic",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newReplayProjectionCmd(), newReplayStreamCmd())
	return cmd
}

func newReplayProjectionCmd() *cobra.Command {
	var (
		f                               roleFlags
		url, config, from               string
		group, rateFlag                 string
		batchSize                       int
		partial, rejected, retrySkipped bool
	)
	cmd := &cobra.Command{
		Use:   "projection NAME...",
		Short: "Rebuild projections from Kafka history into shadow tables, then swap them in",
		Long: `Replay projection rebuilds the named projections of --config from the
history in Kafka, without stopping the live projector and without readers of
the live tables ever seeing a half-built table:

 1. It creates the projections' tables afresh in a schema of their own,
    spate_rebuild_<name> (several projections: a hash of their names), and
    applies the history to them from --from on.
 2. It catches up with the live projector (--group), never going past it.
 3. In one transaction it holds the live projector's offsets still, applies
    the last few events, and swaps the new tables in for the live ones,
    together with their migrations and definitions. Readers of a live table
    wait for the swap (at most a moment) and then read the new table.

The replaced tables are kept in the schema spate_retired_<name> (named as the
rebuild's) until the next rebuild of the same projections (DROP SCHEMA ...
CASCADE frees them).

Ctrl-C leaves the live tables as they were; run the same command again to
resume where it stopped. With changed definitions it starts over.

Events the projections reject are skipped and counted. If the live tables
hold one of them (the live projector applied it, or it was re-driven), the
rebuild stops before its swap and names it. The rebuild applies partitions
in another order than the live projector did, so an event can fail only
because of it (a foreign key to a row another partition writes):
--retry-skipped tries those events again once the new tables hold
everything up to the live offsets, after the later events of their
partitions, as a re-drive does (an update a later event made to the rows it
writes, it may undo), while the swap holds the live projector still.
--skip-rejected swaps in without them, but for re-driven ones.

A rebuild holds only what Kafka keeps. If Kafka's retention deleted events
it would apply, it refuses to start (or stops, if they go while it runs)
and names the partitions; with --partial-history it rebuilds from the
oldest event Kafka keeps instead, starting an interrupted run over.

Typical use: a projection's SQL changed in spate.yaml. Rebuild it with the
new file, then restart the projectors with that file: a live projector
whose definition differs from the swapped-in one stops applying (and says
why) until it is restarted with the new one. Projections that read each
other's tables (say, totals that read orders) must be rebuilt together.
Their statements must name tables without a schema.`,
		Example: `  spate replay projection orders --config spate.yaml --postgres-url postgres://spate@db/spate
  spate replay projection payments --config spate.yaml --from -24h --rate 5000`,
		Args: positional(1, -1, "the NAME of each projection to rebuild"),
		RunE: func(cmd *cobra.Command, names []string) error {
			if url == "" {
				return errors.New("--postgres-url is required")
			}
			start, err := parsePosition("from", from, time.Now(), false)
			if err != nil {
				return err
			}
			if start.kind == atLatest {
				return errors.New("--from latest would rebuild nothing: give earliest, a time or a duration ago")
			}
			if batchSize <= 0 {
				return fmt.Errorf("--batch-size %d: want at least 1", batchSize)
			}
			perSecond, err := parseRate(rateFlag)
			if err != nil {
				return err
			}
			e, err := f.env()
			if err != nil {
				return err
			}
			cfg, err := e.loadConfig(config, nil)
			if err != nil {
				return err
			}
			projs := cfg.projections
			if projs == nil {
				projs = []projection.Projection{projection.EventLog()}
			}
			chosen, err := projection.Select(projs, names...)
			if err != nil {
				if config == "" {
					err = fmt.Errorf("%w (no --config given)", err)
				}
				return err
			}
			ctx := cmd.Context()
			var offs map[int32]int64 // earliest: from offset 0, which the rebuild checks Kafka still has
			if start.kind != atEarliest {
				adminCl, err := kgo.NewClient(e.kafkaOpts("spate-replay")...)
				if err != nil {
					return fmt.Errorf("kafka client: %w", err)
				}
				offs, err = start.resolve(ctx, kadm.NewClient(adminCl), e.topic)
				adminCl.Close()
				if err != nil {
					return err
				}
			}
			pool, err := pgxpool.New(ctx, url)
			if err != nil {
				return fmt.Errorf("postgres: %w", err)
			}
			defer pool.Close()

			prog := startProgress(cmd.ErrOrStderr(), e.log, "rebuild "+strings.Join(names, ", "), 0)
			defer prog.finish()
			var shown int64
			rb, err := projection.NewRebuild(pool, e.reg, projection.RebuildConfig{
				Projections: chosen, Topic: e.topic, Group: group, From: offs, PartialHistory: partial, SkipRejected: rejected, RetrySkipped: retrySkipped,
				Rate: perSecond, BatchSize: batchSize, Logger: e.log,
				Progress: func(done, total int64) {
					prog.setTotal(total)
					prog.add(int(done - shown))
					shown = done
				},
			}, e.kafkaOpts("spate-replay")...)
			if err != nil {
				return err
			}
			res, err := rb.Run(ctx)
			prog.finish()
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("rebuild of %s interrupted before the swap; the live tables are untouched: run the same command again to resume from schema %s: %w",
						strings.Join(names, ", "), rb.Schema(), context.Cause(ctx))
				}
				switch {
				case errors.Is(err, projection.ErrHistoryGone):
					return fmt.Errorf("%w. To rebuild from the oldest event Kafka keeps, give --partial-history", err)
				case errors.Is(err, projection.ErrSkippedApplied):
					if retrySkipped {
						return fmt.Errorf("%w. The live tables are untouched; to swap in without those events, run again with --skip-rejected", err)
					}
					return fmt.Errorf("%w. The live tables are untouched. If they failed only because of the order of partitions, run again with --retry-skipped; to swap in without them, with --skip-rejected", err)
				case errors.Is(err, projection.ErrRedrivenSkipped) && !retrySkipped:
					return fmt.Errorf("%w. The live tables are untouched. If they failed only because of the order of partitions, run again with --retry-skipped", err)
				}
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "swapped in %s at offsets %v\n", strings.Join(res.Tables, ", "), res.Offsets)
			fmt.Fprintf(out, "applied %d events", res.Applied)
			if res.Resumed {
				fmt.Fprint(out, " (resumed)")
			}
			fmt.Fprintln(out)
			if res.Retried > 0 {
				fmt.Fprintf(out, "applied %d of them late: they failed in their turn and applied once the rebuild had caught up (a foreign key to a row another partition writes, say)\n", res.Retried)
			}
			if res.Skipped > 0 {
				fmt.Fprintf(out, "skipped %d events the projections could not apply (see spate dlq list for those the live projector dead-lettered)\n", res.Skipped)
			}
			fmt.Fprintf(out, "the previous tables are in schema %s until the next rebuild\n", res.Retired)
			return nil
		},
	}
	fs := cmd.Flags()
	f.register(fs, []string{"127.0.0.1:9092"})
	fs.MarkHidden("admin-addr")
	fs.StringVar(&url, "postgres-url", "", "PostgreSQL connection URL of the live projections (required)")
	fs.StringVar(&config, "config", "", "spate.yaml with the projections (default: event_log alone)")
	fs.StringVar(&group, "group", projection.DefaultGroup, "the live projector's consumer group, whose offsets the rebuild catches up with")
	fs.StringVar(&from, "from", "earliest", "where a new rebuild starts: earliest, a time (RFC 3339) or a duration ago (-24h)")
	fs.StringVar(&rateFlag, "rate", "", "most events applied per second, e.g. 5000 or 5000/s (default: as fast as it goes)")
	fs.IntVar(&batchSize, "batch-size", 5000, "most events applied in one transaction")
	annotateEnv(fs)
	fs.BoolVar(&partial, "partial-history", false, "rebuild from the oldest event Kafka keeps where its retention deleted older ones (the rebuilt tables lack them)")
	fs.BoolVar(&rejected, "skip-rejected", false, "swap in even if the projections rejected events the live projector applied (the rebuilt tables lack them; not for re-driven events)")
	fs.BoolVar(&retrySkipped, "retry-skipped", false, "try the rejected events the live tables hold again once caught up, after the later events of their partitions (a foreign key to a row another partition writes)")
	cmdLineOnly(fs, "from", "partial-history", "skip-rejected", "retry-skipped")
	return cmd
}

// parseRate reads a --rate of N or N/s; empty is no limit.
func parseRate(s string) (float64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseFloat(strings.TrimSuffix(s, "/s"), 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--rate %q: want events per second, e.g. 5000 or 5000/s", s)
	}
	return n, nil
}
