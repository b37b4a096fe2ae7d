package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/spate-io/spate/producers/edge"
)

func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Manage the edge's API keys",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "new NAME",
		Short: "Make a new API key, and the entry that lets the edge accept it",
		Long: `spate keys new prints a new random API key, to hand to the producer, and
the entry to add to the edge's keys file (--keys). The file keeps only the
key's SHA-256. Narrow the entry's types and sources, and give it a rate, as
the producer needs; the edge reloads the file on SIGHUP.`,
		Example: `  spate keys new checkout`,
		Args:    positional(1, 1, "the key's NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			b := make([]byte, 32)
			if _, err := rand.Read(b); err != nil {
				return err
			}
			key := "spk_" + base64.RawURLEncoding.EncodeToString(b)
			fmt.Fprintf(cmd.OutOrStdout(), `# The key, for the producer (shown once; keep it secret):
#   %s
# The entry for the keys file, under keys:
  - name: %s
    sha256: %s
    types: ["*"]        # the event types it may publish (globs)
    sources: ["*"]      # the sources it may publish as (globs)
    # rate: 1000        # events per second
`, key, strconv.Quote(args[0]), edge.HashKey(key)) // quoted: a name may hold ": " or "#"
			return nil
		},
	})
	return cmd
}

// loadKeys reads a keys file; no file: nil (no authentication).
func loadKeys(file string) (*edge.Keys, error) {
	if file == "" {
		return nil, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--keys: %w", err)
	}
	return edge.LoadKeys(file, data)
}

// catchHangups catches SIGHUP from now on, until stop, for
// reloadOnHangup: a command calls it before it starts anything, so that a
// SIGHUP while it starts is not the end of the process (SIGHUP's default
// action), which would leave what it started behind.
func catchHangups() (hup <-chan os.Signal, stop func()) {
	c := make(chan os.Signal, 1) // always caught: a SIGHUP never stops the edge
	signal.Notify(c, syscall.SIGHUP)
	return c, func() { signal.Stop(c) }
}

// reloadOnHangup returns the task that reloads, on every SIGHUP of hup
// (catchHangups) until its ctx ends, the keys file into srv and the TLS
// files, when there are any. What does not load stays as it was. When
// terminalGone is not nil and reports true at a SIGHUP, the SIGHUP was the
// terminal closing: the task returns errTerminalClosed instead.
func reloadOnHangup(hup <-chan os.Signal, log *slog.Logger, keysFile string, srv *edge.Server, tlsFiles *edge.TLSFiles, terminalGone func() bool) func(context.Context) error {
	return func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-hup:
			}
			if terminalGone != nil && terminalGone() {
				log.Info("SIGHUP: the terminal closed; stopping")
				return errTerminalClosed
			}
			reload(log, keysFile, srv, tlsFiles)
		}
	}
}

// reload reloads the keys file into srv and the TLS files, when there are
// any, logging what it did. What does not load stays as it was.
func reload(log *slog.Logger, keysFile string, srv *edge.Server, tlsFiles *edge.TLSFiles) {
	if keysFile == "" && tlsFiles == nil {
		log.Info("SIGHUP: no keys file or TLS files to reload")
	}
	if keysFile != "" {
		if ks, err := loadKeys(keysFile); err != nil {
			log.Error("reload keys; keeping the ones loaded before", "file", keysFile, "err", err)
		} else {
			srv.SetKeys(ks)
			log.Info("keys reloaded", "file", keysFile)
		}
	}
	if tlsFiles != nil {
		if err := tlsFiles.Reload(); err != nil {
			log.Error("reload TLS files; keeping the ones loaded before", "err", err)
		} else {
			log.Info("TLS files reloaded")
		}
	}
}

// errTerminalClosed is reloadOnHangup's error when the terminal it ran at
// closed.
var errTerminalClosed = errors.New("the terminal closed")

// terminalWatch returns a func reporting whether the process's controlling
// terminal is gone, as it is once the terminal closed, which sends SIGHUP:
// spate dev, which reloads keys on SIGHUP too, must stop then, as at
// Ctrl-C, and not hold its ports and throwaway servers past its terminal.
// It returns nil for a process without a terminal, or started with SIGHUP
// ignored (nohup: to outlive the terminal), where a SIGHUP is always a
// reload asked for. Call it before catchHangups, which stops ignoring it.
func terminalWatch() func() bool {
	if signal.Ignored(syscall.SIGHUP) {
		return nil
	}
	tty := func() bool {
		f, err := os.Open("/dev/tty")
		if err != nil {
			return false
		}
		f.Close()
		return true
	}
	if !tty() {
		return nil
	}
	return func() bool { return !tty() }
}
