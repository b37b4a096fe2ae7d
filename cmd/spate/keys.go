package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
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

// reloadOnHangup reloads, on every SIGHUP until ctx ends, the keys file
// into srv and the TLS files, when there are any. What does not load stays
// as it was.
func reloadOnHangup(ctx context.Context, log *slog.Logger, keysFile string, srv *edge.Server, tlsFiles *edge.TLSFiles) error {
	hup := make(chan os.Signal, 1) // always caught: a SIGHUP never stops the edge
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
		}
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
}
