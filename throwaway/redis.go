package throwaway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const installRedis = "apt-get install redis-server"

// RedisConfig says where and how to run a Redis server. The zero value runs
// redis-server from PATH on a free port in a temporary directory, without
// persistence.
type RedisConfig struct {
	// BinPath is the redis-server binary. Zero: redis-server on PATH.
	BinPath string
	// Dir is the server's working directory: its append-only files and its
	// log (Dir/redis.log). Zero: a new temporary directory, removed by Stop.
	Dir string
	// Port to listen on, 127.0.0.1 only. Zero: a free port.
	Port int
	// AppendOnly makes every write durable before it is acknowledged
	// (appendonly yes, appendfsync always), so data survives Kill.
	// Zero: no persistence at all.
	AppendOnly bool
}

// Redis is a Redis server run by this process, without password or
// protected mode.
type Redis struct {
	server     // dir is the working directory
	bin        string
	appendOnly bool
}

// StartRedis starts a server and returns once it answers PING, or an error
// with the end of the server log. It waits at most a minute, less if ctx
// ends sooner.
func StartRedis(ctx context.Context, cfg RedisConfig) (*Redis, error) {
	bin := cfg.BinPath
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("redis-server"); err != nil {
			return nil, fmt.Errorf("start redis: no redis-server on PATH (install it: %s): %w", installRedis, err)
		}
	} else if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("start redis: no redis-server (install it: %s): %w", installRedis, err)
	}
	r := &Redis{bin: bin, appendOnly: cfg.AppendOnly}
	r.server = server{name: "redis", dir: cfg.Dir, port: cfg.Port, start: r.launch}
	if err := r.makeDir(); err != nil {
		return nil, fmt.Errorf("start redis: %w", err)
	}
	if err := r.boot(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// Addr returns the server's address, 127.0.0.1:PORT.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// URL returns the server's URL for database 0, redis://127.0.0.1:PORT/0.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// Stop shuts the server down (SIGTERM, resuming it if paused), waits for it
// to exit, and removes the directory StartRedis created, if it created one.
// A server that does not exit within a minute is killed.
func (r *Redis) Stop() error { return r.stop(syscall.SIGTERM) }

// Kill kills the server (SIGKILL) and waits for it to exit. Its directory
// stays; Restart starts it again.
func (r *Redis) Kill() error { return r.halt(syscall.SIGKILL, "kill") }

// Restart starts the server again, after Kill or after it exited on its own,
// on the same port and directory, and returns once it answers PING.
func (r *Redis) Restart(ctx context.Context) error { return r.restart(ctx) }

// Pause stops the server process (SIGSTOP): connections are accepted by the
// kernel but nothing is answered until Resume.
func (r *Redis) Pause() error {
	if err := r.signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pause redis on port %d: %w", r.port, err)
	}
	return nil
}

// Resume continues a paused server (SIGCONT).
func (r *Redis) Resume() error {
	if err := r.signal(syscall.SIGCONT); err != nil {
		return fmt.Errorf("resume redis on port %d: %w", r.port, err)
	}
	return nil
}

// launch runs the server and returns its process once it answers PING.
func (r *Redis) launch(ctx context.Context) (*proc, error) {
	args := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(r.port),
		"--dir", r.dir,
		"--save", "",
		"--protected-mode", "no",
	}
	if r.appendOnly {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	cmd := exec.Command(r.bin, args...)
	cmd.Dir = r.dir
	cmd.SysProcAttr = sysProcAttr(nil, syscall.SIGKILL)
	// Not ready while it answers PING with an error such as LOADING.
	return startReady(ctx, cmd, filepath.Join(r.dir, "redis.log"), syscall.SIGKILL, "PING", func(ctx context.Context) error {
		return ping(ctx, r.Addr())
	})
}

// ping sends PING to the server at addr and checks that it answers PONG,
// not an error such as LOADING.
func ping(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := conn.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	if _, err := io.WriteString(conn, "PING\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line = strings.TrimSpace(line); line != "+PONG" {
		return fmt.Errorf("ping: got %q, want +PONG", line)
	}
	return nil
}
