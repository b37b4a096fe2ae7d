package spatetest

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestServerStartFailureReachesEveryCaller(t *testing.T) {
	// Main runs this test binary, so get may start servers; the
	// environment names none.
	var starts atomic.Int32
	cause := errors.New("no binary")
	s := server{env: "SPATE_TEST_UNSET_FOR_THIS_TEST", start: func(context.Context) (string, func() error, error) {
		starts.Add(1)
		return "", nil, cause
	}}

	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { _, errs[i] = s.get() })
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, cause) {
			t.Errorf("caller %d: got %v, want %v", i, err, cause)
		}
	}
	if got := starts.Load(); got != 1 {
		t.Errorf("starts: got %d, want 1", got)
	}
	if err := s.shutdown(); err != nil {
		t.Errorf("shutdown after failed start: %v", err)
	}
}

func TestServerFromEnvironment(t *testing.T) {
	t.Setenv("SPATE_TEST_SOMETHING", "redis://example:6379/0")
	s := server{env: "SPATE_TEST_SOMETHING", start: func(context.Context) (string, func() error, error) {
		t.Error("started a server although the environment names one")
		return "", nil, errors.New("unreachable")
	}}
	got, err := s.get()
	if err != nil || got != "redis://example:6379/0" {
		t.Errorf("get: got %q, %v, want the environment's URL", got, err)
	}
}

func TestDatabaseName(t *testing.T) {
	valid := regexp.MustCompile(`^t_[a-z0-9_]{0,40}_[0-9a-f]{8}$`)
	for _, test := range []string{
		"TestX",
		"TestX/sub_test#01",
		`Weird Name/With-Ünïcode "quotes"; drop`,
		strings.Repeat("long", 30),
		"",
	} {
		got := databaseName(test)
		if !valid.MatchString(got) || len(got) > 63 {
			t.Errorf("databaseName(%q): got %q, want it to match %s", test, got, valid)
		}
		if again := databaseName(test); again == got {
			t.Errorf("databaseName(%q) twice: got %q both times, want unique names", test, got)
		}
	}
}
