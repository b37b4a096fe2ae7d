package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The fixture's live projector applied its events to payments and
// dead-lettered two; a rebuild of payments from the same file swaps in the
// same rows, skipping those two like the live projector did.
func TestReplayProjectionSwapsInTheSameTable(t *testing.T) {
	t.Parallel()
	x := newDLQFixture(t)
	hash := func() string {
		t.Helper()
		var h string
		err := x.pool.QueryRow(context.Background(), `SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM payments t`).Scan(&h)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	before := hash()
	out, errs, err := runSpate(context.Background(), "replay", "projection", "payments", "--config", x.broken, "--postgres-url", x.pgURL,
		"--kafka-brokers", strings.Join(x.brokers, ","))
	if err != nil {
		t.Fatalf("spate replay projection: %v\nstdout:\n%s\nstderr:\n%s", err, out, errs)
	}
	for _, want := range []string{"swapped in payments at offsets", "skipped 2 events", "spate_retired_payments"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if after := hash(); after != before {
		t.Fatalf("payments after the rebuild differs from the live table it replaced")
	}
}

// TestReplayProjectionInterrupted: a rebuild stopped before its swap (here
// by cancelling its context, as Ctrl-C does) fails, so that a script does
// not go on as if it had swapped, and says how to resume.
func TestReplayProjectionInterrupted(t *testing.T) {
	t.Parallel()
	x := newDLQFixture(t)
	// At one event a second, the fixture's twelve take twelve seconds.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	stop := time.AfterFunc(2*time.Second, func() { cancel(errors.New("stopped by the test")) })
	defer stop.Stop()
	_, _, err := runSpate(ctx, "replay", "projection", "payments", "--config", x.broken, "--postgres-url", x.pgURL,
		"--kafka-brokers", strings.Join(x.brokers, ","), "--rate", "1", "--batch-size", "1")
	if err == nil || !strings.Contains(err.Error(), "interrupted before the swap") || !strings.Contains(err.Error(), "stopped by the test") {
		t.Fatalf("spate replay projection stopped before its swap = %v, want an error saying so", err)
	}
}

func TestReplayProjectionRefusesBadInput(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"projection"}, "give the NAME of each projection to rebuild: spate replay projection NAME... [flags]"},
		{[]string{"projection", "orders"}, "--postgres-url is required"},
		{[]string{"projection", "orders", "--postgres-url", "postgres://x", "--from", "latest"}, "--from latest would rebuild nothing"},
		{[]string{"projection", "orders", "--postgres-url", "postgres://x", "--from", "7"}, `--from "7"`},
		{[]string{"projection", "orders", "--postgres-url", "postgres://x", "--rate", "fast"}, `--rate "fast"`},
		{[]string{"projection", "orders", "--postgres-url", "postgres://x", "--batch-size", "-1"}, "--batch-size -1: want at least 1"},
		{[]string{"projection", "orders", "--postgres-url", "postgres://x"}, `no projection "orders"; the configuration has event_log (no --config given)`},
	} {
		_, _, err := runSpate(context.Background(), append([]string{"replay"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spate replay %s = %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// TestReplayProjectionOfHistoryKafkaDeleted: the rebuild is refused, with
// the flag that allows it, when retention deleted events it would apply.
func TestReplayProjectionOfHistoryKafkaDeleted(t *testing.T) {
	t.Parallel()
	x := newDLQFixture(t)
	cl, err := kgo.NewClient(kgo.SeedBrokers(x.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	offs := kadm.Offsets{}
	offs.AddOffset("spate.events", 0, 1, -1)
	if deleted, err := kadm.NewClient(cl).DeleteRecords(context.Background(), offs); err != nil || deleted.Error() != nil {
		t.Fatalf("delete the first record of partition 0: %v, %v", err, deleted.Error())
	}
	args := []string{"replay", "projection", "payments", "--config", x.broken, "--postgres-url", x.pgURL, "--kafka-brokers", strings.Join(x.brokers, ",")}
	_, _, err = runSpate(context.Background(), args...)
	if err == nil || !strings.Contains(err.Error(), "partition 0 starts at offset 1, not 0") || !strings.Contains(err.Error(), "give --partial-history") {
		t.Fatalf("spate replay projection of deleted history = %v, want a refusal naming partition 0 and --partial-history", err)
	}
	out, errs, err := runSpate(context.Background(), append(args, "--partial-history")...)
	if err != nil || !strings.Contains(out, "swapped in payments") {
		t.Fatalf("with --partial-history: %v\nstdout:\n%s\nstderr:\n%s", err, out, errs)
	}
}
