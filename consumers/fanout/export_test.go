package fanout

// SetHook makes w call fn at the points of Apply named in Writer.hook:
// "mid-batch", after a chunk of a batch was stored and before the next.
func SetHook(w *Writer, fn func(point string)) { w.hook = fn }
