package schemas

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The JSON-to-protobuf path that the edge takes for every JSON payload
// (Registry.Decode) reads the common payload straight into the wire format,
// by a plan made once per message type, and lets protobuf-go's fast
// unmarshaller make the message of it: protojson's reading, field by field
// through reflection, was most of the cost of a JSON event.
//
// appendJSONWire takes only what protojson.Unmarshal certainly takes, and
// then to the same message. Where matching protojson would take more than a
// plain reading, it gives up, and the caller takes protojson's way, which
// also gives protojson's error for a payload it refuses. It gives up on:
//   - anything that is not plain JSON of objects, arrays, strings without
//     escapes, integers written as such (unquoted or quoted), true and false;
//   - null, a float, a bytes, a map, a well-known type or a proto2 message;
//   - a name the message does not know, a field named twice (by either of
//     its names), two members of a oneof;
//   - invalid UTF-8, an enum name the enum does not hold, an integer out of
//     its field's range;
//   - nesting deeper than wireMaxDepth.
//
// It also tells whether what it wrote is the message's canonical encoding
// (proto.MarshalOptions{Deterministic: true}), so that the edge need not
// encode the decoded message again: fields in order of number, none of a
// oneof, no zero value of a field without presence, no packable list.
//
// FuzzJSONWire checks it against protojson, and its canonical encodings
// against proto.Marshal.

// jsonPlan is what the JSON path needs to know of a message type, looked up
// once.
type jsonPlan struct {
	fields []jsonField
	byName map[string]int // a field's JSON name and .proto name → index in fields
}

// jsonField is one field of a jsonPlan.
type jsonField struct {
	num   protowire.Number
	kind  protoreflect.Kind
	list  bool
	oneof int // 1 + the index of the field's oneof; 0: none
	enum  protoreflect.EnumValueDescriptors
	msg   *jsonPlan // of a message field the path reads
	plain bool      // the path reads a value of this field
	// What makes the path's writing of a value not canonical: proto.Marshal
	// leaves out a zero value of a field without presence (implicit),
	// packs a list (packed), and writes a oneof's fields after the others
	// for dynamic messages but in order of number for generated ones.
	implicit, packed, realOneof bool
}

// newJSONPlan returns the plan of md, or nil if md is not a proto3 message
// whose names the path can look up.
func newJSONPlan(md protoreflect.MessageDescriptor) *jsonPlan {
	return buildJSONPlan(md, map[protoreflect.MessageDescriptor]*jsonPlan{})
}

func buildJSONPlan(md protoreflect.MessageDescriptor, built map[protoreflect.MessageDescriptor]*jsonPlan) *jsonPlan {
	if p, ok := built[md]; ok {
		return p
	}
	byName, ok := fieldsByName(md)
	if !ok || md.ParentFile().Syntax() != protoreflect.Proto3 || md.ParentFile().Package() == "google.protobuf" ||
		md.ExtensionRanges().Len() > 0 || md.IsMapEntry() {
		built[md] = nil
		return nil
	}
	// Decided: a message that refers back to this one gets this plan, which
	// cannot turn out unusable once handed out.
	fds := md.Fields()
	p := &jsonPlan{fields: make([]jsonField, fds.Len()), byName: byName}
	built[md] = p
	for i := range fds.Len() {
		fd := fds.Get(i)
		f := jsonField{num: fd.Number(), kind: fd.Kind(), list: fd.IsList(),
			implicit: !fd.HasPresence() && !fd.IsList(), packed: fd.IsPacked()}
		if od := fd.ContainingOneof(); od != nil {
			f.oneof, f.realOneof = 1+od.Index(), !od.IsSynthetic()
		}
		switch fd.Kind() {
		case protoreflect.BoolKind, protoreflect.StringKind,
			protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
			protoreflect.Uint32Kind, protoreflect.Fixed32Kind,
			protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
			protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
			f.plain = !fd.IsMap()
		case protoreflect.EnumKind:
			f.enum = fd.Enum().Values()
			f.plain = fd.Enum().FullName() != "google.protobuf.NullValue"
		case protoreflect.MessageKind:
			if !fd.IsMap() {
				f.msg = buildJSONPlan(fd.Message(), built)
				f.plain = f.msg != nil
			}
		}
		p.fields[i] = f
	}
	return p
}

// fieldsByName returns the index of md's fields by the names protojson finds
// them by, JSON name and .proto name, or false when protojson would not
// find each field by each of its names alone:
//   - two fields claim one name (protodesc takes descriptors that protoc
//     refuses for it): protojson looks a name up as a JSON name first;
//   - a JSON name in brackets, which protojson takes for an extension's.
func fieldsByName(md protoreflect.MessageDescriptor) (map[string]int, bool) {
	fds := md.Fields()
	byName := make(map[string]int, 2*fds.Len())
	for i := range fds.Len() {
		fd := fds.Get(i)
		for _, name := range []string{fd.JSONName(), string(fd.Name())} {
			if j, ok := byName[name]; ok && j != i || strings.HasPrefix(name, "[") && strings.HasSuffix(name, "]") {
				return nil, false
			}
			byName[name] = i
		}
	}
	return byName, true
}

// appendJSONWire appends to b the wire format of the JSON object data as a
// message of plan p, and reports whether it could, and whether what it
// appended is canonical; see above.
func appendJSONWire(b []byte, data []byte, p *jsonPlan) (out []byte, canonical, ok bool) {
	r := jsonReader{data: data, canonical: true}
	r.space()
	b, ok = r.message(b, p, 0)
	if !ok {
		return nil, false, false
	}
	r.space()
	if r.at != len(r.data) {
		return nil, false, false
	}
	return b, r.canonical, true
}

// jsonReader reads plain JSON from data, from at; canonical stays true
// while what it wrote is the canonical encoding.
type jsonReader struct {
	data      []byte
	at        int
	canonical bool
}

func (r *jsonReader) space() {
	for r.at < len(r.data) {
		switch r.data[r.at] {
		case ' ', '\t', '\n', '\r':
			r.at++
		default:
			return
		}
	}
}

// next skips space and reports the next byte, 0 at the end.
func (r *jsonReader) next() byte {
	r.space()
	if r.at == len(r.data) {
		return 0
	}
	return r.data[r.at]
}

// take skips space and the byte c, if it comes next.
func (r *jsonReader) take(c byte) bool {
	if r.next() != c {
		return false
	}
	r.at++
	return true
}

// str reads a string without escapes, as the bytes between its quotes.
func (r *jsonReader) str() ([]byte, bool) {
	if !r.take('"') {
		return nil, false
	}
	start := r.at
	for r.at < len(r.data) {
		switch c := r.data[r.at]; {
		case c == '"':
			s := r.data[start:r.at]
			r.at++
			return s, utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, false
		}
		r.at++
	}
	return nil, false
}

// integer reads an integer written as JSON writes one, -?(0|[1-9][0-9]*),
// bare or quoted; not -0.
func (r *jsonReader) integer() (neg bool, digits []byte, ok bool) {
	quoted := r.next() == '"'
	if quoted {
		r.at++
	}
	if r.at < len(r.data) && r.data[r.at] == '-' {
		neg = true
		r.at++
	}
	start := r.at
	for r.at < len(r.data) && r.data[r.at] >= '0' && r.data[r.at] <= '9' {
		r.at++
	}
	digits = r.data[start:r.at]
	if len(digits) == 0 || digits[0] == '0' && (len(digits) > 1 || neg) {
		return false, nil, false
	}
	if quoted {
		if r.at == len(r.data) || r.data[r.at] != '"' {
			return false, nil, false
		}
		r.at++
	} else if r.at < len(r.data) {
		switch r.data[r.at] {
		case '.', 'e', 'E':
			return false, nil, false
		}
	}
	return neg, digits, true
}

func (r *jsonReader) message(b []byte, p *jsonPlan, depth int) ([]byte, bool) {
	if depth == wireMaxDepth || !r.take('{') {
		return nil, false
	}
	if r.take('}') {
		return b, true
	}
	var seen, oneofs uint64 // by field index, by oneof index + 1
	var last protowire.Number
	for {
		name, ok := r.str()
		if !ok || !r.take(':') {
			return nil, false
		}
		i, known := p.byName[string(name)]
		if !known {
			return nil, false
		}
		f := &p.fields[i]
		if !f.plain || i >= 64 || seen&(1<<i) != 0 || f.oneof >= 64 || f.oneof > 0 && oneofs&(1<<f.oneof) != 0 {
			return nil, false // a field past the 64th takes the long way
		}
		seen |= 1 << i
		if f.oneof > 0 {
			oneofs |= 1 << f.oneof
		}
		if f.num < last || f.realOneof {
			r.canonical = false
		}
		last = f.num
		if f.list {
			if b, ok = r.list(b, f, depth); !ok {
				return nil, false
			}
		} else if b, ok = r.value(b, f, depth); !ok {
			return nil, false
		}
		if r.take('}') {
			return b, true
		}
		if !r.take(',') {
			return nil, false
		}
	}
}

func (r *jsonReader) list(b []byte, f *jsonField, depth int) ([]byte, bool) {
	if !r.take('[') {
		return nil, false
	}
	if r.take(']') {
		return b, true
	}
	if f.packed {
		r.canonical = false // written one by one
	}
	for {
		var ok bool
		if b, ok = r.value(b, f, depth); !ok {
			return nil, false
		}
		if r.take(']') {
			return b, true
		}
		if !r.take(',') {
			return nil, false
		}
	}
}

// value appends one value of f, tagged.
func (r *jsonReader) value(b []byte, f *jsonField, depth int) ([]byte, bool) {
	switch f.kind {
	case protoreflect.StringKind:
		s, ok := r.str()
		if !ok {
			return nil, false
		}
		r.zero(f, len(s) == 0)
		return protowire.AppendBytes(protowire.AppendTag(b, f.num, protowire.BytesType), s), true
	case protoreflect.MessageKind:
		if r.next() != '{' {
			return nil, false
		}
		// Written in place, after a length of one byte, which the
		// message, once written, moves along for if it needs more.
		b = append(protowire.AppendTag(b, f.num, protowire.BytesType), 0)
		at := len(b)
		b, ok := r.message(b, f.msg, depth+1)
		if !ok {
			return nil, false
		}
		n := uint64(len(b) - at)
		if more := protowire.SizeVarint(n) - 1; more > 0 {
			b = append(b, make([]byte, more)...)
			copy(b[at+more:], b[at:len(b)-more])
		}
		protowire.AppendVarint(b[at-1:at-1], n)
		return b, true
	case protoreflect.BoolKind:
		v := uint64(0)
		switch {
		case r.word("true"):
			v = 1
		case r.word("false"):
		default:
			return nil, false
		}
		r.zero(f, v == 0)
		return protowire.AppendVarint(protowire.AppendTag(b, f.num, protowire.VarintType), v), true
	case protoreflect.EnumKind:
		if r.next() == '"' {
			name, ok := r.str()
			if !ok {
				return nil, false
			}
			v := f.enum.ByName(protoreflect.Name(name))
			if v == nil {
				return nil, false
			}
			r.zero(f, v.Number() == 0)
			return protowire.AppendVarint(protowire.AppendTag(b, f.num, protowire.VarintType), uint64(int64(v.Number()))), true
		}
	}
	// An integer: enums by number too.
	neg, digits, ok := r.integer()
	if !ok {
		return nil, false
	}
	bits, signed := intKind(f.kind)
	n, err := strconv.ParseUint(string(digits), 10, bits)
	if err != nil {
		return nil, false
	}
	var v int64
	switch {
	case !signed && neg:
		return nil, false
	case !signed:
	case neg && n > 1<<(bits-1):
		return nil, false
	case !neg && n >= 1<<(bits-1):
		return nil, false
	case neg:
		v = -int64(n)
	default:
		v = int64(n)
	}
	r.zero(f, n == 0)
	switch f.kind {
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind:
		return protowire.AppendVarint(protowire.AppendTag(b, f.num, protowire.VarintType), n), true
	case protoreflect.Fixed32Kind:
		return protowire.AppendFixed32(protowire.AppendTag(b, f.num, protowire.Fixed32Type), uint32(n)), true
	case protoreflect.Fixed64Kind:
		return protowire.AppendFixed64(protowire.AppendTag(b, f.num, protowire.Fixed64Type), n), true
	case protoreflect.Sint32Kind, protoreflect.Sint64Kind:
		return protowire.AppendVarint(protowire.AppendTag(b, f.num, protowire.VarintType), protowire.EncodeZigZag(v)), true
	case protoreflect.Sfixed32Kind:
		return protowire.AppendFixed32(protowire.AppendTag(b, f.num, protowire.Fixed32Type), uint32(v)), true
	case protoreflect.Sfixed64Kind:
		return protowire.AppendFixed64(protowire.AppendTag(b, f.num, protowire.Fixed64Type), uint64(v)), true
	}
	// int32, int64 and enums: a negative one is sign-extended to 64 bits.
	return protowire.AppendVarint(protowire.AppendTag(b, f.num, protowire.VarintType), uint64(v)), true
}

// zero notes a value of f, zero if isZero, which proto.Marshal would leave
// out if f has no presence: what was written is then not canonical.
func (r *jsonReader) zero(f *jsonField, isZero bool) {
	if isZero && f.implicit {
		r.canonical = false
	}
}

// intKind returns the bits of an integer kind (enums: int32) and whether it
// is signed.
func intKind(k protoreflect.Kind) (bits int, signed bool) {
	switch k {
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return 32, false
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return 64, false
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return 64, true
	}
	return 32, true
}

// word reads the literal w (true or false), which must end there.
func (r *jsonReader) word(w string) bool {
	r.space()
	end := r.at + len(w)
	if end > len(r.data) || string(r.data[r.at:end]) != w {
		return false
	}
	if end < len(r.data) {
		switch c := r.data[end]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
			return false
		}
	}
	r.at = end
	return true
}
