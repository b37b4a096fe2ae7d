// Command spate runs the Spate event pipeline: the ingestion edge, the
// Postgres projector and the Redis Streams fan-out, together (spate dev) or
// each on its own. Run spate --help for the commands.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
)

func main() {
	// go-redis prints connection failures itself, on stderr; the commands
	// report them, with the URL, as their errors.
	redis.SetLogger(quietRedisLog{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "spate:", err)
		os.Exit(1)
	}
}

// quietRedisLog hands go-redis's own messages to the default logger at
// debug level.
type quietRedisLog struct{}

func (quietRedisLog) Printf(ctx context.Context, format string, v ...any) {
	slog.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "redis")
}
