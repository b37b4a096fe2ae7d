// Command spate runs the Spate event pipeline: the ingestion edge, the
// Postgres projector and the Redis Streams fan-out, together (spate dev) or
// each on its own. Run spate --help for the commands.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
)

func main() {
	// go-redis prints connection failures itself, on stderr; the commands
	// report them, with the URL, as their errors, and its messages go to
	// the command's log at debug level.
	redis.SetLogger(redisLog{})
	os.Exit(mainWith(os.Args[1:], run))
}

// mainWith runs the command line args with run until it returns, and
// returns the process's exit code. The first SIGINT or SIGTERM cancels
// run's context; a second ends the process at once, as if spate did not
// catch signals, so that a stop that waits (a batch draining, a rebuild's
// step) can be cut short.
func mainWith(args []string, run func(context.Context, []string) error) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Started with SIGINT ignored (a background job of a shell without job
	// control), its default action would ignore the second one too.
	ignored := signal.Ignored(os.Interrupt) || signal.Ignored(syscall.SIGTERM)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		if !ignored {
			signal.Stop(sigs) // a second gets the default action: the end, by the signal
		}
		fmt.Fprintf(os.Stderr, "spate: %v: stopping; again to stop at once\n", s)
		cancel()
		if ignored {
			s = <-sigs
			os.Exit(128 + int(s.(syscall.Signal)))
		}
	}()
	if err := run(ctx, args); err != nil {
		fmt.Fprintln(os.Stderr, "spate:", err)
		return 1
	}
	return 0
}

// redisLog hands go-redis's own messages to the log of the command that
// runs (commandLog), at debug level.
type redisLog struct{}

func (redisLog) Printf(ctx context.Context, format string, v ...any) {
	if l := commandLog.Load(); l != nil {
		l.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "redis")
	}
}
