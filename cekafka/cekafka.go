// Package cekafka maps Spate events to Kafka records and back, following the
// CloudEvents Kafka protocol binding in binary mode: every attribute is a
// ce_* header (datacontenttype is content-type), data is the record value and
// subject is the record key, so events of one subject share a partition and
// keep their order. Any Kafka client can read such records without Spate.
package cekafka

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/timestamppb"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// Header names of the binding.
const (
	HeaderSpecVersion = "ce_specversion"
	HeaderID          = "ce_id"
	HeaderSource      = "ce_source"
	HeaderType        = "ce_type"
	HeaderSubject     = "ce_subject"
	HeaderTime        = "ce_time"
	HeaderDataSchema  = "ce_dataschema"
	HeaderContentType = "content-type"

	prefix      = "ce_"
	specVersion = "1.0"
)

// MaxExtensions caps an event's extension attributes. Each becomes a Kafka
// header; a record with more is not a Spate event.
const MaxExtensions = 64

// CheckExtension says what is wrong with an extension attribute's name, if
// anything: CloudEvents allows 1 to 20 lower-case letters or digits, and an
// extension may not take a core attribute's name (its ce_ header would
// clash with the core attribute's).
func CheckExtension(name string) error {
	switch name {
	case "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data":
		return errors.New("is a core CloudEvents attribute, not an extension")
	}
	ok := len(name) >= 1 && len(name) <= 20
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
	}
	if !ok {
		return errors.New("extension attribute names are 1 to 20 lower-case letters or digits")
	}
	return nil
}

// ErrNotEvent is returned for a record that is not a CloudEvent in binary mode.
var ErrNotEvent = errors.New("not a binary-mode CloudEvent")

// Record returns the Kafka record of an event for topic. Its headers have
// room for two more, such as the edge's own, without growing.
func Record(topic string, ev *spatev1.Event) *kgo.Record {
	// Without extensions, the record and its headers are one allocation.
	r := &recordAndHeaders{}
	hs := r.headers[:0]
	if len(ev.Extensions) > 0 {
		hs = make([]kgo.RecordHeader, 0, len(r.headers)+len(ev.Extensions))
	}
	// The attributes' values share one buffer: one allocation, not one a
	// header. Sized for a time of up to 35 bytes (RFC 3339, nanoseconds).
	buf := make([]byte, 0, len(ev.Id)+len(ev.Source)+len(ev.Type)+len(ev.Subject)+35+len(ev.Datacontenttype)+len(ev.Dataschema))
	add := func(k, v string) {
		if v != "" {
			at := len(buf)
			buf = append(buf, v...)
			hs = append(hs, kgo.RecordHeader{Key: k, Value: buf[at:len(buf):len(buf)]})
		}
	}
	hs = append(hs, kgo.RecordHeader{Key: HeaderSpecVersion, Value: []byte(specVersion)})
	add(HeaderID, ev.Id)
	add(HeaderSource, ev.Source)
	add(HeaderType, ev.Type)
	var key []byte
	if ev.Subject != "" {
		add(HeaderSubject, ev.Subject)
		key = hs[len(hs)-1].Value
	}
	if ev.Time != nil {
		at := len(buf)
		buf = ev.Time.AsTime().UTC().AppendFormat(buf, time.RFC3339Nano)
		hs = append(hs, kgo.RecordHeader{Key: HeaderTime, Value: buf[at:len(buf):len(buf)]})
	}
	add(HeaderContentType, ev.Datacontenttype)
	add(HeaderDataSchema, ev.Dataschema)
	for k, v := range ev.Extensions {
		// An extension is present even when empty, unlike the attributes
		// above, whose empty value means absent.
		hs = append(hs, kgo.RecordHeader{Key: prefix + k, Value: []byte(v)})
	}
	r.Topic, r.Key, r.Value, r.Headers = topic, key, ev.Data, hs
	return &r.Record
}

// recordAndHeaders is a record with room for the headers of an event
// without extensions, and two more.
type recordAndHeaders struct {
	kgo.Record
	headers [10]kgo.RecordHeader
}

// Event returns the event a record carries. The record must have ce_id,
// ce_source and ce_type headers, its other ce_ headers must be extensions
// CheckExtension allows, MaxExtensions at most, and its attributes valid
// UTF-8, with no NUL in id, source, type or subject: a record that breaks
// these rules, which the edge and the producers here never wrote, is not
// taken for an event (one with a ce_data header, say, would give sinks two
// values of data, and one with a NUL in its id a row no database takes).
// Control characters the edge refuses now but took before (in extension
// values and dataschema) are let through: history reads as it did.
func Event(r *kgo.Record) (*spatev1.Event, error) {
	ev := &spatev1.Event{Data: r.Value}
	// The header values become strings that share one allocation.
	n := 0
	for _, h := range r.Headers {
		n += len(h.Value)
	}
	var b strings.Builder
	b.Grow(n)
	for _, h := range r.Headers {
		b.Write(h.Value)
	}
	values := b.String()
	for _, h := range r.Headers {
		v := values[:len(h.Value)]
		values = values[len(h.Value):]
		switch h.Key {
		case HeaderSpecVersion:
			if v != specVersion {
				return nil, fmt.Errorf("%w: header %s is %q, want %q", ErrNotEvent, HeaderSpecVersion, v, specVersion)
			}
		case HeaderID:
			ev.Id = v
		case HeaderSource:
			ev.Source = v
		case HeaderType:
			ev.Type = v
		case HeaderSubject:
			ev.Subject = v
		case HeaderTime:
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return nil, fmt.Errorf("%w: header %s: %v", ErrNotEvent, HeaderTime, err)
			}
			ev.Time = timestamppb.New(t)
			if err := ev.Time.CheckValid(); err != nil {
				return nil, fmt.Errorf("%w: header %s: %v", ErrNotEvent, HeaderTime, err)
			}
		case HeaderContentType:
			ev.Datacontenttype = v
		case HeaderDataSchema:
			ev.Dataschema = v
		default:
			if name, ok := strings.CutPrefix(h.Key, prefix); ok && name != "" {
				if err := CheckExtension(name); err != nil {
					return nil, fmt.Errorf("%w: header %s: %q %v", ErrNotEvent, h.Key, name, err)
				}
				if ev.Extensions == nil {
					ev.Extensions = make(map[string]string)
				}
				if ev.Extensions[name] = v; len(ev.Extensions) > MaxExtensions {
					return nil, fmt.Errorf("%w: more than %d extension attributes", ErrNotEvent, MaxExtensions)
				}
			}
		}
	}
	switch {
	case ev.Id == "":
		return nil, fmt.Errorf("%w: no %s header", ErrNotEvent, HeaderID)
	case ev.Source == "":
		return nil, fmt.Errorf("%w: no %s header", ErrNotEvent, HeaderSource)
	case ev.Type == "":
		return nil, fmt.Errorf("%w: no %s header", ErrNotEvent, HeaderType)
	}
	for _, a := range [...]struct {
		header, value string
		noNUL         bool
	}{{HeaderID, ev.Id, true}, {HeaderSource, ev.Source, true}, {HeaderType, ev.Type, true}, {HeaderSubject, ev.Subject, true},
		{HeaderDataSchema, ev.Dataschema, false}, {HeaderContentType, ev.Datacontenttype, false}} {
		if msg := unstorable(a.value, a.noNUL); msg != "" {
			return nil, fmt.Errorf("%w: header %s %s", ErrNotEvent, a.header, msg)
		}
	}
	for name, v := range ev.Extensions {
		if msg := unstorable(v, false); msg != "" {
			return nil, fmt.Errorf("%w: header %s %s", ErrNotEvent, prefix+name, msg)
		}
	}
	return ev, nil
}
