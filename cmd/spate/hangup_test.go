package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spate-io/spate/spatetest"
)

// devAtTerminalEnv makes the test binary, run again by
// TestDevStopsWhenItsTerminalCloses, run spate dev with the arguments it
// holds, split at spaces.
const devAtTerminalEnv = "SPATE_TEST_DEV_AT_TERMINAL"

// TestDevStopsWhenItsTerminalCloses: spate dev at a terminal reloads its
// keys on a SIGHUP sent to it, and keeps running; when the terminal closes
// (which sends SIGHUP too), it stops, as at Ctrl-C, instead of holding its
// ports and throwaway servers with nobody to stop it. Started with SIGHUP
// ignored (nohup), it outlives its terminal, and reloads.
func TestDevStopsWhenItsTerminalCloses(t *testing.T) {
	if args := os.Getenv(devAtTerminalEnv); args != "" {
		os.Exit(mainWith(strings.Fields(args), run))
	}
	t.Parallel()
	for _, nohup := range []bool{false, true} {
		master, slave := openPTY(t)
		cmd := exec.Command(os.Args[0], "-test.run=^TestDevStopsWhenItsTerminalCloses$")
		if nohup {
			cmd = exec.Command("sh", "-c", `trap '' HUP; exec "$0" "$@"`, os.Args[0], "-test.run=^TestDevStopsWhenItsTerminalCloses$")
		}
		cmd.Env = append(os.Environ(), devAtTerminalEnv+"=dev --edge-only --kafka-port 0 --edge-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --redis-url "+spatetest.Redis(t))
		cmd.Stdin, cmd.Stdout = slave, slave
		stderr, err := cmd.StderrPipe() // the log, readable after the terminal closed
		if err != nil {
			t.Fatal(err)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true} // the terminal is its own
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		slave.Close()
		timeout := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() }) // a child that does not stop
		defer timeout.Stop()
		out, log := outputOf(master), outputOf(stderr)
		await := func(o *output, what string) {
			t.Helper()
			if !o.await(what) {
				t.Fatalf("nohup %v: spate dev did not say %q; it said:\n%s", nohup, what, o.String())
			}
		}
		await(out, "Ctrl-C stops everything")
		for range 2 { // a SIGHUP sent to it is a reload, and leaves it running for the next
			if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			await(log, "SIGHUP: no keys file")
			log.forget()
		}
		master.Close() // the terminal closes
		if nohup {
			await(log, "SIGHUP: no keys file")
			if err := cmd.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
		} else {
			await(log, "the terminal closed; stopping")
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("nohup %v: spate dev after its terminal closed: %v, want it stopped cleanly (a kill at the timeout would show)", nohup, err)
		}
	}
}

// openPTY opens a pseudo-terminal: its master side, and its slave side for
// a child.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close() })
	// Not by master.Fd(), which would make reads block and Close wait for them.
	rc, err := master.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ioctlErr error
	if err := rc.Control(func(fd uintptr) {
		if ioctlErr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ioctlErr == nil { // unlock the slave side
			n, ioctlErr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN)
		}
	}); err != nil || ioctlErr != nil {
		t.Fatal(err, ioctlErr)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

// output is what a child wrote to a terminal or pipe, as read so far.
type output struct {
	chunks chan []byte // closed at the end of the output
	got    strings.Builder
}

// outputOf reads what is written to r.
func outputOf(r io.Reader) *output {
	o := &output{chunks: make(chan []byte)}
	go func() {
		defer close(o.chunks)
		for {
			b := make([]byte, 4096)
			n, err := r.Read(b)
			if n > 0 {
				o.chunks <- b[:n]
			}
			if err != nil {
				return // EOF, or EIO from a terminal once the child is gone, or closed
			}
		}
	}()
	return o
}

// await reads until the output holds s, and reports whether it came
// before the output ended.
func (o *output) await(s string) bool {
	for !strings.Contains(o.got.String(), s) {
		b, ok := <-o.chunks
		if !ok {
			return false
		}
		o.got.Write(b)
	}
	return true
}

// forget drops what was read so far.
func (o *output) forget() { o.got.Reset() }

func (o *output) String() string { return o.got.String() }

// TestHangupBeforeTheTaskRunsIsAReload: a SIGHUP that comes once the
// reload is set up but before its task runs (as soon as the servers
// answer) is a reload, not the end of the process, which is SIGHUP's
// default action.
func TestHangupBeforeTheTaskRunsIsAReload(t *testing.T) {
	logged := make(chan string, 8)
	hup, stop := catchHangups()
	defer stop()
	task := reloadOnHangup(hup, slog.New(messages(logged)), "", nil, nil, nil)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- task(ctx) }()
	select {
	case msg := <-logged:
		if !strings.Contains(msg, "no keys file") {
			t.Errorf("logged %q, want the reload's line", msg)
		}
	case <-time.After(time.Minute):
		t.Fatal("no reload after the SIGHUP")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("the reload task ended with %v, want nil", err)
	}
}

// messages is a slog handler sending each message to a channel.
type messages chan<- string

func (m messages) Enabled(context.Context, slog.Level) bool      { return true }
func (m messages) Handle(_ context.Context, r slog.Record) error { m <- r.Message; return nil }
func (m messages) WithAttrs([]slog.Attr) slog.Handler            { return m }
func (m messages) WithGroup(string) slog.Handler                 { return m }
