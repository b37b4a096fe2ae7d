package projection

// SetHook makes p call fn at the points of a batch's transaction named in
// Projector.hook: "applied" (projections applied, offset not yet stored,
// not committed) and "committed".
func SetHook(p *Projector, fn func(point string)) { p.hook = fn }

// DeadLettersSince starts the comment of spate_dead_letters.
const DeadLettersSince = deadLettersSince
