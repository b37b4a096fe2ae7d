package throwaway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
	bin        string
	dir        string
	tempDir    bool // Stop removes dir
	port       int  // fixed once StartRedis returns
	appendOnly bool

	mu      sync.Mutex
	proc    *proc // nil when not running
	stopped bool
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
	r := &Redis{bin: bin, dir: cfg.Dir, port: cfg.Port, appendOnly: cfg.AppendOnly}
	if r.dir == "" {
		var err error
		if r.dir, err = os.MkdirTemp("", "throwaway-redis-"); err != nil {
			return nil, fmt.Errorf("start redis: %w", err)
		}
		r.tempDir = true
	} else if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return nil, fmt.Errorf("start redis: %w", err)
	}
	var err error
	for attempt := 1; ; attempt++ {
		if cfg.Port == 0 {
			if r.port, err = freePort(); err != nil {
				break
			}
		}
		if err = r.start(ctx); err == nil {
			return r, nil
		}
		// Someone took the free port before the server bound it: pick another.
		if cfg.Port != 0 || attempt == startAttempts || !errors.Is(err, errAddrInUse) {
			break
		}
	}
	r.removeTemp()
	return nil, fmt.Errorf("start redis on port %d: %w", r.port, err)
}

// Addr returns the server's address, 127.0.0.1:PORT.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// URL returns the server's URL for database 0, redis://127.0.0.1:PORT/0.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// Stop shuts the server down (SIGTERM, resuming it if paused), waits for it
// to exit, and removes the directory StartRedis created, if it created one.
// A server that does not exit within a minute is killed.
func (r *Redis) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	var errs []error
	if r.proc != nil {
		errs = append(errs, r.proc.stop(syscall.SIGTERM, stopTimeout))
		r.proc = nil
	}
	errs = append(errs, r.removeTemp())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop redis on port %d: %w", r.port, err)
	}
	return nil
}

// Kill kills the server (SIGKILL) and waits for it to exit. Its directory
// stays; Restart starts it again.
func (r *Redis) Kill() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return fmt.Errorf("kill redis on port %d: not running", r.port)
	}
	err := r.proc.stop(syscall.SIGKILL, stopTimeout)
	r.proc = nil
	if err != nil {
		return fmt.Errorf("kill redis on port %d: %w", r.port, err)
	}
	return nil
}

// Restart starts the server again, after Kill or after it exited on its own,
// on the same port and directory, and returns once it answers PING.
func (r *Redis) Restart(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.stopped:
		return fmt.Errorf("restart redis on port %d: stopped", r.port)
	case r.proc != nil && !r.proc.exited():
		return fmt.Errorf("restart redis on port %d: still running", r.port)
	}
	r.proc = nil
	if err := r.start(ctx); err != nil {
		return fmt.Errorf("restart redis on port %d: %w", r.port, err)
	}
	return nil
}

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

func (r *Redis) signal(sig syscall.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return errors.New("not running")
	}
	return r.proc.signal(sig)
}

// start runs the server and waits until it answers PING.
// The caller holds r.mu or has not yet shared r.
func (r *Redis) start(ctx context.Context) error {
	logPath := filepath.Join(r.dir, "redis.log")
	from := logSize(logPath)
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
	pr, err := startProc(cmd, logPath)
	if err != nil {
		return err
	}
	if err := r.awaitReady(ctx, pr, logPath, from); err != nil {
		_ = pr.stop(syscall.SIGKILL, stopTimeout)
		return err
	}
	r.proc = pr
	return nil
}

// awaitReady polls until the server answers PING (not a LOADING error),
// the server exits, a minute passes or ctx ends.
func (r *Redis) awaitReady(ctx context.Context, pr *proc, logPath string, from int64) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		actx, cancel := pr.context(ctx)
		err := ping(actx, r.Addr())
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-pr.done:
			return exitError(pr, logPath, from)
		case <-ctx.Done():
			return fmt.Errorf("wait for PING: %w (last error: %v); log %s:\n%s",
				ctx.Err(), err, logPath, logTail(logPath, from))
		case <-tick.C:
		}
	}
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

// removeTemp removes dir if StartRedis created it.
func (r *Redis) removeTemp() error {
	if !r.tempDir {
		return nil
	}
	return os.RemoveAll(r.dir)
}
