package edge

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
)

// FieldError is one problem with one event of a request.
type FieldError struct {
	// Index is the event's position in the request, from 0.
	Index int `json:"index"`
	// Field names the attribute, or "data" (or "data.<path>") for the
	// payload; empty, the event as a whole.
	Field  string `json:"field,omitempty"`
	Detail string `json:"detail"`
}

func (e FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("event %d: %s", e.Index, e.Detail)
	}
	return fmt.Sprintf("event %d: %s: %s", e.Index, e.Field, e.Detail)
}

// checkExtensionName says what is wrong with an extension attribute's name.
func checkExtensionName(name string) string {
	if err := cekafka.CheckExtension(name); err != nil {
		return err.Error()
	}
	return ""
}

// The context attributes of CloudEvents' JSON format that are not extensions.
const (
	attrSpecVersion     = "specversion"
	attrID              = "id"
	attrSource          = "source"
	attrType            = "type"
	attrSubject         = "subject"
	attrTime            = "time"
	attrDataContentType = "datacontenttype"
	attrDataSchema      = "dataschema"
	attrData            = "data"
	attrDataBase64      = "data_base64"
)

// jsonEvent is an event in the CloudEvents JSON format as read, each
// attribute as its raw JSON value (nil when absent). Members are matched by
// exact name; all others are extensions.
type jsonEvent struct {
	SpecVersion     jsontext.Value            `json:"specversion"`
	ID              jsontext.Value            `json:"id"`
	Source          jsontext.Value            `json:"source"`
	Type            jsontext.Value            `json:"type"`
	Subject         jsontext.Value            `json:"subject"`
	Time            jsontext.Value            `json:"time"`
	DataContentType jsontext.Value            `json:"datacontenttype"`
	DataSchema      jsontext.Value            `json:"dataschema"`
	Data            jsontext.Value            `json:"data"`
	DataBase64      jsontext.Value            `json:"data_base64"`
	Extensions      map[string]jsontext.Value `json:",embed"`
}

// decodeJSONEvent reads one event in the CloudEvents JSON format into the
// envelope. It checks the JSON shape only; validate checks the content.
// JSON is read strictly (encoding/json/v2 semantics): duplicate member
// names and invalid UTF-8 are refused, not resolved silently.
func decodeJSONEvent(i int, raw jsontext.Value) (*spatev1.Event, []FieldError) {
	je, err := readJSONEvent(raw)
	return eventFromJSON(i, je, err)
}

// eventReader reads events member by member: cheaper than unmarshaling
// into jsonEvent by reflection, and the attributes' values alias the input.
type eventReader struct {
	in  bytes.Buffer
	dec *jsontext.Decoder
}

var eventReaders = sync.Pool{New: func() any {
	r := &eventReader{}
	r.dec = jsontext.NewDecoder(&r.in)
	return r
}}

// eventReaderOf returns a reader of in from the pool; done puts it back.
func eventReaderOf(in []byte) *eventReader {
	r := eventReaders.Get().(*eventReader)
	r.in = *bytes.NewBuffer(in)
	r.dec.Reset(&r.in)
	return r
}

func (r *eventReader) done() {
	r.in = bytes.Buffer{} // the pool must not keep the input
	r.dec.Reset(&r.in)
	eventReaders.Put(r)
}

// readJSONEvent reads raw, one JSON value, as json.Unmarshal into a
// *jsonEvent would, strictly alike (duplicate names and invalid UTF-8 are
// refused): nil for null, an error for anything but an object. It stops
// at an extension attribute too many (errTooManyExtensions), before it has
// read the rest: an event that has too many and is malformed too is refused
// for the first.
func readJSONEvent(raw jsontext.Value) (*jsonEvent, error) {
	r := eventReaderOf(raw)
	defer r.done()

	switch tok, err := r.dec.ReadToken(); {
	case err == io.EOF:
		return nil, io.ErrUnexpectedEOF // no value at all
	case err != nil:
		return nil, err
	case tok.Kind() == 'n':
		return nil, r.end()
	case tok.Kind() != '{':
		return nil, errors.New("not an object")
	}
	je, err := r.object(raw)
	if err != nil {
		return nil, err
	}
	return je, r.end()
}

// readJSONBatch reads body, a JSON array of at most max event objects, as
// readJSONEvent reads each, in one pass. It reports false for anything else
// (an element that is not an event object, too many, malformed JSON...):
// splitArray and readJSONEvent then tell what is wrong.
func readJSONBatch(body []byte, max int) ([]*jsonEvent, bool) {
	r := eventReaderOf(body)
	defer r.done()
	if tok, err := r.dec.ReadToken(); err != nil || tok.Kind() != '[' {
		return nil, false
	}
	var jes []*jsonEvent
	for r.dec.PeekKind() != ']' {
		if len(jes) == max {
			return nil, false
		}
		if tok, err := r.dec.ReadToken(); err != nil || tok.Kind() != '{' {
			return nil, false
		}
		je, err := r.object(body)
		if err != nil {
			return nil, false
		}
		jes = append(jes, je)
	}
	if _, err := r.dec.ReadToken(); err != nil { // ']'
		return nil, false
	}
	return jes, r.end() == nil
}

// object reads the members of an event object whose '{' was read, up to
// its '}', from the decoder's input raw: the attributes' values alias raw.
func (r *eventReader) object(raw []byte) (*jsonEvent, error) {
	je := &jsonEvent{}
	for r.dec.PeekKind() != '}' {
		// The name read as a value, as it is written: its bytes, unquoted
		// only when it holds an escape, cost no string for an attribute.
		name, err := r.dec.ReadValue()
		if err != nil {
			return nil, err
		}
		end := int(r.dec.InputOffset())
		name = raw[end-len(name) : end : end] // the decoder's own bytes do not outlast its next read
		k := name[1 : len(name)-1]
		if bytes.IndexByte(k, '\\') >= 0 {
			if k, err = jsontext.AppendUnquote(nil, name); err != nil {
				return nil, err
			}
		}
		v, err := r.dec.ReadValue()
		if err != nil {
			return nil, err
		}
		end = int(r.dec.InputOffset())
		v = raw[end-len(v) : end : end]
		switch string(k) {
		case attrSpecVersion:
			je.SpecVersion = v
		case attrID:
			je.ID = v
		case attrSource:
			je.Source = v
		case attrType:
			je.Type = v
		case attrSubject:
			je.Subject = v
		case attrTime:
			je.Time = v
		case attrDataContentType:
			je.DataContentType = v
		case attrDataSchema:
			je.DataSchema = v
		case attrData:
			je.Data = v
		case attrDataBase64:
			je.DataBase64 = v
		default:
			if je.Extensions == nil {
				je.Extensions = map[string]jsontext.Value{}
			}
			if len(je.Extensions) == MaxExtensions {
				return nil, errTooManyExtensions
			}
			je.Extensions[string(k)] = v
		}
	}
	if _, err := r.dec.ReadToken(); err != nil { // '}'
		return nil, err
	}
	return je, nil
}

// errTrailingData says that the input holds more than one JSON value.
var errTrailingData = errors.New("trailing data after the event")

// end checks that the input holds nothing more.
func (r *eventReader) end() error {
	if _, err := r.dec.ReadToken(); err != io.EOF {
		return errTrailingData
	}
	return nil
}

// eventFromJSON is decodeJSONEvent after the unmarshal into je, which
// failed with err if not nil; je is nil for JSON null.
func eventFromJSON(i int, je *jsonEvent, err error) (*spatev1.Event, []FieldError) {
	switch {
	case errors.Is(err, errTooManyExtensions):
		return nil, []FieldError{{Index: i, Field: "", Detail: err.Error()}}
	case err != nil || je == nil:
		return nil, []FieldError{{Index: i, Field: "", Detail: "an event must be a JSON object"}}
	}
	var errs []FieldError
	bad := func(field, format string, args ...any) {
		errs = append(errs, FieldError{Index: i, Field: field, Detail: fmt.Sprintf(format, args...)})
	}
	var attrs [6]string
	for a, v := range attrStrings(je, attrs[:]) {
		if v != nil {
			if s, ok := unquote(v); !ok {
				bad(stringAttrs[a], "must be a string")
			} else {
				attrs[a] = s
			}
		}
	}
	ev := &spatev1.Event{Id: attrs[0], Source: attrs[1], Type: attrs[2], Subject: attrs[3], Datacontenttype: attrs[4], Dataschema: attrs[5]}
	switch sv := je.SpecVersion; {
	case sv == nil:
		bad(attrSpecVersion, `is required and must be "1.0"`)
	case !bytes.Equal(sv, []byte(`"1.0"`)):
		bad(attrSpecVersion, `must be "1.0", got %s`, sv)
	}
	if raw := je.Time; raw != nil {
		if t, ok := unquote(raw); !ok {
			bad(attrTime, "must be a string")
		} else if ts, err := time.Parse(time.RFC3339Nano, t); err != nil {
			bad(attrTime, "must be an RFC 3339 timestamp, got %q", t)
		} else if ev.Time = timestamppb.New(ts); ev.Time.CheckValid() != nil {
			ev.Time = nil
			bad(attrTime, "must be between 0001-01-01 and 9999-12-31 UTC, got %q", t)
		}
	}

	switch data, b64 := je.Data, je.DataBase64; {
	case data != nil && b64 != nil:
		bad(attrData, "give data or data_base64, not both")
	case b64 != nil:
		s, ok := unquote(b64)
		if !ok {
			bad(attrDataBase64, "must be a base64 string")
			break
		}
		d, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			bad(attrDataBase64, "must be standard base64: %v", err)
			break
		}
		ev.Data = d
	case data != nil:
		// JSON data is the payload in JSON; a JSON string holding something
		// else is not what this edge accepts (use data_base64).
		if ev.Datacontenttype == "" {
			ev.Datacontenttype = schemas.ContentTypeJSON
		}
		ev.Data = data
	}

	for name, v := range je.Extensions {
		if msg := checkExtensionName(name); msg != "" {
			bad(name, "%s", msg)
			continue
		}
		s, err := extensionValue(v)
		if err != nil {
			bad(name, "%v", err)
			continue
		}
		if ev.Extensions == nil {
			ev.Extensions = make(map[string]string, len(je.Extensions))
		}
		ev.Extensions[name] = s
	}
	return ev, errs
}

// stringAttrs are the attributes whose values are strings, in the order
// attrStrings takes them.
var stringAttrs = [6]string{attrID, attrSource, attrType, attrSubject, attrDataContentType, attrDataSchema}

// attrStrings sets into vals the values of je's stringAttrs that are plain
// strings, as most are: substrings of one string, one allocation for all.
// It returns the others (not null), to be read one by one.
func attrStrings(je *jsonEvent, vals []string) [6]jsontext.Value {
	rest := [6]jsontext.Value{je.ID, je.Source, je.Type, je.Subject, je.DataContentType, je.DataSchema}
	var b strings.Builder
	n := 0
	for _, v := range rest {
		n += len(v)
	}
	b.Grow(n)
	var ends [6]int
	for i, v := range rest {
		if s, ok := plainBytes(v); ok {
			b.Write(s)
			rest[i] = nil
		}
		ends[i] = b.Len()
	}
	all := b.String()
	for i, at := 0, 0; i < len(rest); i++ {
		vals[i], at = all[at:ends[i]], ends[i]
	}
	return rest
}

// unquote unmarshals v, a valid JSON value, into a string, and reports
// whether it could (null leaves it empty).
func unquote(v jsontext.Value) (string, bool) {
	if s, ok := plainString(v); ok {
		return s, true
	}
	var s string
	return s, json.Unmarshal(v, &s) == nil
}

// plainString returns the string v, a valid JSON value, holds if it is a
// string without escapes: its own bytes between the quotes, no decoder
// needed.
func plainString(v jsontext.Value) (string, bool) {
	s, ok := plainBytes(v)
	return string(s), ok
}

// plainBytes is plainString without the string: the bytes between the
// quotes.
func plainBytes(v jsontext.Value) ([]byte, bool) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' && bytes.IndexByte(v, '\\') < 0 {
		return v[1 : len(v)-1], true
	}
	return nil, false
}

// extensionValue returns the string form of an extension attribute: a string,
// a number or a boolean.
func extensionValue(v jsontext.Value) (string, error) {
	if s, ok := plainString(v); ok {
		return s, nil
	}
	var x any
	if err := json.Unmarshal(v, &x); err != nil {
		return "", err
	}
	switch x := x.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case float64:
		return string(v), nil
	}
	return "", fmt.Errorf("extension values are strings, numbers or booleans")
}
