package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// run executes the command line args.
func run(ctx context.Context, args []string) error {
	root := newRoot(os.Stdout, os.Stderr)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "spate",
		Short: "Spate: events from producers to Kafka to Postgres projections and Redis Streams, exactly once",
		Long: `Spate is an event-streaming pipeline. Producers send CloudEvents to the edge
over HTTP or Connect/gRPC; the edge validates each event against its schema and
publishes it to Kafka; consumer groups apply the events to Postgres projections
and to Redis Streams exactly once.

Every setting can also be given through the environment: --kafka-brokers is
SPATE_KAFKA_BROKERS, --postgres-url is SPATE_POSTGRES_URL, and so on. A flag
given on the command line wins over the environment. Flags that choose what a
command acts on (spate dlq's selections, spate offsets reset --to, --force
and --reapply, spate tail --group and --from, spate replay projection --from,
--partial-history, --skip-rejected and --retry-skipped, spate replay stream's
range, filters and target, spate dedupe's --key, --older-than and --dry-run,
and the load of spate bench edge) are taken from the command line only; each
says so in its help.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return envFallback(cmd.Flags())
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newDevCmd(), newEdgeCmd(), newProjectCmd(), newFanoutCmd(), newTailCmd(), newReplayCmd(), newDLQCmd(), newOffsetsCmd(), newDedupeCmd(), newKeysCmd(), newSchemaCmd(), newBenchCmd())
	return root
}

// envFallback sets every flag not given on the command line from its
// SPATE_* environment variable, if that is set, except the flags marked
// cmdLineOnly.
func envFallback(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || err != nil || f.Annotations[cmdLineOnlyKey] != nil {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", envName(f.Name), v, e)
			}
		}
	})
	return err
}

// cmdLineOnlyKey is the annotation of flags envFallback leaves alone.
const cmdLineOnlyKey = "spate_cmd_line_only"

// cmdLineOnly marks flags that choose what a command acts on: they are
// taken from the command line only, so that nothing left in a shell's
// environment (SPATE_FORCE, SPATE_ALL, SPATE_GROUP set for another command)
// chooses for the operator (SPATE_FROM left for spate tail must not start a
// rebuild at ten minutes ago). Their usage says so.
func cmdLineOnly(fs *pflag.FlagSet, names ...string) {
	for _, name := range names {
		f := fs.Lookup(name)
		f.Annotations = map[string][]string{cmdLineOnlyKey: {"true"}}
		f.Usage = strings.TrimSuffix(f.Usage, " ["+envName(name)+"]") + " (not taken from " + envName(name) + ")" // annotateEnv's, if it ran first
	}
}

func envName(flag string) string {
	return "SPATE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// annotateEnv appends each flag's environment variable to its usage.
func annotateEnv(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		f.Usage += " [" + envName(f.Name) + "]"
	})
}

// logFlags configures the process logger.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
}

// loggers returns the process logger and the one given to the Kafka client,
// which logs at warn and above unless the level is debug: its info lines
// are about connections and metadata.
func (l *logFlags) loggers(w io.Writer) (log, kafkaLog *slog.Logger, err error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", l.level)
	}
	handler := func(level slog.Level) slog.Handler {
		opts := &slog.HandlerOptions{Level: level}
		if l.format == "json" {
			return slog.NewJSONHandler(w, opts)
		}
		return slog.NewTextHandler(w, opts)
	}
	if l.format != "text" && l.format != "json" {
		return nil, nil, fmt.Errorf("--log-format %q: want text or json", l.format)
	}
	kafkaLevel := max(level, slog.LevelWarn)
	if level == slog.LevelDebug {
		kafkaLevel = level
	}
	log = slog.New(handler(level))
	commandLog.Store(log)
	return log, slog.New(handler(kafkaLevel)).With("component", "kafka"), nil
}

// commandLog is the log of the command that runs, for messages of
// libraries that log through a global, such as go-redis.
var commandLog atomic.Pointer[slog.Logger]

// positional checks a command's arguments: between min and max of them
// (max < 0: no limit), which usage names, as in "NAME..."; the error says
// what is missing or extra, with the command's usage line.
func positional(min, max int, usage string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < min:
			return fmt.Errorf("give %s: %s", usage, cmd.UseLine())
		case max >= 0 && len(args) > max:
			return fmt.Errorf("%d arguments, but %s takes only %s: %s", len(args), cmd.CommandPath(), usage, cmd.UseLine())
		}
		return nil
	}
}
