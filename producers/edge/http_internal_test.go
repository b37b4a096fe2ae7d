package edge

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"unicode/utf8"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/proto/spate/v1/spatev1connect"
	"github.com/spate-io/spate/schemas"
	"google.golang.org/protobuf/proto"
)

// readAll reads the whole body whatever the size it is told, in one buffer
// when told the right one.
func TestReadAll(t *testing.T) {
	body := strings.Repeat("0123456789", 1000)
	for _, size := range []int64{0, 1, int64(len(body)) - 1, int64(len(body)), int64(len(body)) + 1, 3 * int64(len(body))} {
		got, err := readAll(iotest.HalfReader(strings.NewReader(body)), size)
		if err != nil || string(got) != body {
			t.Errorf("size %d: got %d bytes (%v), want the %d of the body", size, len(got), err, len(body))
		}
	}
	allocs := func(read func() error) float64 {
		return testing.AllocsPerRun(10, func() {
			if err := read(); err != nil {
				t.Fatal(err)
			}
		})
	}
	sized := allocs(func() error { _, err := readAll(strings.NewReader(body), int64(len(body))); return err })
	growing := allocs(func() error { _, err := io.ReadAll(strings.NewReader(body)); return err })
	if sized*2 > growing {
		t.Errorf("told the size: %v allocations, want well under io.ReadAll's %v", sized, growing)
	}
	if _, err := readAll(iotest.ErrReader(iotest.ErrTimeout), 10); err != iotest.ErrTimeout {
		t.Errorf("a failing read: %v, want its error", err)
	}
}

// A body is read into a buffer of the length it claims only when that
// length was charged against the in-flight cap before it came: a client
// claiming megabytes with a Content-Encoding of identity, and sending
// nothing, holds no more memory than it sends.
func TestUnchargedBodyIsReadAsItComes(t *testing.T) {
	s := &Server{}
	s.cfg.MaxBodyBytes, s.cfg.MaxInflightBytes = 8<<20, 16<<20
	r := httptest.NewRequest(http.MethodPost, "/v1/events", strings.NewReader("[]"))
	r.ContentLength = 8 << 20
	r.Header.Set("Content-Encoding", "identity")
	c, err := s.chargeBody(r, s.cfg.MaxBodyBytes)
	if err != nil || c.charged != 0 {
		t.Fatalf("charged %v (%v) up front for a body with a Content-Encoding, want nothing", c, err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	body, err := readBody(httptest.NewRecorder(), r, s.cfg.MaxBodyBytes, c)
	runtime.ReadMemStats(&after)
	if err != nil || string(body) != "[]" {
		t.Fatalf("read %q (%v), want the body", body, err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("reading a 2-byte body claiming 8 MiB allocated %d bytes, want about what came", grew)
	}
}

// TestChunkedBodiesAndTheCap: a body of unknown length is charged in
// steps as it is read. One under the cap is read though a step more would
// pass the cap (alone, or beside another body); one that alone is over the
// cap is refused as too large: it could never be taken. None of these
// turns the edge unready, as nothing that fits was turned away; one
// refused for what is in flight beside it does, for a moment.
func TestChunkedBodiesAndTheCap(t *testing.T) {
	for _, c := range []struct {
		name             string
		cap, other, size int64
		refused          int // 0: read
	}{
		{"alone, under the cap but a step from it", 100 << 10, 0, 70 << 10, 0},
		{"beside another, a step over what is free", 1 << 20, 1<<20 - 40<<10, 32 << 10, 0},
		{"alone, over the cap", 1 << 20, 0, 2 << 20, http.StatusRequestEntityTooLarge},
		{"beside another, over what is free", 1 << 20, 512 << 10, 768 << 10, http.StatusServiceUnavailable},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := New(nil, schemas.Builtin(), Config{MaxInflightBytes: c.cap}) // the body cap lowered to it
			s.inflightBytes.Store(c.other)
			r := httptest.NewRequest(http.MethodPost, "/v1/events", io.MultiReader(bytes.NewReader(make([]byte, c.size))))
			r.ContentLength = -1
			ch, _ := s.chargeBody(r, s.cfg.MaxBodyBytes)
			_, err := readBody(httptest.NewRecorder(), r, s.cfg.MaxBodyBytes, ch)
			if ref := (*refusal)(nil); c.refused == 0 && err != nil || c.refused != 0 && (!errors.As(err, &ref) || ref.status != c.refused) {
				t.Errorf("read: %v, want refused %d (0: read)", err, c.refused)
			}
			ch.release()
			s.inflightBytes.Add(-c.other)
			if err := s.Ready(t.Context()); (err == nil) != (c.refused != http.StatusServiceUnavailable) {
				t.Errorf("Ready = %v once the body is answered, want unready only after a 503", err)
			}
		})
	}
}

// TestTakeNeverAddsWhatCannotFit: a request that cannot fit a cap, ever or
// beside what is held, is refused without being added to the count, even
// for a moment: a request that fits, beside it, is not turned away.
func TestTakeNeverAddsWhatCannotFit(t *testing.T) {
	const limit = 1 << 20
	for _, c := range []struct {
		name       string
		held, over int64
	}{
		{"never fits", 0, 2 * limit},
		{"fits alone, not beside what is held", limit / 2, limit/2 + 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &Server{}
			var count atomic.Int64
			count.Store(c.held)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
						if s.take(&count, c.over, limit, true) {
							t.Error("a take over the cap taken")
							return
						}
					}
				}
			})
			refused := 0
			for range 200_000 {
				if !s.take(&count, 1, limit, true) {
					refused++
					continue
				}
				count.Add(-1)
			}
			close(stop)
			wg.Wait()
			if refused > 0 {
				t.Errorf("%d of 200000 one-byte takes refused beside one that cannot fit, want none", refused)
			}
		})
	}
}

// TestConnectUnaryEncodings: a Connect unary body in each encoding is
// answered in the right code, gzip ones decompressed by the edge, with a
// gzip answer when the client takes one, and the body's charge given back.
// The event's type is unknown: nothing reaches Kafka (there is no client).
func TestConnectUnaryEncodings(t *testing.T) {
	s := New(nil, schemas.Builtin(), Config{MaxBodyBytes: 64 << 10, MaxInflightBytes: 1 << 20})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	gzipped := func(b []byte) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	bad, err := proto.Marshal(&spatev1.PublishRequest{Events: []*spatev1.Event{{Id: "x", Source: "/s", Type: "no.such.type.v1"}}})
	if err != nil {
		t.Fatal(err)
	}
	big, err := proto.Marshal(&spatev1.PublishRequest{Events: []*spatev1.Event{{Id: "x", Source: "/s", Type: "no.such.type.v1", Data: make([]byte, 100<<10)}}})
	if err != nil {
		t.Fatal(err)
	}
	truncated := gzipped(bad)
	truncated = truncated[:len(truncated)-6]
	for _, c := range []struct {
		name, ct, enc string
		body          []byte
		wantStatus    int
		wantCode      string
	}{
		{"gzip", "application/proto", "gzip", gzipped(bad), 400, "invalid_argument"},
		{"GZIP upper case", "Application/Proto", "GZIP", gzipped(bad), 400, "invalid_argument"},
		{"identity", "application/proto", "identity", bad, 400, "invalid_argument"},
		{"none", "application/proto", "", bad, 400, "invalid_argument"},
		{"br", "application/proto", "br", bad, 501, "unimplemented"},
		{"unknown", "application/proto", "x-foo", bad, 501, "unimplemented"},
		{"not gzip", "application/proto", "gzip", []byte("not gzip at all"), 400, "invalid_argument"},
		{"truncated gzip", "application/proto", "gzip", truncated, 400, "invalid_argument"},
		{"decompressed over MaxBodyBytes", "application/proto", "gzip", gzipped(big), 429, "resource_exhausted"},
		{"JSON, gzip", "application/json", "gzip", gzipped([]byte(`{"events":[{"id":"x","source":"/s","type":"no.such.type.v1"}]}`)), 400, "invalid_argument"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := http.NewRequest(http.MethodPost, srv.URL+spatev1connect.IngestServicePublishProcedure, bytes.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			r.Header.Set("Content-Type", c.ct)
			if c.enc != "" {
				r.Header.Set("Content-Encoding", c.enc)
			}
			r.Header.Set("Accept-Encoding", "gzip")
			tr := &http.Transport{DisableCompression: true}
			defer tr.CloseIdleConnections()
			resp, err := tr.RoundTrip(r)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.Header.Get("Content-Encoding") == "gzip" {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
			}
			if resp.StatusCode != c.wantStatus || !bytes.Contains(body, []byte(`"code":"`+c.wantCode+`"`)) {
				t.Errorf("%d %s, want %d %s", resp.StatusCode, body, c.wantStatus, c.wantCode)
			}
			if n := s.inflightBytes.Load(); n != 0 {
				t.Errorf("%d in-flight bytes after the answer, want 0", n)
			}
		})
	}
}

// FuzzReceiptsJSON: the receipts a JSON request gets read as what they
// are, for any id and topic, and they are what encoding/json writes but
// for its escapes: of <, > and &, and of U+2028 and U+2029.
func FuzzReceiptsJSON(f *testing.F) {
	f.Add("e1", "spate.events", int32(0), int64(0), "e2")
	f.Add(`"<a&b>"\`, "t", int32(11), int64(1)<<62, "\u2028\x00é")
	f.Add("", "t", int32(-1), int64(-1), "\x7f")
	f.Fuzz(func(t *testing.T, id, topic string, partition int32, offset int64, id2 string) {
		if !utf8.ValidString(id) || !utf8.ValidString(topic) || !utf8.ValidString(id2) {
			t.Skip("ids and topics are valid UTF-8")
		}
		rs := []*spatev1.Receipt{{Id: id, Topic: topic, Partition: partition, Offset: offset}, {Id: id2, Topic: topic, Partition: partition + 1, Offset: offset - 1}}
		type receiptJSON struct {
			ID        string `json:"id"`
			Topic     string `json:"topic"`
			Partition int32  `json:"partition"`
			Offset    int64  `json:"offset"`
		}
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		out := struct {
			Receipts []receiptJSON `json:"receipts"`
		}{}
		for _, r := range rs {
			out.Receipts = append(out.Receipts, receiptJSON{r.Id, r.Topic, r.Partition, r.Offset})
		}
		if err := enc.Encode(out); err != nil {
			t.Fatal(err)
		}
		got := appendReceiptsJSON(nil, rs)
		if !strings.ContainsAny(id+topic+id2, "\u2028\u2029") && !bytes.Equal(got, want.Bytes()) {
			t.Errorf("appendReceiptsJSON:\n%s\nencoding/json:\n%s", got, want.Bytes())
		}
		var read struct {
			Receipts []receiptJSON `json:"receipts"`
		}
		if err := json.Unmarshal(got, &read); err != nil || !reflect.DeepEqual(read, out) {
			t.Errorf("appendReceiptsJSON:\n%s\nreads as %+v (%v), want %+v", got, read, err, out)
		}
	})
}
