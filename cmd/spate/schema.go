package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/spate-io/spate/schemas"
)

// loadRegistry returns the compiled-in schemas plus those of a descriptor
// set file, if one is given.
func loadRegistry(file string) (*schemas.Registry, error) {
	if file == "" {
		return schemas.Builtin(), nil
	}
	set, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--schemas: %w", err)
	}
	reg, err := schemas.Load(set)
	if err != nil {
		return nil, fmt.Errorf("--schemas %s: %w", file, err)
	}
	return reg, nil
}

func newSchemaCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schema",
		Short: "Show the event-type registry and check schema changes",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var file string
	list := &cobra.Command{
		Use:   "list",
		Short: "List the registered event types and their payload messages",
		Example: `  spate schema list
  buf build -o mine.binpb && spate schema list --schemas mine.binpb`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg, err := loadRegistry(file)
			if err != nil {
				return err
			}
			for _, t := range reg.Types() {
				mt, _ := reg.Message(t)
				fmt.Fprintf(cmd.OutOrStdout(), "%-32s %s\n", t, mt.Descriptor().FullName())
			}
			return nil
		},
	}
	list.Flags().StringVar(&file, "schemas", "", "a FileDescriptorSet (buf build -o FILE.binpb) with event types besides the compiled-in ones")
	annotateEnv(list.Flags())

	check := &cobra.Command{
		Use:   "check OLD.binpb NEW.binpb",
		Short: "Report the changes from OLD to NEW that break producers or consumers",
		Long: `spate schema check compares two FileDescriptorSets (buf build -o FILE.binpb) with
buf's own breaking-change rules (the FILE category): a field removed without
reserving its number and name, a number or type changed, a message or enum
renamed or removed, and the rest buf knows; a buf.yaml in the working
directory does not change them. It needs buf: on PATH, or in .bin/ as make
buf installs it.

Then it checks what only Spate sees: that NEW loads (spate schema list
--schemas NEW would), that every event type of OLD is still there and names
the same message, and that no value of an enum the payloads hold got a new
first name (an alias put before it): sinks write enum values by that name.
OLD is read as it is, an earlier copy of shop.proto included.

It exits non-zero when NEW breaks OLD.`,
		Example: `  git show main:schemas.binpb > old.binpb; buf build -o new.binpb
  spate schema check old.binpb new.binpb`,
		Args: positional(2, 2, "OLD.binpb and NEW.binpb"),
		RunE: func(cmd *cobra.Command, args []string) error {
			buf, err := findBuf()
			if err != nil {
				return err
			}
			var sets [2][]byte
			for i, f := range args {
				if sets[i], err = os.ReadFile(f); err != nil {
					return err
				}
			}
			// Its own configuration: a buf.yaml in the working directory,
			// which may leave rules out, must not loosen the check. A field
			// removed with its number and name reserved breaks nothing.
			c := exec.CommandContext(cmd.Context(), buf, "breaking", args[1], "--against", args[0], "--config",
				`{"version":"v2","breaking":{"use":["FILE","FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED","FIELD_NO_DELETE_UNLESS_NAME_RESERVED"],"except":["FIELD_NO_DELETE"]}}`)
			c.Stdout, c.Stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			broken := false
			if err := c.Run(); err != nil {
				// buf exits 100 when it found breaking changes, else on
				// failing to compare at all (an unreadable file, say).
				if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 100 {
					return fmt.Errorf("buf breaking could not compare %s with %s: %w", args[1], args[0], err)
				}
				broken = true
			}
			spateBreaks, err := schemas.Breaks(sets[0], sets[1])
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			for _, b := range spateBreaks {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", args[1], b)
			}
			if broken || len(spateBreaks) > 0 {
				return fmt.Errorf("%s breaks %s", args[1], args[0])
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is compatible with %s\n", args[1], args[0])
			return nil
		},
	}
	cmd.AddCommand(list, check)
	return cmd
}

// findBuf returns buf from PATH, else from .bin in this directory or a parent.
func findBuf() (string, error) {
	if p, err := exec.LookPath("buf"); err == nil {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, ".bin", "buf")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("buf is needed to compare schemas: put it on PATH, or run make buf to install the pinned one in .bin/")
		}
		dir = parent
	}
}
