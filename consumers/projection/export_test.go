package projection

// SetHook makes p call fn at the points of a batch's transaction named in
// Projector.hook: "applied" (projections applied, offset not yet stored,
// not committed) and "committed".
func SetHook(p *Projector, fn func(point string)) { p.hook = fn }

// DeadLettersSince starts the comment of spate_dead_letters.
const DeadLettersSince = deadLettersSince

// FailuresCounted returns how many events have failures counted towards
// poison.
func FailuresCounted(p *Projector) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.failures)
}
