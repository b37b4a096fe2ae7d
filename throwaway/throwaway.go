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
	"strings"
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
