package consumers

import "time"

// SetNow makes g read the time from now, for tests that move the clock on.
func SetNow(g *Group, now func() time.Time) { g.now = now }
