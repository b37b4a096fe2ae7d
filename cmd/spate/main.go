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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "spate:", err)
		os.Exit(1)
	}
}

// redisLog hands go-redis's own messages to the log of the command that
// runs (commandLog), at debug level.
type redisLog struct{}

func (redisLog) Printf(ctx context.Context, format string, v ...any) {
	if l := commandLog.Load(); l != nil {
		l.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "redis")
	}
}
