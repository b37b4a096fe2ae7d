package schemas

import (
	"encoding/base64"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The protobuf-to-JSON path that sinks take for every event (Registry.JSON)
// writes JSON straight from the wire format, without decoding the payload
// into a message first, by a plan made once per message type: that decode,
// and asking descriptors about each field, were most of the cost.
//
// appendWireJSON writes exactly what appendJSONMessage writes for the message
// that protobuf-go decodes from the same bytes. Where matching that would
// take more than a plain reading of the bytes, it gives up, and the caller
// takes the long way, which also gives protobuf-go's error for a payload
// that does not decode. It gives up on:
//   - anything malformed, and a known field of the wrong wire type (which
//     protobuf-go keeps as an unknown field);
//   - a singular field that occurs more than once (the last wins, but every
//     occurrence must be valid, and messages merge), two members of one
//     oneof, a map key in two entries, and a key or value twice in one entry;
//   - a Timestamp out of range, and invalid UTF-8 in a string;
//   - nesting deeper than wireMaxDepth.
//
// Only proto3 messages made of plain fields take this path (newWirePlan);
// FuzzWireJSON checks it against the long way.

// wireMaxDepth bounds the nesting the wire path follows; protobuf-go's own
// limit is 10,000, and deeper payloads take the long way.
const wireMaxDepth = 100

// wirePlan is what the wire path needs to know of a message type, looked up
// once.
type wirePlan struct {
	timestamp bool
	fields    []wireField
	oneofs    int
	low       []int32                  // field number below 128 → index in fields; -1: none
	byNumber  map[protowire.Number]int // the same for the other numbers
}

// field returns the index of the field numbered num, if p has one.
func (p *wirePlan) field(num protowire.Number) (int, bool) {
	if int(num) < len(p.low) {
		i := p.low[num]
		return int(i), i >= 0
	}
	i, ok := p.byNumber[num]
	return i, ok
}

// wireField is one field of a wirePlan.
type wireField struct {
	name     []byte // the quoted .proto name and a colon
	kind     protoreflect.Kind
	wireType protowire.Type // not packed
	list     bool
	oneof    int    // 1 + the index of the field's oneof; 0: none
	zero     []byte // what an unset field is written as
	enum     protoreflect.EnumValueDescriptors
	msg      *wirePlan // of a message field, or of a map's entries
	key, val *wireField
}

// newWirePlan returns the plan of md, or nil if md, or a message it can hold,
// is neither proto3 nor google.protobuf.Timestamp, or not plainJSON.
func newWirePlan(md protoreflect.MessageDescriptor) *wirePlan {
	if !plainJSON(md) || onMessages(md, func(md protoreflect.MessageDescriptor) bool {
		return md.FullName() != timestampName && md.ParentFile().Syntax() != protoreflect.Proto3
	}, map[protoreflect.MessageDescriptor]bool{}) {
		return nil
	}
	return buildWirePlan(md, map[protoreflect.MessageDescriptor]*wirePlan{})
}

func buildWirePlan(md protoreflect.MessageDescriptor, built map[protoreflect.MessageDescriptor]*wirePlan) *wirePlan {
	if p := built[md]; p != nil {
		return p
	}
	p := &wirePlan{timestamp: md.FullName() == timestampName, oneofs: md.Oneofs().Len(), byNumber: map[protowire.Number]int{}}
	built[md] = p
	fds := md.Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		p.fields = append(p.fields, buildWireField(fd, built))
		if fd.Number() < 128 {
			for len(p.low) <= int(fd.Number()) {
				p.low = append(p.low, -1)
			}
			p.low[fd.Number()] = int32(i)
		} else {
			p.byNumber[fd.Number()] = i
		}
	}
	return p
}

func buildWireField(fd protoreflect.FieldDescriptor, built map[protoreflect.MessageDescriptor]*wirePlan) wireField {
	name, _ := appendJSONString(nil, fd.TextName())
	f := wireField{
		name:     append(name, ':'),
		kind:     fd.Kind(),
		wireType: kindWireType(fd.Kind()),
		list:     fd.IsList(),
	}
	if od := fd.ContainingOneof(); od != nil {
		f.oneof = 1 + od.Index()
	}
	if e := fd.Enum(); e != nil {
		f.enum = e.Values()
	}
	if md := fd.Message(); md != nil {
		f.msg = buildWirePlan(md, built)
	}
	switch {
	case fd.IsMap():
		k, v := buildWireField(fd.MapKey(), built), buildWireField(fd.MapValue(), built)
		f.key, f.val = &k, &v
		f.zero = []byte("{}")
	case fd.IsList():
		f.zero = []byte("[]")
	case fd.HasPresence():
		f.zero = []byte("null")
	default:
		f.zero, _ = appendJSONValue(nil, fd.Default(), fd)
	}
	return f
}

// wireValue is one occurrence of a field on the wire: the field's index in
// its plan, its wire type, and its value (n for a varint or fixed-size value,
// s for a length-delimited one); next is the index of the field's next
// occurrence, -1: none.
type wireValue struct {
	field int
	typ   protowire.Type
	n     uint64
	s     []byte
	next  int32
}

// wireRun is where a field occurs in a message's values: first and last
// index, and how many times.
type wireRun struct{ first, last, count int32 }

// appendWireJSON appends the JSON of the message of plan p encoded in data,
// as appendJSONMessage writes it, or reports false (see above).
func appendWireJSON(b []byte, data []byte, p *wirePlan, depth int) ([]byte, bool) {
	if depth > wireMaxDepth {
		return b, false
	}
	if p.timestamp {
		return appendWireTimestamp(b, data)
	}
	var buf [16]wireValue
	vals, ok := scanWire(buf[:0], data, p)
	if !ok {
		return b, false
	}
	var runBuf [16]wireRun
	var runs []wireRun
	if len(p.fields) <= len(runBuf) {
		runs = runBuf[:len(p.fields)]
	} else {
		runs = make([]wireRun, len(p.fields))
	}
	var memberBuf [4]int // 1 + the index of the oneof's member that occurs
	var members []int
	if p.oneofs <= len(memberBuf) {
		members = memberBuf[:p.oneofs]
	} else {
		members = make([]int, p.oneofs)
	}
	for j := range vals {
		v := &vals[j]
		r := &runs[v.field]
		if r.count == 0 {
			r.first = int32(j)
		} else {
			vals[r.last].next = int32(j)
		}
		r.last = int32(j)
		r.count++
		v.next = -1
		if o := p.fields[v.field].oneof; o != 0 {
			if m := members[o-1]; m != 0 && m != v.field+1 {
				return b, false // two members of one oneof: the last one wins
			}
			members[o-1] = v.field + 1
		}
	}
	b = append(b, '{')
	for i := range p.fields {
		f := &p.fields[i]
		r := runs[i]
		if r.count == 0 && f.oneof != 0 {
			continue
		}
		if r.count > 1 && !f.list && f.key == nil {
			return b, false
		}
		if b[len(b)-1] != '{' {
			b = append(b, ',')
		}
		b = append(b, f.name...)
		switch {
		case r.count == 0:
			b = append(b, f.zero...)
		case f.key != nil:
			b, ok = appendWireMap(b, vals, r.first, f, depth)
		case f.list:
			b = append(b, '[')
			b, ok = appendWireList(b, vals, r.first, f, depth)
			b = append(b, ']')
		default:
			b, ok = appendWireValue(b, vals[r.last], f, depth)
		}
		if !ok {
			return b, false
		}
	}
	return append(b, '}'), true
}

// scanWire appends to vals every occurrence of a known field in data, in
// order, and skips unknown fields as protobuf-go does.
func scanWire(vals []wireValue, data []byte, p *wirePlan) ([]wireValue, bool) {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 || num > protowire.MaxValidNumber {
			return nil, false
		}
		data = data[n:]
		i, known := p.field(num)
		if !known {
			if n = protowire.ConsumeFieldValue(num, typ, data); n < 0 {
				return nil, false
			}
			data = data[n:]
			continue
		}
		v := wireValue{field: i, typ: typ}
		if typ == protowire.BytesType {
			v.s, n = protowire.ConsumeBytes(data)
		} else {
			v.n, n = consumeNumber(typ, data)
		}
		if n < 0 {
			return nil, false
		}
		data = data[n:]
		f := &p.fields[i]
		if typ != f.wireType && !(typ == protowire.BytesType && f.list && f.wireType != protowire.BytesType) {
			return nil, false // protobuf-go would keep it as an unknown field
		}
		vals = append(vals, v)
	}
	return vals, true
}

// consumeNumber reads a value of wire type typ, a varint or fixed-size, from
// the start of data, and returns its length, negative on error.
func consumeNumber(typ protowire.Type, data []byte) (uint64, int) {
	switch typ {
	case protowire.VarintType:
		return protowire.ConsumeVarint(data)
	case protowire.Fixed32Type:
		x, n := protowire.ConsumeFixed32(data)
		return uint64(x), n
	case protowire.Fixed64Type:
		return protowire.ConsumeFixed64(data)
	}
	return 0, -1
}

// appendWireList writes the elements of list field f, whose first value in
// vals is at index first, packed or not, comma-separated.
func appendWireList(b []byte, vals []wireValue, first int32, f *wireField, depth int) ([]byte, bool) {
	n := 0
	for j := first; j >= 0; j = vals[j].next {
		v := vals[j]
		if v.typ == f.wireType {
			if n > 0 {
				b = append(b, ',')
			}
			var ok bool
			if b, ok = appendWireValue(b, v, f, depth); !ok {
				return b, false
			}
			n++
			continue
		}
		for s := v.s; len(s) > 0; n++ { // packed
			e := wireValue{typ: f.wireType}
			var m int
			if e.n, m = consumeNumber(f.wireType, s); m < 0 {
				return b, false
			}
			s = s[m:]
			if n > 0 {
				b = append(b, ',')
			}
			var ok bool
			if b, ok = appendWireValue(b, e, f, depth); !ok {
				return b, false
			}
		}
	}
	return b, true
}

// wireEntry is a map entry read from the wire: its key, and its value
// unless the entry has none (then it is the value's zero value).
type wireEntry struct {
	key    protoreflect.MapKey
	val    wireValue
	hasVal bool
}

// appendWireMap writes the entries of map field f, whose first value in
// vals is at index first, sorted as appendJSONMap sorts them.
func appendWireMap(b []byte, vals []wireValue, first int32, f *wireField, depth int) ([]byte, bool) {
	var entries []wireEntry
	for j := first; j >= 0; j = vals[j].next {
		var buf [4]wireValue
		kv, ok := scanWire(buf[:0], vals[j].s, f.msg)
		if !ok {
			return b, false
		}
		e := wireEntry{key: zeroMapKey(f.key.kind)}
		keys := 0
		for _, v := range kv {
			if key, _ := f.msg.field(1); v.field == key {
				key, ok := wireMapKey(v, f.key.kind)
				if !ok {
					return b, false
				}
				e.key = key
				keys++
				continue
			}
			e.val, e.hasVal = v, true
		}
		// A key or a value twice in an entry, or a key in two entries
		// (below): the last wins, but each must decode.
		if keys > 1 || len(kv)-keys > 1 {
			return b, false
		}
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(x, y wireEntry) int { return compareMapKeys(x.key, y.key) })
	for j := 1; j < len(entries); j++ {
		if compareMapKeys(entries[j-1].key, entries[j].key) == 0 {
			return b, false
		}
	}
	b = append(b, '{')
	for j, e := range entries {
		if j > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = appendJSONString(b, e.key.String()); err != nil {
			return b, false
		}
		b = append(b, ':')
		if !e.hasVal {
			if f.val.msg != nil {
				e.val.typ = protowire.BytesType // an empty message
			} else {
				b = append(b, f.val.zero...)
				continue
			}
		}
		var ok bool
		if b, ok = appendWireValue(b, e.val, f.val, depth); !ok {
			return b, false
		}
	}
	return append(b, '}'), true
}

func zeroMapKey(k protoreflect.Kind) protoreflect.MapKey {
	v, _ := wireMapKey(wireValue{typ: kindWireType(k)}, k)
	return v
}

// wireMapKey decodes a map key of kind k.
func wireMapKey(v wireValue, k protoreflect.Kind) (protoreflect.MapKey, bool) {
	if v.typ != kindWireType(k) {
		return protoreflect.MapKey{}, false
	}
	var x protoreflect.Value
	switch k {
	case protoreflect.BoolKind:
		x = protoreflect.ValueOfBool(v.n != 0)
	case protoreflect.Int32Kind, protoreflect.Sfixed32Kind:
		x = protoreflect.ValueOfInt32(int32(v.n))
	case protoreflect.Sint32Kind:
		x = protoreflect.ValueOfInt32(int32(protowire.DecodeZigZag(v.n & math.MaxUint32)))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		x = protoreflect.ValueOfUint32(uint32(v.n))
	case protoreflect.Int64Kind, protoreflect.Sfixed64Kind:
		x = protoreflect.ValueOfInt64(int64(v.n))
	case protoreflect.Sint64Kind:
		x = protoreflect.ValueOfInt64(protowire.DecodeZigZag(v.n))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		x = protoreflect.ValueOfUint64(v.n)
	case protoreflect.StringKind:
		if !utf8.Valid(v.s) {
			return protoreflect.MapKey{}, false
		}
		x = protoreflect.ValueOfString(string(v.s))
	default:
		return protoreflect.MapKey{}, false
	}
	return x.MapKey(), true
}

// appendWireValue writes one value of f's kind, as appendJSONValue does.
func appendWireValue(b []byte, v wireValue, f *wireField, depth int) ([]byte, bool) {
	switch f.kind {
	case protoreflect.MessageKind:
		return appendWireJSON(b, v.s, f.msg, depth+1)
	case protoreflect.StringKind:
		var err error
		b, err = appendJSONString(b, unsafe.String(unsafe.SliceData(v.s), len(v.s)))
		return b, err == nil
	case protoreflect.BytesKind:
		b = append(b, '"')
		return append(base64.StdEncoding.AppendEncode(b, v.s), '"'), true
	case protoreflect.BoolKind:
		return strconv.AppendBool(b, v.n != 0), true
	case protoreflect.EnumKind:
		if ev := f.enum.ByNumber(protoreflect.EnumNumber(int32(v.n))); ev != nil {
			var err error
			b, err = appendJSONString(b, string(ev.Name()))
			return b, err == nil
		}
		return strconv.AppendInt(b, int64(int32(v.n)), 10), true
	case protoreflect.Int32Kind, protoreflect.Sfixed32Kind:
		return strconv.AppendInt(b, int64(int32(v.n)), 10), true
	case protoreflect.Sint32Kind:
		return strconv.AppendInt(b, int64(int32(protowire.DecodeZigZag(v.n&math.MaxUint32))), 10), true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return strconv.AppendUint(b, uint64(uint32(v.n)), 10), true
	case protoreflect.Int64Kind, protoreflect.Sfixed64Kind:
		b = append(b, '"')
		return append(strconv.AppendInt(b, int64(v.n), 10), '"'), true
	case protoreflect.Sint64Kind:
		b = append(b, '"')
		return append(strconv.AppendInt(b, protowire.DecodeZigZag(v.n), 10), '"'), true
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		b = append(b, '"')
		return append(strconv.AppendUint(b, v.n, 10), '"'), true
	case protoreflect.FloatKind:
		return appendJSONFloat(b, float64(math.Float32frombits(uint32(v.n))), 32), true
	case protoreflect.DoubleKind:
		return appendJSONFloat(b, math.Float64frombits(v.n), 64), true
	}
	return b, false
}

// kindWireType is the wire type of a value of kind k, not packed.
func kindWireType(k protoreflect.Kind) protowire.Type {
	switch k {
	case protoreflect.Sfixed32Kind, protoreflect.Fixed32Kind, protoreflect.FloatKind:
		return protowire.Fixed32Type
	case protoreflect.Sfixed64Kind, protoreflect.Fixed64Kind, protoreflect.DoubleKind:
		return protowire.Fixed64Type
	case protoreflect.StringKind, protoreflect.BytesKind, protoreflect.MessageKind:
		return protowire.BytesType
	case protoreflect.GroupKind:
		return protowire.StartGroupType
	}
	return protowire.VarintType
}

// appendWireTimestamp writes the google.protobuf.Timestamp encoded in data
// as appendTimestamp does.
func appendWireTimestamp(b []byte, data []byte) ([]byte, bool) {
	var secs, nanos int64
	var seen [2]bool
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 || num > protowire.MaxValidNumber {
			return b, false
		}
		data = data[n:]
		if num != 1 && num != 2 {
			if n = protowire.ConsumeFieldValue(num, typ, data); n < 0 {
				return b, false
			}
			data = data[n:]
			continue
		}
		x, n := protowire.ConsumeVarint(data)
		if typ != protowire.VarintType || n < 0 || seen[num-1] {
			return b, false
		}
		seen[num-1] = true
		if num == 1 {
			secs = int64(x)
		} else {
			nanos = int64(int32(x))
		}
		data = data[n:]
	}
	b, err := appendTimestampOf(b, secs, nanos)
	return b, err == nil
}
