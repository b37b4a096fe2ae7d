package edge

import (
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// readAll reads the whole body whatever the size it is told, in one buffer
// when told the right one.
func TestReadAll(t *testing.T) {
	body := strings.Repeat("0123456789", 1000)
	for _, size := range []int64{0, 1, int64(len(body)) - 1, int64(len(body)), int64(len(body)) + 1, 3 * int64(len(body))} {
		got, err := readAll(iotest.HalfReader(strings.NewReader(body)), size)
		if err != nil || string(got) != body {
			t.Errorf("size %d: got %d bytes (%v), want the %d of the body", size, len(got), err, len(body))
		}
	}
	allocs := func(read func() error) float64 {
		return testing.AllocsPerRun(10, func() {
			if err := read(); err != nil {
				t.Fatal(err)
			}
		})
	}
	sized := allocs(func() error { _, err := readAll(strings.NewReader(body), int64(len(body))); return err })
	growing := allocs(func() error { _, err := io.ReadAll(strings.NewReader(body)); return err })
	if sized*2 > growing {
		t.Errorf("told the size: %v allocations, want well under io.ReadAll's %v", sized, growing)
	}
	if _, err := readAll(iotest.ErrReader(iotest.ErrTimeout), 10); err != iotest.ErrTimeout {
		t.Errorf("a failing read: %v, want its error", err)
	}
}

// A body is read into a buffer of the length it claims only when that
// length was charged against the in-flight cap before it came: a client
// claiming megabytes with a Content-Encoding of identity, and sending
// nothing, holds no more memory than it sends.
func TestUnchargedBodyIsReadAsItComes(t *testing.T) {
	s := &Server{}
	s.cfg.MaxBodyBytes, s.cfg.MaxInflightBytes = 8<<20, 16<<20
	r := httptest.NewRequest(http.MethodPost, "/v1/events", strings.NewReader("[]"))
	r.ContentLength = 8 << 20
	r.Header.Set("Content-Encoding", "identity")
	c, ok := s.chargeBody(r)
	if !ok || c.charged != 0 {
		t.Fatalf("charged %d (%v) up front for a body with a Content-Encoding, want nothing", c.charged, ok)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	body, err := readBody(httptest.NewRecorder(), r, s.cfg.MaxBodyBytes, c)
	runtime.ReadMemStats(&after)
	if err != nil || string(body) != "[]" {
		t.Fatalf("read %q (%v), want the body", body, err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("reading a 2-byte body claiming 8 MiB allocated %d bytes, want about what came", grew)
	}
}
