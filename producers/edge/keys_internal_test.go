package edge

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWildcard checks wildcard against a regular expression of the same
// pattern, on chosen and on random patterns and strings; and that patterns
// of many stars against long strings, which took exponential time with a
// matcher that tried every split, finish.
func TestWildcard(t *testing.T) {
	like := func(pattern string) *regexp.Regexp {
		parts := strings.Split(pattern, "*")
		for i, p := range parts {
			parts[i] = regexp.QuoteMeta(p)
		}
		return regexp.MustCompile(`(?s)\A` + strings.Join(parts, ".*") + `\z`)
	}
	check := func(pattern, s string) {
		t.Helper()
		if got, want := wildcard(pattern, s), like(pattern).MatchString(s); got != want {
			t.Fatalf("wildcard(%q, %q) = %v, want %v", pattern, s, got, want)
		}
	}
	for _, c := range [][2]string{
		{"", ""}, {"", "a"}, {"*", ""}, {"*", "/shop/a/b"}, {"**", "x"},
		{"/shop/*", "/shop/checkout"}, {"/shop/*", "/shop"}, {"/shop/*", "/shop/"}, {"/shop/*", "/billing/shop/x"},
		{"*/checkout", "/shop/checkout"}, {"*/checkout", "/shop/checkout/x"},
		{"a*b*c", "abc"}, {"a*b*c", "aXbYc"}, {"a*b*c", "aXcYb"}, {"a*b*c", "abcc"}, {"a*b*c", "acb"},
		{"*ab", "aab"}, {"*aab", "aaab"}, {"a*aa*a", "aaaa"}, {"a*aa*a", "aaa"},
	} {
		check(c[0], c[1])
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		word := func(alphabet string, n int) string {
			b := make([]byte, r.IntN(n+1))
			for i := range b {
				b[i] = alphabet[r.IntN(len(alphabet))]
			}
			return string(b)
		}
		check(word("ab*", 8), word("ab", 10))
	}
	long := strings.Repeat("a", 5000)
	for _, pattern := range []string{strings.Repeat("*a", 30) + "*b", strings.Repeat("a*", 30) + "b"} {
		check(pattern, long)
	}
}

// TestRefusedRequestsSpendNoTokens: requests refused 429 together leave
// the bucket as they found it, and say how long to wait for their events.
func TestRefusedRequestsSpendNoTokens(t *testing.T) {
	ks, err := LoadKeys("keys.yaml", []byte("keys:\n  - name: k\n    sha256: "+HashKey("x")+"\n    rate: 1\n    burst: 10\n"))
	if err != nil {
		t.Fatal(err)
	}
	k, now := ks.keys[0], time.Now()
	if _, ok := k.admit(10, now); !ok {
		t.Fatal("a burst's worth of events refused")
	}
	var wg sync.WaitGroup
	var wrong atomic.Int64
	for range 8 {
		wg.Go(func() {
			for range 10000 {
				wait, ok := k.admit(5, now)
				if ok || wait != 5*time.Second {
					wrong.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := wrong.Load(); n != 0 {
		t.Errorf("%d requests over the rate admitted, or not told to wait 5 s", n)
	}
	if tokens := k.limiter.TokensAt(now); tokens != 0 {
		t.Errorf("%g tokens after refusals alone, want 0 as before them", tokens)
	}
}

// TestRefusalsAlwaysWait: a request over its key's burst, which the keys
// file lowered after the request was checked against it, is told to wait,
// so that its 429 has a Retry-After.
func TestRefusalsAlwaysWait(t *testing.T) {
	ks, err := LoadKeys("keys.yaml", []byte("keys:\n  - name: k\n    sha256: "+HashKey("x")+"\n    rate: 100\n    burst: 5\n"))
	if err != nil {
		t.Fatal(err)
	}
	wait, ok := ks.keys[0].admit(10, time.Now())
	if ok {
		t.Fatal("10 events admitted past a burst of 5")
	}
	if got := retryAfter(wait); wait <= 0 || got != "1" {
		t.Errorf("wait %v, Retry-After %q; want a wait, of 1 s", wait, got)
	}
}
