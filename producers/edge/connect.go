package edge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"
	"github.com/go-json-experiment/json/jsontext"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// Connect decodes a request's message before the handler runs. So that
// nothing of a request is decoded before it is authenticated, and no body
// of many tiny events (two bytes each in protobuf, three in JSON, each
// decoded to a few hundred) is decoded at all, the Connect service is served
// behind authenticateConnect and with codecs that count a PublishRequest's
// events before decoding it.

// keyKey is the context key of the API key that authenticateConnect found.
type keyKey struct{}

// authenticateConnect authenticates a Connect, gRPC or gRPC-Web request
// before Connect reads its body, and answers it in its protocol if that
// fails; the handler finds the key in the request's context.
func (s *Server) authenticateConnect(next http.Handler) http.Handler {
	errw := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, err := s.authenticate(r.Context(), r.Header)
		if err != nil {
			s.discardBody(r)
			errw.Write(w, r, connectError(err))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyKey{}, key)))
	})
}

// countingCodec is Connect's codec of name, that refuses a PublishRequest
// of more than max events before decoding it.
type countingCodec struct {
	name   string
	max    int
	count  func([]byte) (int, error)
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
		n, err := c.count(b)
		if err != nil {
			return fmt.Errorf("unmarshal into %T: %w", m, err)
		}
		if n > c.max {
			return fmt.Errorf("the request holds %d events; at most %d are taken", n, c.max)
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
	protoCodec := &countingCodec{name: "proto", max: max, count: protobufEventCount,
		decode: func(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) },
		encode: func(m proto.Message) ([]byte, error) { return proto.Marshal(m) }}
	opts := []connect.HandlerOption{connect.WithCodec(protoCodec)}
	for _, name := range []string{"json", "json; charset=utf-8"} {
		opts = append(opts, connect.WithCodec(&countingCodec{name: name, max: max, count: jsonEventCount,
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

// protobufEventCount counts the events of an encoded PublishRequest
// without decoding them.
func protobufEventCount(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return 0, protowire.ParseError(l)
		}
		b = b[l:]
		if l = protowire.ConsumeFieldValue(num, typ, b); l < 0 {
			return 0, protowire.ParseError(l)
		}
		b = b[l:]
		if num == 1 {
			n++
		}
	}
	return n, nil
}

// jsonEventCount counts the elements of the events array of a JSON
// PublishRequest without decoding them. Duplicate member names are taken,
// as protojson takes unknown ones; what is not such an object is an error,
// as it would be to protojson.
func jsonEventCount(b []byte) (int, error) {
	d := jsontext.NewDecoder(bytes.NewReader(b), jsontext.AllowDuplicateNames(true))
	tok, err := d.ReadToken()
	if err != nil {
		return 0, err
	}
	if tok.Kind() != '{' {
		return 0, errors.New("a PublishRequest is a JSON object")
	}
	n := 0
	for d.PeekKind() == '"' {
		name, err := d.ReadToken()
		if err != nil {
			return 0, err
		}
		if name.String() != "events" || d.PeekKind() != '[' {
			if err := d.SkipValue(); err != nil {
				return 0, err
			}
			continue
		}
		if _, err := d.ReadToken(); err != nil {
			return 0, err
		}
		for d.PeekKind() != ']' {
			if err := d.SkipValue(); err != nil {
				return 0, err
			}
			n++
		}
		if _, err := d.ReadToken(); err != nil {
			return 0, err
		}
	}
	return n, nil
}
