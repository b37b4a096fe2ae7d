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
		go func() { // client to Redis
			defer p.wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if bytes.Contains(bytes.ToUpper(buf[:n]), p.match) {
						sawMatch.Store(true)
					}
					s.Write(buf[:n])
				}
				if err != nil {
					s.Close()
					return
				}
			}
		}()
		go func() { // Redis to client
			defer p.wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 {
					if sawMatch.Load() && !bytes.HasPrefix(buf[:n], []byte("-NOSCRIPT")) && p.dropped.CompareAndSwap(false, true) {
						c.Close() // the reply is lost
						s.Close()
						return
					}
					c.Write(buf[:n])
				}
				if err != nil {
					c.Close()
					return
				}
			}
		}()
	}
}
