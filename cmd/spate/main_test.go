package main

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/spate-io/spate/producers/edge"
)

// stuckEnv makes the test binary, run again by TestSecondSignalStopsAtOnce,
// act as a spate whose command never returns once told to stop.
const stuckEnv = "SPATE_TEST_STUCK_COMMAND"

// TestSecondSignalStopsAtOnce: the first SIGINT asks the command to stop
// and says so; a second ends the process at once, even though the command
// never returns.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	if os.Getenv(stuckEnv) == "1" {
		os.Exit(mainWith(nil, func(ctx context.Context, _ []string) error {
			os.Stdout.WriteString("running\n")
			<-ctx.Done()
			select {} // a stop that never ends
		}))
	}
	t.Parallel()
	for _, ignored := range []bool{false, true} {
		// Ignored: started with SIGINT ignored, as a shell without job
		// control starts a background job; the default action of the
		// second SIGINT would then be to ignore it too.
		cmd := exec.Command(os.Args[0], "-test.run=^TestSecondSignalStopsAtOnce$")
		if ignored {
			cmd = exec.Command("sh", "-c", `trap '' INT; exec "$0" "$@"`, os.Args[0], "-test.run=^TestSecondSignalStopsAtOnce$")
		}
		cmd.Env = append(os.Environ(), stuckEnv+"=1")
		stopTwice(t, cmd, ignored)
	}
}

// stopTwice starts cmd, a stuck command, and checks that a second SIGINT
// ends it: by the signal, or with exit status 130 when it started with
// SIGINT ignored.
func stopTwice(t *testing.T, cmd *exec.Cmd, ignored bool) {
	t.Helper()
	timeout := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() }) // a child that does not stop
	defer timeout.Stop()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "running\n" {
		t.Fatalf("the child said %q (%v), want running", line, err)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stderr).ReadString('\n')
	if err != nil || !strings.Contains(line, "stopping; again to stop at once") {
		t.Fatalf("after the first SIGINT the child said %q (%v), want that it is stopping", line, err)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	switch {
	case !errors.As(err, &exit):
		t.Fatalf("after the second SIGINT: %v, want the child ended", err)
	case ignored && exit.ExitCode() != 130:
		t.Fatalf("after the second SIGINT to a child that ignored SIGINT at start: %v, want exit status 130", err)
	case !ignored && exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGINT:
		t.Fatalf("after the second SIGINT: %v, want the child ended by SIGINT (the timeout would kill it instead)", err)
	}
}

// A misspelled subcommand is an error, not the parent's help with exit 0:
// spate schema check is a CI gate, and a typo must not pass it.
func TestMisspelledSubcommandsFail(t *testing.T) {
	for _, args := range [][]string{
		{"schema", "chekc", "a.binpb", "b.binpb"}, {"keys", "nwe", "x"}, {"bench", "edg"},
		{"dlq", "lst"}, {"replay", "projecton", "x"}, {"offsets", "sho"},
	} {
		if _, _, err := runSpate(context.Background(), args...); err == nil || !strings.Contains(err.Error(), `unknown command "`+args[1]+`"`) {
			t.Errorf("spate %s: error %v, want unknown command %q", strings.Join(args, " "), err, args[1])
		}
	}
}

// spate keys new prints an entry the edge loads, under the name given,
// whatever it holds.
func TestKeysNewEntryLoads(t *testing.T) {
	for _, name := range []string{"checkout", "team: billing", "#ops", `say "hi"`} {
		out, _, err := runSpate(context.Background(), "keys", "new", name)
		if err != nil {
			t.Fatal(err)
		}
		entry := out[strings.Index(out, "  - name:"):]
		file := "keys:\n" + entry
		if _, err := edge.LoadKeys("keys.yaml", []byte(file)); err != nil {
			t.Errorf("keys new %q: the entry does not load: %v\n%s", name, err, file)
			continue
		}
		var parsed struct{ Keys []struct{ Name string } }
		if err := yaml.Unmarshal([]byte(file), &parsed); err != nil || len(parsed.Keys) != 1 || parsed.Keys[0].Name != name {
			t.Errorf("keys new %q: the entry names %+v (%v)", name, parsed.Keys, err)
		}
	}
}

// Where a replay or a tail starts is taken from the command line alone:
// SPATE_FROM, left in the shell for one of them, is not where a rebuild
// starts. Each command here then fails on what comes after: an unreachable
// server, or a missing flag.
func TestFromIsNotTakenFromTheEnvironment(t *testing.T) {
	t.Setenv("SPATE_FROM", "bogus-position")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"replay", "projection", "event_log", "--postgres-url", "postgres://127.0.0.1:1/none", "--kafka-brokers", "127.0.0.1:1"},
		{"replay", "stream", "--to-topic", "copy", "--kafka-brokers", "127.0.0.1:1"},
		{"tail", "s", "--redis-url", "redis://127.0.0.1:1/0"},
	} {
		_, _, err := runSpate(ctx, args...)
		if err == nil || strings.Contains(err.Error(), "bogus-position") {
			t.Errorf("spate %s with SPATE_FROM set: %v, want an error that is not about SPATE_FROM", strings.Join(args, " "), err)
		}
	}
}
