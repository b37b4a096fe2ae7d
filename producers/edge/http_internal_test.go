package edge

import (
	"io"
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
