package edge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/go-json-experiment/json/jsontext"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// Connect decodes a request's message before the handler runs. So that
// nothing of a request is decoded before it is authenticated, and no body
// of many tiny events or extension attributes (a few bytes each, decoded
// to a hundred or more) is decoded at all, the Connect service is served
// behind authenticateConnect and with codecs that read a PublishRequest's
// shape before decoding it.

// keyKey is the context key of the API key that authenticateConnect found.
type keyKey struct{}

// chargeKey is the context key of a Connect request's *charge.
type chargeKey struct{}

// authenticateConnect authenticates a Connect, gRPC or gRPC-Web request
// before Connect reads its body, and answers it in its protocol if that
// fails; the handler finds the key in the request's context.
func (s *Server) authenticateConnect(next http.Handler) http.Handler {
	errw := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, err := s.authenticate(r.Context(), r.Header)
		if err != nil {
			s.discardUnread(r)
			errw.Write(w, r, connectError(err))
			return
		}
		// The body's bytes count against the in-flight cap as Connect
		// reads them, before it decodes the request.
		// A body holds one message, and gRPC's envelope of it.
		limit := s.cfg.MaxBodyBytes + grpcEnvelope
		c, err := s.chargeBody(r, limit)
		if err != nil {
			// Answered at once, as /v1/events does: the body is not
			// read (past the cap, if too large), and the connection
			// closes after the answer.
			if tooLarge(err) {
				s.discardTooLarge(r)
			}
			errw.Write(w, r, connectError(err))
			return
		}
		defer c.release()
		ct := strings.ToLower(r.Header.Get("Content-Type")) // as Connect matches it
		grpcOrStream := strings.HasPrefix(ct, "application/grpc") || strings.HasPrefix(ct, "application/connect+")
		switch {
		case !grpcOrStream && strings.EqualFold(strings.TrimSpace(r.Header.Get("Content-Encoding")), "gzip"):
			// A Connect unary body, gzip as a whole: decompressed here as
			// /v1/events does, its bytes charged as they come, so that a
			// gzip bomb costs the cap at most; Connect gets it plain.
			body, err := readBody(w, r, s.cfg.MaxBodyBytes, c)
			if err != nil {
				c.release() // what is discarded is not held
				s.discardBody(r)
				errw.Write(w, r, connectError(err))
				return
			}
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
			r.Header.Del("Content-Encoding")
		case compressed(r.Header.Get("Grpc-Encoding")) || compressed(r.Header.Get("Connect-Content-Encoding")):
			// Messages compressed one by one, which Connect decompresses
			// (up to MaxBodyBytes) before anything here sees them: charged
			// that much before they are read.
			if !c.atLeast(s.cfg.MaxBodyBytes) {
				errw.Write(w, r, connectError(overloaded("request bytes")))
				return
			}
			fallthrough
		default:
			body := r.Body
			cr := &chargedReader{r: body, c: c, limit: limit,
				over: connectError(overloaded("request bytes")), tooLarge: connectError(bodyTooLarge("body", s.cfg.MaxBodyBytes))}
			var drain func()
			if r.ProtoMajor == 1 {
				// Refused, the body is answered (Connect writes its code)
				// once what its client still sends within
				// refusedDrainWait is read, up to twice the cap, and the
				// connection closes after the answer: not read on, as
				// net/http would, until a client that sends no more times
				// out. (HTTP/2 closes the stream alone, at once; there
				// Connection: close would end every stream of the
				// connection.)
				cr.refused = func() { w.Header().Set("Connection", "close") }
				drain = func() {
					c.release() // what is discarded is not held
					if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(refusedDrainWait)); err != nil {
						body.Close() // a writer that cannot: net/http's bounded read
						return
					}
					io.Copy(io.Discard, io.LimitReader(body, 2*s.cfg.MaxBodyBytes))
				}
			}
			r.Body = chargedBody{cr, body, drain}
		}
		ctx := context.WithValue(context.WithValue(r.Context(), keyKey{}, key), chargeKey{}, c)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// compressed reports whether a message encoding header names compression.
func compressed(enc string) bool {
	enc = strings.TrimSpace(enc)
	return enc != "" && !strings.EqualFold(enc, "identity")
}

// countingCodec is Connect's codec of name, that refuses a PublishRequest
// of more than max events, or with an event of more than MaxExtensions
// extension attributes, before decoding it.
type countingCodec struct {
	name   string
	max    int
	shape  func([]byte) (requestShape, error)
	decode func([]byte, proto.Message) error
	encode func(proto.Message) ([]byte, error)
}

func (c *countingCodec) Name() string { return c.name }

func (c *countingCodec) Marshal(m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", m)
	}
	return c.encode(pm)
}

func (c *countingCodec) Unmarshal(b []byte, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a protobuf message", m)
	}
	if _, ok := m.(*spatev1.PublishRequest); ok {
		sh, err := c.shape(b)
		if err != nil {
			return fmt.Errorf("unmarshal into %T: %w", m, err)
		}
		if err := sh.check(c.max); err != nil {
			return err
		}
	}
	if err := c.decode(b, pm); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", m, err)
	}
	return nil
}

// connectCodecs are the codecs the Connect service is served with: those
// Connect has by default, counting events first.
func connectCodecs(max int) []connect.HandlerOption {
	protoCodec := &countingCodec{name: "proto", max: max, shape: protobufShape,
		decode: func(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) },
		encode: func(m proto.Message) ([]byte, error) { return proto.Marshal(m) }}
	opts := []connect.HandlerOption{connect.WithCodec(protoCodec)}
	for _, name := range []string{"json", "json; charset=utf-8"} {
		opts = append(opts, connect.WithCodec(&countingCodec{name: name, max: max, shape: jsonShape,
			decode: func(b []byte, m proto.Message) error {
				if len(b) == 0 {
					return errors.New("zero-length payload is not a valid JSON object")
				}
				return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, m)
			},
			encode: func(m proto.Message) ([]byte, error) { return protojson.Marshal(m) }}))
	}
	return opts
}

// requestShape is what a PublishRequest holds, read without decoding it:
// its events, and the most extension attributes any one of them has.
type requestShape struct {
	events, extensions int
}

// check refuses a request of more than maxEvents events, or with an event
// of more than MaxExtensions extension attributes.
func (sh requestShape) check(maxEvents int) error {
	switch {
	case sh.events > maxEvents:
		return fmt.Errorf("the request holds %d events; at most %d are taken", sh.events, maxEvents)
	case sh.extensions > MaxExtensions:
		return fmt.Errorf("%w; one of the request's events holds %d", errTooManyExtensions, sh.extensions)
	}
	return nil
}

// protobufShape reads the shape of an encoded PublishRequest. An extension
// given twice counts twice, though it decodes to one.
func protobufShape(b []byte) (requestShape, error) {
	var sh requestShape
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num != 1 || typ != protowire.BytesType { // not an event: proto.Unmarshal keeps it as an unknown field
			return nil
		}
		sh.events++
		ev, l := protowire.ConsumeBytes(v)
		if l < 0 {
			return protowire.ParseError(l)
		}
		n := 0
		err := eachField(ev, func(num protowire.Number, typ protowire.Type, _ []byte) error {
			if num == 9 && typ == protowire.BytesType { // an extension
				n++
			}
			return nil
		})
		sh.extensions = max(sh.extensions, n)
		return err
	})
	return sh, err
}

// eachField calls f with each field of an encoded message: its number, wire
// type and value, as encoded.
func eachField(b []byte, f func(protowire.Number, protowire.Type, []byte) error) error {
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
		if l = protowire.ConsumeFieldValue(num, typ, b); l < 0 {
			return protowire.ParseError(l)
		}
		if err := f(num, typ, b[:l]); err != nil {
			return err
		}
		b = b[l:]
	}
	return nil
}

// jsonShape reads the shape of a JSON PublishRequest. Duplicate member
// names are taken, as protojson takes unknown ones; what is not such an
// object is an error, as it would be to protojson.
func jsonShape(b []byte) (requestShape, error) {
	var sh requestShape
	d := jsontext.NewDecoder(bytes.NewReader(b), jsontext.AllowDuplicateNames(true))
	// members calls f with the name of each member of the object that
	// comes next, with the decoder before its value; f reads the value.
	members := func(f func(name string) error) error {
		if _, err := d.ReadToken(); err != nil { // '{'
			return err
		}
		for d.PeekKind() == '"' {
			name, err := d.ReadToken()
			if err != nil {
				return err
			}
			if err := f(name.String()); err != nil {
				return err
			}
		}
		_, err := d.ReadToken() // '}', or an error
		return err
	}
	if d.PeekKind() != '{' {
		return sh, errors.New("a PublishRequest is a JSON object")
	}
	err := members(func(name string) error {
		if name != "events" || d.PeekKind() != '[' {
			return d.SkipValue()
		}
		if _, err := d.ReadToken(); err != nil {
			return err
		}
		for d.PeekKind() != ']' {
			sh.events++
			if d.PeekKind() != '{' {
				if err := d.SkipValue(); err != nil {
					return err
				}
				continue
			}
			err := members(func(name string) error {
				if name != "extensions" || d.PeekKind() != '{' {
					return d.SkipValue()
				}
				n := 0
				err := members(func(string) error { n++; return d.SkipValue() })
				sh.extensions = max(sh.extensions, n)
				return err
			})
			if err != nil {
				return err
			}
		}
		_, err := d.ReadToken()
		return err
	})
	return sh, err
}
