package edge

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"google.golang.org/protobuf/proto"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// Content types taken by POST /v1/events.
const (
	contentTypeEvent    = "application/cloudevents+json"
	contentTypeBatch    = "application/cloudevents-batch+json"
	contentTypeProtobuf = "application/x-protobuf"
	contentTypeProblem  = "application/problem+json"
)

// Problem is an RFC 9457 problem details body.
type Problem struct {
	Type   string       `json:"type"`
	Title  string       `json:"title"`
	Status int          `json:"status"`
	Detail string       `json:"detail,omitempty"`
	Errors []FieldError `json:"errors,omitempty"`
}

func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	key, err := s.authenticate(r.Context(), r.Header) // before reading what may be a large body
	if err != nil {
		s.discardUnread(r)
		writeRefusal(w, err)
		return
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case contentTypeEvent, contentTypeBatch, contentTypeProtobuf, "application/protobuf":
	default:
		s.discardUnread(r)
		writeProblem(w, http.StatusUnsupportedMediaType, "unsupported-media-type", "Unsupported media type",
			fmt.Sprintf("Content-Type %q is not taken; use %s, %s or %s", ct, contentTypeEvent, contentTypeBatch, contentTypeProtobuf), nil)
		return
	}
	// The body's bytes count against the in-flight cap until the answer.
	c, err := s.chargeBody(r, s.cfg.MaxBodyBytes)
	if err != nil {
		if tooLarge(err) {
			s.discardTooLarge(r)
		}
		writeRefusal(w, err)
		return
	}
	defer c.release()
	body, err := readBody(w, r, s.cfg.MaxBodyBytes, c)
	if err != nil {
		c.release() // what is discarded is not held
		s.discardBody(r)
		writeRefusal(w, err)
		return
	}

	var evs []*spatev1.Event
	var errs []FieldError
	switch ct {
	case contentTypeEvent:
		// One parse: malformed JSON is told apart from JSON that is not
		// an event object.
		je, err := readJSONEvent(body)
		if malformedJSON(err) {
			writeProblem(w, http.StatusBadRequest, "malformed-json", "Malformed JSON", "the body is not valid JSON: "+jsonErr(err), nil)
			return
		}
		ev, e := eventFromJSON(0, je, err)
		evs, errs = []*spatev1.Event{ev}, e
	case contentTypeBatch:
		if jes, ok := readJSONBatch(body, s.cfg.MaxEvents); ok {
			evs = make([]*spatev1.Event, len(jes))
			for i, je := range jes {
				ev, e := eventFromJSON(i, je, nil)
				evs[i], errs = ev, append(errs, e...)
			}
			break
		}
		// Something is wrong: the events are read one by one, to tell what.
		raws, err := splitArray(body, s.cfg.MaxEvents)
		if errors.Is(err, errTooManyEvents) {
			writeProblem(w, http.StatusBadRequest, "invalid-events", "Invalid events",
				fmt.Sprintf("the request holds more than %d events; at most %d are taken", s.cfg.MaxEvents, s.cfg.MaxEvents), nil)
			return
		}
		if err != nil {
			writeProblem(w, http.StatusBadRequest, "malformed-json", "Malformed JSON", "the body must be a JSON array of CloudEvents: "+jsonErr(err), nil)
			return
		}
		evs = make([]*spatev1.Event, len(raws))
		for i, raw := range raws {
			je, err := readJSONEvent(raw)
			if malformedJSON(err) {
				writeProblem(w, http.StatusBadRequest, "malformed-json", "Malformed JSON",
					fmt.Sprintf("event %d is not valid JSON: %s", i, jsonErr(err)), nil)
				return
			}
			ev, e := eventFromJSON(i, je, err)
			evs[i], errs = ev, append(errs, e...)
		}
	default:
		if sh, err := protobufShape(body); err == nil { // before decoding each
			if err := sh.check(s.cfg.MaxEvents); err != nil {
				writeProblem(w, http.StatusBadRequest, "invalid-events", "Invalid events", err.Error(), nil)
				return
			}
		}
		var req spatev1.PublishRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			writeProblem(w, http.StatusBadRequest, "malformed-protobuf", "Malformed protobuf", "the body is not a spate.v1.PublishRequest", nil)
			return
		}
		evs = req.Events
	}
	if len(errs) > 0 {
		errs = s.alsoInvalid(evs, errs)
		writeRefusal(w, &refusal{status: http.StatusBadRequest, kind: "invalid-events", title: "Invalid events",
			detail: fmt.Sprintf("%d of %d events are invalid; none was published", countEvents(errs), len(evs)), errs: errs})
		return
	}
	rs, err := s.publish(r.Context(), key, evs)
	if err != nil {
		writeRefusal(w, err)
		return
	}
	writeReceipts(w, ct, rs)
}

// errTooManyEvents is splitArray's error for an array of more than max.
var errTooManyEvents = errors.New("too many events")

// splitArray returns the values of the JSON array body, each to be read
// strictly on its own, counting them as it goes: an array of more than max
// fails with errTooManyEvents before the rest is split out. It does not
// track member names, which costs much for objects of many.
func splitArray(body []byte, max int) ([]jsontext.Value, error) {
	dec := jsontext.NewDecoder(bytes.NewReader(body), jsontext.AllowDuplicateNames(true))
	if tok, err := dec.ReadToken(); err != nil {
		return nil, err
	} else if tok.Kind() != '[' {
		return nil, fmt.Errorf("found %s, not an array", tok.Kind())
	}
	var raws []jsontext.Value
	for dec.PeekKind() != ']' {
		if len(raws) == max {
			return nil, errTooManyEvents
		}
		v, err := dec.ReadValue()
		if err != nil {
			return nil, err
		}
		raws = append(raws, v.Clone())
	}
	if _, err := dec.ReadToken(); err != nil { // the closing bracket
		return nil, err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		return nil, cmp.Or(err, errors.New("data after the array"))
	}
	return raws, nil
}

// discardBody reads what is left of a refused request's body, up to the body
// cap, before the answer: closing a connection with unread data resets it,
// and the client, still sending, would see a broken pipe instead.
func (s *Server) discardBody(r *http.Request) {
	io.Copy(io.Discard, io.LimitReader(r.Body, s.cfg.MaxBodyBytes))
}

// discardUnread is discardBody for a request refused before its body was
// read, except one that waits for 100 Continue before sending it: reading
// would ask it for the body. Not asked, it gets the answer at once, and
// the connection closes after it.
func (s *Server) discardUnread(r *http.Request) {
	s.discardUnreadUpTo(r, s.cfg.MaxBodyBytes)
}

// discardTooLarge is discardUnread for a body refused for the length it
// declares, up to twice the body cap: as much as reading it up to the cap,
// then discarding the rest, would take. A client that sends its whole body
// before it reads gets the answer, not a reset, for bodies up to that.
func (s *Server) discardTooLarge(r *http.Request) {
	s.discardUnreadUpTo(r, 2*s.cfg.MaxBodyBytes)
}

func (s *Server) discardUnreadUpTo(r *http.Request, n int64) {
	if !strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		io.Copy(io.Discard, io.LimitReader(r.Body, n))
	}
}

// readBody reads a request body of at most limit bytes, decompressing a
// gzip one (Content-Encoding: gzip), whose decompressed size is capped at
// limit too: a gzip bomb costs at most limit bytes of memory.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, c *charge) ([]byte, error) {
	tooLarge := func(what string) error { return bodyTooLarge(what, limit) }
	var in io.Reader = http.MaxBytesReader(w, r.Body, limit)
	enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding")))
	switch enc {
	case "", "identity":
	case "gzip":
		gz, err := gzip.NewReader(in)
		if err != nil {
			if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
				return nil, tooLarge("body")
			}
			return nil, &refusal{status: http.StatusBadRequest, kind: "unreadable-body", title: "Unreadable body", detail: "the body is not gzip"}
		}
		defer gz.Close()
		in = io.LimitReader(gz, limit+1)
	default:
		return nil, &refusal{status: http.StatusUnsupportedMediaType, kind: "unsupported-encoding", title: "Unsupported content encoding",
			detail: fmt.Sprintf("Content-Encoding %q is not taken; use gzip or none", enc)}
	}
	// A body charged for its whole length before it came (chargeBody) is
	// read into one buffer of that length; others as they come, charged.
	// A gzip one is refused at its first byte past limit, uncharged.
	body, err := readAll(&chargedReader{r: in, c: c, limit: limit, over: errOverCap, tooLarge: errTooLarge}, c.charged)
	switch mbe := (*http.MaxBytesError)(nil); {
	case errors.Is(err, errOverCap):
		return nil, overloaded("request bytes")
	case errors.Is(err, errTooLarge):
		return nil, tooLarge("decompressed body")
	case errors.As(err, &mbe):
		return nil, tooLarge("body")
	case err != nil:
		return nil, &refusal{status: http.StatusBadRequest, kind: "unreadable-body", title: "Unreadable body", detail: "the request body could not be read"}
	}
	return body, nil
}

// bodyTooLarge is the refusal of a body, or what it decompresses to (what),
// over limit bytes.
func bodyTooLarge(what string, limit int64) *refusal {
	return &refusal{status: http.StatusRequestEntityTooLarge, kind: "body-too-large", title: "Request body too large",
		detail: fmt.Sprintf("the %s exceeds %d bytes", what, limit)}
}

// tooLarge reports whether err refuses a request as too large (413).
func tooLarge(err error) bool {
	r, ok := errors.AsType[*refusal](err)
	return ok && r.status == http.StatusRequestEntityTooLarge
}

// readAll is io.ReadAll, reading into a buffer of size bytes and a little
// more when size is above zero: a body of known length is read without the
// buffers that growing as it comes would take (about as many bytes again).
func readAll(r io.Reader, size int64) ([]byte, error) {
	if size <= 0 {
		return io.ReadAll(r)
	}
	var b bytes.Buffer
	b.Grow(int(size) + bytes.MinRead) // room for the read that finds the end
	_, err := b.ReadFrom(r)
	return b.Bytes(), err
}

// charge counts the bytes of a request body against the in-flight cap:
// charged in all, of which read so far.
type charge struct {
	s             *Server
	charged, read int64
}

// chargeStep is how many bytes a body whose length is not known is
// charged at a time, as they are read.
const chargeStep = 64 << 10

// errOverCap is a charged body's read past the in-flight cap; errTooLarge
// one past what a body may hold.
var (
	errOverCap  = errors.New("request bytes over the in-flight cap")
	errTooLarge = errors.New("request bytes over the body cap")
)

// chargeBody charges r's body against the in-flight cap: its whole length
// when known (and not compressed), else nothing until it is read. A known
// length over limit, the most the body may hold, is refused 413 (see
// tooLarge), and one that does not fit beside what is in flight 503, both
// charging nothing.
func (s *Server) chargeBody(r *http.Request, limit int64) (*charge, error) {
	c := &charge{s: s}
	if n := r.ContentLength; n > 0 && r.Header.Get("Content-Encoding") == "" {
		if n > limit {
			return nil, bodyTooLarge("body", s.cfg.MaxBodyBytes)
		}
		if !c.atLeast(n) {
			return nil, overloaded("request bytes")
		}
	}
	return c, nil
}

// add counts n more bytes read, charging a step more when they are past
// what was charged (no step past the cap), or failing that just what was
// read; false when even that is over the cap.
func (c *charge) add(n int) bool {
	c.read += int64(n)
	if c.read <= c.charged {
		return true
	}
	step := max(c.read, min(c.charged+chargeStep, c.s.cfg.MaxInflightBytes))
	return step > c.read && c.reserve(step, false) || c.atLeast(c.read)
}

// atLeast charges more, if need be, so that n bytes in all are charged;
// false, charging nothing more, when that is over the cap.
func (c *charge) atLeast(n int64) bool { return c.reserve(n, true) }

// reserve is atLeast, noting a refusal for Ready only when note, and never
// for n over the cap, which would not fit however idle the edge.
func (c *charge) reserve(n int64, note bool) bool {
	if n <= c.charged {
		return true
	}
	if n > c.s.cfg.MaxInflightBytes || !c.s.take(&c.s.inflightBytes, n-c.charged, c.s.cfg.MaxInflightBytes, note) {
		return false
	}
	c.charged = n
	return true
}

// resize charges max(n, read) bytes: more, failing as atLeast does, or
// less, giving back the rest.
func (c *charge) resize(n int64) bool {
	n = max(n, c.read)
	if n >= c.charged {
		return c.atLeast(n)
	}
	c.s.inflightBytes.Add(n - c.charged)
	c.charged = n
	return true
}

// release gives back what the body was charged; again, nothing.
func (c *charge) release() {
	c.s.inflightBytes.Add(-c.charged)
	c.charged = 0
}

// chargedReader reads through c, failing with tooLarge, uncharged, past
// limit bytes in all, and with over past the in-flight cap. limit is at
// most the cap (Config.MaxBodyBytes), so what is refused over is refused
// for what else is in flight. refused, if not nil, is called before either
// failure is returned, and failed notes one.
type chargedReader struct {
	r              io.Reader
	c              *charge
	limit          int64
	over, tooLarge error
	refused        func()
	failed         bool
}

func (r *chargedReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if r.c.read+int64(n) > r.limit {
		return 0, r.fail(r.tooLarge)
	}
	if !r.c.add(n) {
		return 0, r.fail(r.over)
	}
	return n, err
}

func (r *chargedReader) fail(err error) error {
	r.failed = true
	if r.refused != nil {
		r.refused()
	}
	return err
}

// chargedBody is a request body read through a chargedReader. Once that
// refused the body, Close calls drain, if not nil, instead of the body's
// Close, which over HTTP/1.1 for a body of unknown length reads on, up to
// 256 KiB, and would wait for a client that sends no more before the
// answer goes out.
type chargedBody struct {
	*chargedReader
	body  io.Closer
	drain func()
}

func (b chargedBody) Close() error {
	if b.failed && b.drain != nil {
		b.drain()
		return nil
	}
	return b.body.Close()
}

// refusedDrainWait is how long the rest of a refused body of unknown
// length is read on before the answer, so that a client still sending it
// gets the answer and not a reset, while one that stopped waits no longer.
const refusedDrainWait = time.Second

// jsonErr is what a client is told of malformed JSON: the parser's words,
// which name the problem and where it is.
func jsonErr(err error) string {
	return strings.TrimPrefix(strings.TrimPrefix(err.Error(), "json: "), "jsontext: ")
}

// malformedJSON reports whether readJSONEvent failed on input that is not
// one valid JSON value (as opposed to one that is not an event).
func malformedJSON(err error) bool {
	syn := (*jsontext.SyntacticError)(nil)
	return errors.As(err, &syn) || errors.Is(err, errTrailingData) || errors.Is(err, io.ErrUnexpectedEOF)
}

// writeRefusal answers with the problem a refusal describes.
func writeRefusal(w http.ResponseWriter, err error) {
	var r *refusal
	if !errors.As(err, &r) {
		writeProblem(w, http.StatusInternalServerError, "internal", "Internal error", "", nil)
		return
	}
	switch {
	case r.retryAfter > 0:
		w.Header().Set("Retry-After", retryAfter(r.retryAfter))
	case r.status == http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="spate"`)
	}
	writeProblem(w, r.status, r.kind, r.title, r.detail, r.errs)
}

func writeReceipts(w http.ResponseWriter, ct string, rs []*spatev1.Receipt) {
	if ct == contentTypeProtobuf || ct == "application/protobuf" {
		b, err := proto.Marshal(&spatev1.PublishResponse{Receipts: rs})
		if err != nil {
			panic(err) // a PublishResponse always marshals
		}
		writeBody(w, http.StatusAccepted, ct, b)
		return
	}
	n := 16
	for _, r := range rs {
		n += len(r.Id) + len(r.Topic) + 80 // the names, numbers, quotes and commas take 75 bytes at most
	}
	writeBody(w, http.StatusAccepted, "application/json", appendReceiptsJSON(make([]byte, 0, n), rs))
}

// appendReceiptsJSON appends {"receipts":[{"id","topic","partition",
// "offset"}, ...]} and a newline, as encoding/json would write them but
// for its escapes of <, >, &, U+2028 and U+2029, which JSON does not need;
// without reflection, which took 2.5% of the edge's CPU at 100-event JSON
// batches.
func appendReceiptsJSON(b []byte, rs []*spatev1.Receipt) []byte {
	b = append(b, `{"receipts":[`...)
	for i, r := range rs {
		if i > 0 {
			b = append(b, ',')
		}
		// Ids and topics are valid UTF-8 (JSON and protobuf decoding
		// refuse other strings), which is all AppendQuote can fail on.
		b, _ = jsontext.AppendQuote(append(b, `{"id":`...), r.Id)
		b, _ = jsontext.AppendQuote(append(b, `,"topic":`...), r.Topic)
		b = strconv.AppendInt(append(b, `,"partition":`...), int64(r.Partition), 10)
		b = strconv.AppendInt(append(b, `,"offset":`...), r.Offset, 10)
		b = append(b, '}')
	}
	return append(b, "]}\n"...)
}

func writeProblem(w http.ResponseWriter, status int, kind, title, detail string, errs []FieldError) {
	writeJSON(w, status, contentTypeProblem, Problem{
		Type:   "urn:spate:problem:" + kind,
		Title:  title,
		Status: status,
		Detail: detail,
		Errors: errs,
	})
}

func writeJSON(w http.ResponseWriter, status int, ct string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // our own types always marshal
	}
	writeBody(w, status, ct, append(b, '\n'))
}

func writeBody(w http.ResponseWriter, status int, ct string, b []byte) {
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
