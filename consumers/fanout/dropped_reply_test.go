package fanout_test

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

// replyDropper is a TCP proxy to Redis that lets the first script call that
// ran (not a NOSCRIPT) reach Redis, then closes the client's connection
// instead of passing the reply on: the write happened, the client cannot
// know.
type replyDropper struct {
	ln      net.Listener
	target  string
	dropped atomic.Bool
	wg      sync.WaitGroup
}

func newReplyDropper(t *testing.T, target string) *replyDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &replyDropper{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *replyDropper) accept() {
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

func TestLostReplyIsRetriedWithoutDuplicates(t *testing.T) {
	t.Parallel()
	opts, err := redis.ParseURL(spatetest.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	direct := redis.NewClient(opts)
	defer direct.Close()

	proxy := newReplyDropper(t, opts.Addr)
	viaProxy := *opts
	viaProxy.Addr = proxy.ln.Addr().String()
	rdb := redis.NewClient(&viaProxy) // go-redis retries on a lost connection by default
	defer rdb.Close()
	w, err := fanout.New(rdb, schemas.Builtin(), fanout.Config{Prefix: spatetest.KeyPrefix(t)})
	if err != nil {
		t.Fatal(err)
	}

	if err := w.Apply(context.Background(), batch(records(t, 0, 10))); err != nil {
		t.Fatalf("Apply after a lost reply: %v (go-redis should have retried)", err)
	}
	if !proxy.dropped.Load() {
		t.Fatal("the proxy dropped no reply: the test proved nothing")
	}
	wantIDs(t, ids(t, direct, w.Stream("shop.order.placed.v1")), 0, 10, 2)
	wantIDs(t, ids(t, direct, w.Stream("shop.order.cancelled.v1")), 1, 10, 2)
}
