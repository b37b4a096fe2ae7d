package consumers

import (
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// NewWithClock is New with the group reading the time from now, for tests
// that move the clock on.
func NewWithClock(h Handler, cfg Config, now func() time.Time, opts ...kgo.Opt) (*Group, error) {
	return newGroup(h, cfg, now, opts...)
}
