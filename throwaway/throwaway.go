// Package throwaway starts disposable PostgreSQL and Redis servers from the binaries installed on the machine, for spate dev and for tests.
//
// Servers listen on 127.0.0.1 only. They run in their own process group, so
// Ctrl-C on a terminal reaches only the calling process, and on Linux the
// kernel signals them when the calling process dies, so they do not outlive
// it (their temporary directories do, if Stop was not called).
package throwaway

import (
	"bytes"
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

const (
	// startTimeout bounds how long a start waits for a server to answer.
	startTimeout = 60 * time.Second
	// stopTimeout bounds how long a stop waits before it kills the server.
	stopTimeout = 60 * time.Second
	// pollInterval is the pause between readiness probes.
	pollInterval = 20 * time.Millisecond
	// startAttempts is how often a start is tried on a fresh free port when
	// the one picked was taken before the server could bind it.
	startAttempts = 3
)

// errAddrInUse reports that a server could not bind its port.
var errAddrInUse = errors.New("address already in use")

// freePort returns a TCP port on 127.0.0.1 that nobody listened on a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("pick free port: %w", err)
	}
	return port, nil
}

// server is the lifecycle Postgres and Redis share: at most one process at a
// time, started by start, on a port and in a directory that stay the same
// across restarts.
type server struct {
	name    string // in errors: "postgres", "redis"
	dir     string // the server's directory
	tempDir bool   // stop removes dir
	port    int    // fixed once boot returns
	// start runs the server process and returns it once the server is ready.
	// It must not touch mu, proc or stopped.
	start func(ctx context.Context) (*proc, error)

	mu      sync.Mutex
	proc    *proc // nil when not running
	stopped bool
}

// makeDir creates dir, or a temporary directory for stop to remove if dir is
// "". A temporary directory notes its owner (ownerFile), and the ones of
// owners that are gone are removed first.
func (s *server) makeDir() error {
	if s.dir != "" {
		return os.MkdirAll(s.dir, 0o700)
	}
	removeAbandoned(s.name)
	dir, err := os.MkdirTemp("", "throwaway-"+s.name+"-")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return err
	}
	s.dir, s.tempDir = dir, true
	return nil
}

// ownerFile, in a temporary directory, holds the pid of the process that
// made it. A process killed before it stopped its servers (SIGKILL, a
// second Ctrl-C) leaves its directories behind; the servers die with it.
const ownerFile = "throwaway-owner.pid"

// removeAbandoned removes the temporary directories of servers called name
// whose owner no longer runs. Directories that note no owner are left be.
func removeAbandoned(name string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "throwaway-"+name+"-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
}

// boot starts the server for the first time. If s.port is 0 it picks a free
// port, and picks another if someone took it before the server bound it.
// If it fails it removes the temporary directory.
// The caller has not yet shared s.
func (s *server) boot(ctx context.Context) error {
	pick := s.port == 0
	var err error
	for attempt := 1; ; attempt++ {
		if pick {
			if s.port, err = freePort(); err != nil {
				break
			}
		}
		var pr *proc
		if pr, err = s.start(ctx); err == nil {
			s.proc = pr
			return nil
		}
		// Someone took the free port before the server bound it: pick another.
		if !pick || attempt == startAttempts || !errors.Is(err, errAddrInUse) {
			break
		}
	}
	s.removeTemp()
	return fmt.Errorf("start %s on port %d: %w", s.name, s.port, err)
}

// stop sends sig to the server, waits for it to exit, and removes the
// temporary directory. restart refuses after stop; stop may be called again.
func (s *server) stop(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	var errs []error
	if s.proc != nil {
		errs = append(errs, s.proc.stop(sig, stopTimeout))
		s.proc = nil
	}
	errs = append(errs, s.removeTemp())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop %s on port %d: %w", s.name, s.port, err)
	}
	return nil
}

// halt sends sig to the server and waits for it to exit, keeping its
// directory for restart. verb names the operation in errors ("crash", "kill").
func (s *server) halt(sig syscall.Signal, verb string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return fmt.Errorf("%s %s on port %d: not running", verb, s.name, s.port)
	}
	err := s.proc.stop(sig, stopTimeout)
	s.proc = nil
	if err != nil {
		return fmt.Errorf("%s %s on port %d: %w", verb, s.name, s.port, err)
	}
	return nil
}

// restart starts the server again after halt or after it exited on its own.
// It refuses after stop and while the server runs.
func (s *server) restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.stopped:
		return fmt.Errorf("restart %s on port %d: stopped", s.name, s.port)
	case s.proc != nil && !s.proc.exited():
		return fmt.Errorf("restart %s on port %d: still running", s.name, s.port)
	}
	s.proc = nil
	pr, err := s.start(ctx)
	if err != nil {
		return fmt.Errorf("restart %s on port %d: %w", s.name, s.port, err)
	}
	s.proc = pr
	return nil
}

// signal sends sig to the server.
func (s *server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return errors.New("not running")
	}
	return s.proc.signal(sig)
}

// removeTemp removes dir if makeDir created it.
func (s *server) removeTemp() error {
	if !s.tempDir {
		return nil
	}
	return os.RemoveAll(s.dir)
}

// proc is one run of a server process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // result of cmd.Wait, readable once done is closed
}

// startProc starts cmd with its output appended to logPath.
// A goroutine owned by the returned proc reaps the process.
func startProc(cmd *exec.Cmd, logPath string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own copy
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// context returns a context that ends with ctx or when the process exits,
// for an attempt to reach the server that must not outlive it.
func (p *proc) context(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// signal sends sig to the process. It returns os.ErrProcessDone if the
// process has already exited.
func (p *proc) signal(sig syscall.Signal) error {
	return p.cmd.Process.Signal(sig)
}

// stop sends sig and waits for the process to exit. If it is still running
// after timeout, stop kills it and returns an error saying so.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	if err := p.signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	if sig != syscall.SIGKILL {
		// A paused (SIGSTOP) process handles sig only once it runs again.
		_ = p.signal(syscall.SIGCONT)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	_ = p.signal(syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("pid %d still running %s after %s; killed", p.cmd.Process.Pid, timeout, sig)
}

// logTail returns the end of what was appended to the log at path after
// offset from, for error messages.
func logTail(path string, from int64) string {
	const max = 4 << 10
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	if fi.Size()-from > max {
		from = fi.Size() - max
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	return strings.TrimSpace(string(bytes.ToValidUTF8(b, nil)))
}

// logSize returns the size of the log at path, or 0 if there is none yet.
func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// exitError describes why a server exited during start, with the end of its log.
func exitError(p *proc, logPath string, from int64) error {
	tail := logTail(logPath, from)
	err := fmt.Errorf("exited during start (%v); log %s:\n%s", p.err, logPath, tail)
	if strings.Contains(tail, "Address already in use") {
		return fmt.Errorf("%w: %w", errAddrInUse, err)
	}
	return err
}

// startReady starts cmd with its output appended to logPath and returns its
// process once ready succeeds. It polls ready until then, giving up when the
// process exits, a minute passes or ctx ends; then it stops the process with
// sig and returns an error with the end of the log. what, in errors, names
// what ready waits for.
func startReady(ctx context.Context, cmd *exec.Cmd, logPath string, sig syscall.Signal, what string, ready func(context.Context) error) (*proc, error) {
	from := logSize(logPath)
	pr, err := startProc(cmd, logPath)
	if err != nil {
		return nil, err
	}
	if err := awaitReady(ctx, pr, logPath, from, what, ready); err != nil {
		_ = pr.stop(sig, stopTimeout)
		return nil, err
	}
	return pr, nil
}

// awaitReady polls ready until it succeeds, the server exits, a minute
// passes or ctx ends.
func awaitReady(ctx context.Context, pr *proc, logPath string, from int64, what string, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		actx, cancel := pr.context(ctx)
		err := ready(actx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-pr.done:
			return exitError(pr, logPath, from)
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last error: %v); log %s:\n%s",
				what, ctx.Err(), err, logPath, logTail(logPath, from))
		case <-tick.C:
		}
	}
}
