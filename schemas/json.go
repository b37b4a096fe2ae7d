package schemas

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// jsonOut is the JSON that sinks write: every field, under its .proto name,
// so that a field at its zero value is still present, which suits SQL
// (payload->>'amount_cents') and subscribers alike.
var jsonOut = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// MarshalJSON returns m as protojson with .proto field names and every field
// (protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}),
// without insignificant spaces. A message built of plain fields and
// google.protobuf.Timestamp, as event payloads are, is written by a direct
// encoder that makes the same JSON several times faster; any other (one that
// holds another well-known type, or may hold extensions) goes through
// protojson, and so does one protojson would refuse, to give its error.
func MarshalJSON(m proto.Message) ([]byte, error) {
	r := m.ProtoReflect()
	if plainJSON(r.Descriptor()) {
		if b, err := appendJSONMessage(make([]byte, 0, 256), r); err == nil {
			return b, nil
		}
	}
	b, err := jsonOut.Marshal(m)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// errNotPlain stops the direct encoder where protojson must speak instead.
var errNotPlain = errors.New("not a plain message")

const timestampName = "google.protobuf.Timestamp"

// notPlainMessages caches !plainJSON by message descriptor.
var notPlainMessages sync.Map // protoreflect.MessageDescriptor → bool

// plainJSON reports whether messages of md, and every message they can
// hold, are either google.protobuf.Timestamp or messages that protojson
// writes field by field: no other well-known type, no extension ranges.
func plainJSON(md protoreflect.MessageDescriptor) bool {
	return !cachedOnMessages(&notPlainMessages, md, func(md protoreflect.MessageDescriptor) bool {
		if md.FullName() == timestampName {
			return false
		}
		if md.ParentFile().Package() == "google.protobuf" || md.ExtensionRanges().Len() > 0 {
			return true
		}
		fds := md.Fields()
		for i := range fds.Len() {
			fd := fds.Get(i)
			if fd.IsMap() {
				fd = fd.MapValue()
			}
			if e := fd.Enum(); e != nil && e.FullName() == "google.protobuf.NullValue" {
				return true
			}
		}
		return false
	})
}

// jsonMayFailMessages caches jsonMayFail by message descriptor.
var jsonMayFailMessages sync.Map // protoreflect.MessageDescriptor → bool

// jsonMayFail reports whether protojson may refuse a message of md that
// decoded from protobuf: one that can hold a well-known type (a Timestamp out
// of range, say), or a string whose UTF-8 decoding did not check (proto2,
// editions).
func jsonMayFail(md protoreflect.MessageDescriptor) bool {
	return cachedOnMessages(&jsonMayFailMessages, md, func(md protoreflect.MessageDescriptor) bool {
		if md.ParentFile().Package() == "google.protobuf" {
			return true
		}
		if md.ParentFile().Syntax() == protoreflect.Proto3 {
			return false
		}
		fds := md.Fields()
		for i := range fds.Len() {
			fd := fds.Get(i)
			if fd.IsMap() && fd.MapKey().Kind() == protoreflect.StringKind {
				return true
			}
			if fd.IsMap() {
				fd = fd.MapValue()
			}
			if fd.Kind() == protoreflect.StringKind {
				return true
			}
		}
		return false
	})
}

// cachedOnMessages reports, caching the answer in cache, whether is holds
// for md or for any message that a message of md can hold, at any depth.
func cachedOnMessages(cache *sync.Map, md protoreflect.MessageDescriptor, is func(protoreflect.MessageDescriptor) bool) bool {
	if v, ok := cache.Load(md); ok {
		return v.(bool)
	}
	found := onMessages(md, is, map[protoreflect.MessageDescriptor]bool{})
	cache.Store(md, found)
	return found
}

func onMessages(md protoreflect.MessageDescriptor, is func(protoreflect.MessageDescriptor) bool, seen map[protoreflect.MessageDescriptor]bool) bool {
	if seen[md] {
		return false // a cycle: this message is being looked at already
	}
	seen[md] = true
	if is(md) {
		return true
	}
	fds := md.Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		if fd.IsMap() {
			fd = fd.MapValue()
		}
		if fd.Message() != nil && onMessages(fd.Message(), is, seen) {
			return true
		}
	}
	return false
}

// appendJSONMessage appends m as protojson.MarshalOptions{UseProtoNames:
// true, EmitUnpopulated: true} writes it: fields in declaration order; an
// unset field of a oneof left out; an unset field with presence null; any
// other unset field at its zero value.
func appendJSONMessage(b []byte, m protoreflect.Message) ([]byte, error) {
	md := m.Descriptor()
	if md.FullName() == timestampName {
		return appendTimestamp(b, m)
	}
	b = append(b, '{')
	fds := md.Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		var v protoreflect.Value
		switch {
		case m.Has(fd):
			v = m.Get(fd)
		case fd.ContainingOneof() != nil:
			continue
		case !fd.HasPresence():
			v = m.Get(fd)
		}
		if b[len(b)-1] != '{' {
			b = append(b, ',')
		}
		var err error
		if b, err = appendJSONString(b, fd.TextName()); err != nil {
			return nil, err
		}
		b = append(b, ':')
		switch {
		case fd.IsList():
			b, err = appendJSONList(b, v.List(), fd)
		case fd.IsMap():
			b, err = appendJSONMap(b, v.Map(), fd)
		default:
			b, err = appendJSONValue(b, v, fd)
		}
		if err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

func appendJSONList(b []byte, l protoreflect.List, fd protoreflect.FieldDescriptor) ([]byte, error) {
	b = append(b, '[')
	for i := range l.Len() {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = appendJSONValue(b, l.Get(i), fd); err != nil {
			return nil, err
		}
	}
	return append(b, ']'), nil
}

// appendJSONMap writes a map's entries in protojson's order: by key, false
// before true, numbers by value, strings bytewise.
func appendJSONMap(b []byte, mp protoreflect.Map, fd protoreflect.FieldDescriptor) ([]byte, error) {
	keys := make([]protoreflect.MapKey, 0, mp.Len())
	mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
		keys = append(keys, k)
		return true
	})
	slices.SortFunc(keys, compareMapKeys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = appendJSONString(b, k.String()); err != nil {
			return nil, err
		}
		b = append(b, ':')
		if b, err = appendJSONValue(b, mp.Get(k), fd.MapValue()); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

func compareMapKeys(x, y protoreflect.MapKey) int {
	switch x.Interface().(type) {
	case bool:
		switch {
		case x.Bool() == y.Bool():
			return 0
		case y.Bool():
			return -1
		}
		return 1
	case int32, int64:
		return cmpOrdered(x.Int(), y.Int())
	case uint32, uint64:
		return cmpOrdered(x.Uint(), y.Uint())
	}
	return cmpOrdered(x.String(), y.String())
}

func cmpOrdered[T int64 | uint64 | string](x, y T) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// appendJSONValue writes one value of fd's kind; an invalid value (an unset
// field with presence) is null.
func appendJSONValue(b []byte, v protoreflect.Value, fd protoreflect.FieldDescriptor) ([]byte, error) {
	if !v.IsValid() {
		return append(b, "null"...), nil
	}
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return strconv.AppendBool(b, v.Bool()), nil
	case protoreflect.StringKind:
		return appendJSONString(b, v.String())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return strconv.AppendInt(b, v.Int(), 10), nil
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return strconv.AppendUint(b, v.Uint(), 10), nil
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		b = append(b, '"')
		return append(strconv.AppendInt(b, v.Int(), 10), '"'), nil
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		b = append(b, '"')
		return append(strconv.AppendUint(b, v.Uint(), 10), '"'), nil
	case protoreflect.FloatKind:
		return appendJSONFloat(b, v.Float(), 32), nil
	case protoreflect.DoubleKind:
		return appendJSONFloat(b, v.Float(), 64), nil
	case protoreflect.BytesKind:
		b = append(b, '"')
		return append(base64.StdEncoding.AppendEncode(b, v.Bytes()), '"'), nil
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return appendJSONString(b, string(ev.Name()))
		}
		return strconv.AppendInt(b, int64(v.Enum()), 10), nil
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return appendJSONMessage(b, v.Message())
	}
	return nil, errNotPlain
}

// appendJSONFloat writes a float as protojson does: NaN and the infinities
// as strings, exponent notation outside [1e-6, 1e21), and a two-digit
// negative exponent without its leading zero.
func appendJSONFloat(b []byte, n float64, bitSize int) []byte {
	switch {
	case math.IsNaN(n):
		return append(b, `"NaN"`...)
	case math.IsInf(n, 1):
		return append(b, `"Infinity"`...)
	case math.IsInf(n, -1):
		return append(b, `"-Infinity"`...)
	}
	format := byte('f')
	if abs := math.Abs(n); abs != 0 {
		if bitSize == 64 && (abs < 1e-6 || abs >= 1e21) ||
			bitSize == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	b = strconv.AppendFloat(b, n, format, -1, bitSize)
	if format == 'e' {
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// appendJSONString writes s quoted, escaping only what JSON requires, as
// protojson does; invalid UTF-8 is an error.
func appendJSONString(b []byte, s string) ([]byte, error) {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= ' ' && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				return nil, errNotPlain
			}
			i += n
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, `\u`...)
			b = append(b, "0000"[1+(bits.Len32(uint32(c))-1)/4:]...)
			b = strconv.AppendUint(b, uint64(c), 16)
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"'), nil
}

// The range of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

// appendTimestamp writes a google.protobuf.Timestamp as protojson does:
// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits. Out of range, it
// leaves the error to protojson.
func appendTimestamp(b []byte, m protoreflect.Message) ([]byte, error) {
	fds := m.Descriptor().Fields()
	return appendTimestampOf(b, m.Get(fds.ByNumber(1)).Int(), m.Get(fds.ByNumber(2)).Int())
}

func appendTimestampOf(b []byte, secs, nanos int64) ([]byte, error) {
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos > 999_999_999 {
		return nil, errNotPlain
	}
	b = append(b, '"')
	b = time.Unix(secs, nanos).UTC().AppendFormat(b, "2006-01-02T15:04:05.000000000")
	for range 2 {
		if n := len(b); string(b[n-3:]) == "000" {
			b = b[:n-3]
		}
	}
	if n := len(b); string(b[n-4:]) == ".000" {
		b = b[:n-4]
	}
	return append(b, 'Z', '"'), nil
}
