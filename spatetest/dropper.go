package spatetest

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// ReplyDropper is a TCP proxy to Redis that lets the first script call that
// ran (not a NOSCRIPT) reach Redis, then closes the client's connection
// instead of passing the reply on: the write happened, the client cannot
// know. A client that retries runs the script a second time.
type ReplyDropper struct {
	ln      net.Listener
	target  string
	dropped atomic.Bool
	wg      sync.WaitGroup
}

// NewReplyDropper starts a proxy to the Redis at target (host:port) on
// 127.0.0.1, closed at cleanup.
func NewReplyDropper(t testing.TB, target string) *ReplyDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ReplyDropper{ln: ln, target: target}
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
		var sawScript atomic.Bool
		p.wg.Add(2)
		go func() { // client to Redis
			defer p.wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if bytes.Contains(bytes.ToUpper(buf[:n]), []byte("EVAL")) {
						sawScript.Store(true)
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
					if sawScript.Load() && !bytes.HasPrefix(buf[:n], []byte("-NOSCRIPT")) && p.dropped.CompareAndSwap(false, true) {
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
