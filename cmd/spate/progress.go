package main

import (
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progressEvery is how often a long command logs its progress when its
// output is not a terminal.
var progressEvery = 5 * time.Second

// progress shows how far a long command has got: on a terminal a bar with
// done/total, rate and ETA; otherwise a plain log line every progressEvery
// and one at the end.
type progress struct {
	label string
	log   *slog.Logger
	start time.Time
	done  atomic.Int64
	total atomic.Int64
	bar   *progressbar.ProgressBar // on a terminal

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// startProgress starts showing progress toward total (events, say) on w,
// a terminal, or else as lines in log. The caller calls finish.
func startProgress(w io.Writer, log *slog.Logger, label string, total int64) *progress {
	p := &progress{label: label, log: log, start: time.Now(), stop: make(chan struct{})}
	p.total.Store(total)
	if isTerminal(w) {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(label),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("events"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { io.WriteString(w, "\n") }),
		)
		return p
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.logLine("progress")
			}
		}
	}()
	return p
}

// add counts n more done.
func (p *progress) add(n int) {
	p.done.Add(int64(n))
	if p.bar != nil {
		p.bar.Add(n)
	}
}

// setTotal changes the total, as when the head of a topic moves on.
func (p *progress) setTotal(total int64) {
	p.total.Store(total)
	if p.bar != nil {
		p.bar.ChangeMax64(total)
	}
}

// finish stops showing progress and says how it ended.
func (p *progress) finish() {
	p.once.Do(func() {
		close(p.stop)
		p.wg.Wait()
		if p.bar != nil && !p.bar.IsFinished() {
			p.bar.Exit()
		}
		p.logLine("done")
	})
}

func (p *progress) logLine(msg string) {
	done, total := p.done.Load(), p.total.Load()
	elapsed := time.Since(p.start)
	rate := float64(done) / elapsed.Seconds()
	attrs := []any{"task", p.label, "done", done, "total", total, "rate_per_s", int64(rate), "elapsed", elapsed.Round(time.Millisecond)}
	if msg == "progress" && rate > 0 && total > done {
		attrs = append(attrs, "eta", time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second))
	}
	p.log.Info(msg, attrs...)
}
