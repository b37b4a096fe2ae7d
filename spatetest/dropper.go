package spatetest

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// ReplyDropper is a TCP proxy to Redis that lets the first write holding
// a given command reach Redis, then closes the client's connection instead
// of passing the reply on (unless the reply is a NOSCRIPT, which ran
// nothing): the command ran, the client cannot know. A client that retries
// runs it a second time.
type ReplyDropper struct {
	ln      net.Listener
	target  string
	match   []byte
	dropped atomic.Bool
	wg      sync.WaitGroup
}

// Commands for NewReplyDropper to match, as they appear, upper-cased, in
// what a client writes.
var (
	// DropScriptReply matches EVAL and EVALSHA.
	DropScriptReply = []byte("EVAL")
	// DropSetNXReply matches a SET with NX (among other commands).
	DropSetNXReply = []byte("\r\nNX\r\n")
)

// NewReplyDropper starts a proxy to the Redis at target (host:port) on
// 127.0.0.1, closed at cleanup, that drops the reply to the first write
// holding match.
func NewReplyDropper(t testing.TB, target string, match []byte) *ReplyDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ReplyDropper{ln: ln, target: target, match: match}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.wg.Wait()
	})
	return p
}

// Addr is the proxy's address.
func (p *ReplyDropper) Addr() string { return p.ln.Addr().String() }

// Dropped reports whether a reply was dropped.
func (p *ReplyDropper) Dropped() bool { return p.dropped.Load() }

func (p *ReplyDropper) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		var sawMatch atomic.Bool
		p.wg.Add(2)
		go p.relay(s, c, func(b []byte) bool { // client to Redis
			if bytes.Contains(bytes.ToUpper(b), p.match) {
				sawMatch.Store(true)
			}
			return true
		})
		go p.relay(c, s, func(b []byte) bool { // Redis to client
			return !sawMatch.Load() || bytes.HasPrefix(b, []byte("-NOSCRIPT")) || !p.dropped.CompareAndSwap(false, true)
		})
	}
}

// relay copies what from reads to to, each read passed on only if pass
// says so; otherwise, and when from ends, it closes both: a reply not
// passed on is lost.
func (p *ReplyDropper) relay(to, from net.Conn, pass func([]byte) bool) {
	defer p.wg.Done()
	defer to.Close()
	defer from.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			if !pass(buf[:n]) {
				return
			}
			to.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}
