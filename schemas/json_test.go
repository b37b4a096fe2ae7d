package schemas

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
)

// loadedType is the event type of the message All of jsonTestTypes.
const loadedType = "jt.all.v1"

// jsonTestTypes builds, without code generation, a proto3 message All with
// a field of every kind (scalars, enum, bytes, nested and recursive
// messages, Timestamp, lists, maps of every key kind, a oneof, a proto3
// optional), a proto2 message P2 (presence, defaults, unchecked UTF-8), and
// a message WithDuration that holds another well-known type.
func jsonTestTypes(t testing.TB) (all, p2, withDuration protoreflect.MessageDescriptor) {
	t.Helper()
	T := func(k descriptorpb.FieldDescriptorProto_Type) *descriptorpb.FieldDescriptorProto_Type { return &k }
	L := func(l descriptorpb.FieldDescriptorProto_Label) *descriptorpb.FieldDescriptorProto_Label { return &l }
	opt, rep := L(descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL), L(descriptorpb.FieldDescriptorProto_LABEL_REPEATED)
	field := func(name string, n int32, typ descriptorpb.FieldDescriptorProto_Type, label *descriptorpb.FieldDescriptorProto_Label, typeName string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(n), Type: T(typ), Label: label}
		if typeName != "" {
			f.TypeName = proto.String(typeName)
		}
		return f
	}
	entry := func(name string, key, val descriptorpb.FieldDescriptorProto_Type, valType string) *descriptorpb.DescriptorProto {
		return &descriptorpb.DescriptorProto{
			Name:    proto.String(name),
			Field:   []*descriptorpb.FieldDescriptorProto{field("key", 1, key, opt, ""), field("value", 2, val, opt, valType)},
			Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
		}
	}
	const (
		msg = descriptorpb.FieldDescriptorProto_TYPE_MESSAGE
		enm = descriptorpb.FieldDescriptorProto_TYPE_ENUM
		str = descriptorpb.FieldDescriptorProto_TYPE_STRING
	)
	allFields := []*descriptorpb.FieldDescriptorProto{
		field("b", 1, descriptorpb.FieldDescriptorProto_TYPE_BOOL, opt, ""),
		field("i32", 2, descriptorpb.FieldDescriptorProto_TYPE_INT32, opt, ""),
		field("s32", 3, descriptorpb.FieldDescriptorProto_TYPE_SINT32, opt, ""),
		field("sf32", 4, descriptorpb.FieldDescriptorProto_TYPE_SFIXED32, opt, ""),
		field("u32", 5, descriptorpb.FieldDescriptorProto_TYPE_UINT32, opt, ""),
		field("f32", 6, descriptorpb.FieldDescriptorProto_TYPE_FIXED32, opt, ""),
		field("i64", 7, descriptorpb.FieldDescriptorProto_TYPE_INT64, opt, ""),
		field("s64", 8, descriptorpb.FieldDescriptorProto_TYPE_SINT64, opt, ""),
		field("sf64", 9, descriptorpb.FieldDescriptorProto_TYPE_SFIXED64, opt, ""),
		field("u64", 10, descriptorpb.FieldDescriptorProto_TYPE_UINT64, opt, ""),
		field("f64", 11, descriptorpb.FieldDescriptorProto_TYPE_FIXED64, opt, ""),
		field("fl", 12, descriptorpb.FieldDescriptorProto_TYPE_FLOAT, opt, ""),
		field("db", 13, descriptorpb.FieldDescriptorProto_TYPE_DOUBLE, opt, ""),
		field("str", 14, str, opt, ""),
		field("by", 15, descriptorpb.FieldDescriptorProto_TYPE_BYTES, opt, ""),
		field("en", 16, enm, opt, ".jt.E"),
		field("msg", 17, msg, opt, ".jt.All"),
		field("ts", 18, msg, opt, ".google.protobuf.Timestamp"),
		field("rep_i32", 19, descriptorpb.FieldDescriptorProto_TYPE_INT32, rep, ""),
		field("rep_str", 20, str, rep, ""),
		field("rep_msg", 21, msg, rep, ".jt.All"),
		field("map_str_i64", 22, msg, rep, ".jt.All.MapStrI64Entry"),
		field("map_i32_msg", 23, msg, rep, ".jt.All.MapI32MsgEntry"),
		field("map_bool_str", 24, msg, rep, ".jt.All.MapBoolStrEntry"),
		field("map_u64_en", 25, msg, rep, ".jt.All.MapU64EnEntry"),
		field("o_str", 26, str, opt, ""),
		field("o_msg", 27, msg, opt, ".jt.All"),
		field("opt_i32", 28, descriptorpb.FieldDescriptorProto_TYPE_INT32, opt, ""),
		field("rep_en", 29, enm, rep, ".jt.E"),
		field("rep_ts", 30, msg, rep, ".google.protobuf.Timestamp"),
		field("rep_db", 31, descriptorpb.FieldDescriptorProto_TYPE_DOUBLE, rep, ""),
		field("rep_by", 32, descriptorpb.FieldDescriptorProto_TYPE_BYTES, rep, ""),
		field("camelName", 33, str, opt, ""),
		field("map_sf64_str", 34, msg, rep, ".jt.All.MapSf64StrEntry"),
	}
	allFields[25].OneofIndex, allFields[26].OneofIndex = proto.Int32(0), proto.Int32(0)
	allFields[27].OneofIndex, allFields[27].Proto3Optional = proto.Int32(1), proto.Bool(true)
	p2Fields := []*descriptorpb.FieldDescriptorProto{
		field("x", 1, descriptorpb.FieldDescriptorProto_TYPE_INT32, opt, ""),
		field("s", 2, str, opt, ""),
		field("m", 3, msg, opt, ".jt.P2"),
		field("r", 4, str, rep, ""),
		field("e", 5, enm, opt, ".jt.E"),
	}
	p2Fields[0].DefaultValue = proto.String("5")
	allOptions := &descriptorpb.MessageOptions{}
	proto.SetExtension(allOptions, spatev1.E_EventType, loadedType)
	fdp := &descriptorpb.FileDescriptorProto{
		Name:       proto.String("jt.proto"),
		Package:    proto.String("jt"),
		Syntax:     proto.String("proto3"),
		Dependency: []string{"google/protobuf/timestamp.proto", "google/protobuf/duration.proto"},
		EnumType: []*descriptorpb.EnumDescriptorProto{{
			Name: proto.String("E"),
			Value: []*descriptorpb.EnumValueDescriptorProto{
				{Name: proto.String("E_ZERO"), Number: proto.Int32(0)},
				{Name: proto.String("E_ONE"), Number: proto.Int32(1)},
				{Name: proto.String("E_NEG"), Number: proto.Int32(-3)},
			},
		}},
		MessageType: []*descriptorpb.DescriptorProto{
			{
				Name:    proto.String("All"),
				Field:   allFields,
				Options: allOptions,
				NestedType: []*descriptorpb.DescriptorProto{
					entry("MapStrI64Entry", str, descriptorpb.FieldDescriptorProto_TYPE_INT64, ""),
					entry("MapI32MsgEntry", descriptorpb.FieldDescriptorProto_TYPE_INT32, msg, ".jt.All"),
					entry("MapBoolStrEntry", descriptorpb.FieldDescriptorProto_TYPE_BOOL, str, ""),
					entry("MapU64EnEntry", descriptorpb.FieldDescriptorProto_TYPE_UINT64, enm, ".jt.E"),
					entry("MapSf64StrEntry", descriptorpb.FieldDescriptorProto_TYPE_SFIXED64, str, ""),
				},
				OneofDecl: []*descriptorpb.OneofDescriptorProto{{Name: proto.String("o")}, {Name: proto.String("_opt_i32")}},
			},
			{
				Name:  proto.String("WithDuration"),
				Field: []*descriptorpb.FieldDescriptorProto{field("name", 1, str, opt, ""), field("d", 2, msg, opt, ".google.protobuf.Duration")},
			},
		},
	}
	p2File := &descriptorpb.FileDescriptorProto{
		Name:        proto.String("jt2.proto"),
		Package:     proto.String("jt"),
		Syntax:      proto.String("proto2"),
		Dependency:  []string{"jt.proto"},
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("P2"), Field: p2Fields}},
	}
	files := new(protoregistry.Files)
	for _, fd := range []protoreflect.FileDescriptor{timestamppb.File_google_protobuf_timestamp_proto, durationpb.File_google_protobuf_duration_proto} {
		if err := files.RegisterFile(fd); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*descriptorpb.FileDescriptorProto{fdp, p2File} {
		f, err := protodesc.NewFile(p, files)
		if err != nil {
			t.Fatal(err)
		}
		if err := files.RegisterFile(f); err != nil {
			t.Fatal(err)
		}
	}
	get := func(name protoreflect.FullName) protoreflect.MessageDescriptor {
		d, err := files.FindDescriptorByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return d.(protoreflect.MessageDescriptor)
	}
	return get("jt.All"), get("jt.P2"), get("jt.WithDuration")
}

// fullAll returns an All with every field set, odd values included, and a
// nested All two levels deep.
func fullAll(md protoreflect.MessageDescriptor, depth int) *dynamicpb.Message {
	m := dynamicpb.NewMessage(md)
	f := func(name string) protoreflect.FieldDescriptor { return md.Fields().ByName(protoreflect.Name(name)) }
	set := func(name string, v any) { m.Set(f(name), protoreflect.ValueOf(v)) }
	ts := func(secs int64, nanos int32) protoreflect.Message {
		return (&timestamppb.Timestamp{Seconds: secs, Nanos: nanos}).ProtoReflect()
	}
	set("b", true)
	set("i32", int32(-7))
	set("s32", int32(math.MinInt32))
	set("sf32", int32(42))
	set("u32", uint32(math.MaxUint32))
	set("f32", uint32(9))
	set("i64", int64(math.MinInt64))
	set("s64", int64(-1))
	set("sf64", int64(1<<53+1))
	set("u64", uint64(math.MaxUint64))
	set("f64", uint64(3))
	set("fl", float32(1.0e-7))
	set("db", 1e21)
	set("str", "quote\" back\\ nl\n tab\t ctl\x01\x1f del\x7f é 漢 😀 </script> \u2028")
	set("by", []byte{0, 1, 2, 0xff, 0xfe})
	set("en", protoreflect.EnumNumber(-3))
	set("ts", ts(1_700_000_000, 120_000_000))
	set("camelName", "x")
	l := m.Mutable(f("rep_i32")).List()
	for _, v := range []int32{0, -1, 1 << 30} {
		l.Append(protoreflect.ValueOfInt32(v))
	}
	l = m.Mutable(f("rep_str")).List()
	l.Append(protoreflect.ValueOfString(""))
	l.Append(protoreflect.ValueOfString("a"))
	l = m.Mutable(f("rep_en")).List()
	l.Append(protoreflect.ValueOfEnum(1))
	l.Append(protoreflect.ValueOfEnum(99)) // not a declared value: a number
	l = m.Mutable(f("rep_ts")).List()
	for _, v := range [][2]int64{{0, 0}, {1, 1}, {-1, 999_999_999}, {253402300799, 999_000}, {-62135596800, 0}} {
		l.Append(protoreflect.ValueOfMessage(ts(v[0], int32(v[1]))))
	}
	l = m.Mutable(f("rep_db")).List()
	for _, v := range []float64{0, math.Copysign(0, -1), 1.5, -2.25e-7, 1e-6, 123456789012345678901234.0, math.NaN(), math.Inf(1), math.Inf(-1), math.SmallestNonzeroFloat64, math.MaxFloat64} {
		l.Append(protoreflect.ValueOfFloat64(v))
	}
	l = m.Mutable(f("rep_by")).List()
	l.Append(protoreflect.ValueOfBytes(nil))
	l.Append(protoreflect.ValueOfBytes([]byte("hello?>")))
	mp := m.Mutable(f("map_str_i64")).Map()
	for _, k := range []string{"b", "a", "", "é", "A", "\n"} {
		mp.Set(protoreflect.ValueOfString(k).MapKey(), protoreflect.ValueOfInt64(int64(len(k))))
	}
	mp = m.Mutable(f("map_bool_str")).Map()
	mp.Set(protoreflect.ValueOfBool(true).MapKey(), protoreflect.ValueOfString("t"))
	mp.Set(protoreflect.ValueOfBool(false).MapKey(), protoreflect.ValueOfString("f"))
	mp = m.Mutable(f("map_u64_en")).Map()
	mp.Set(protoreflect.ValueOfUint64(10).MapKey(), protoreflect.ValueOfEnum(1))
	mp.Set(protoreflect.ValueOfUint64(9).MapKey(), protoreflect.ValueOfEnum(7))
	mp = m.Mutable(f("map_sf64_str")).Map()
	for _, k := range []int64{10, -10, 2, -1} {
		mp.Set(protoreflect.ValueOfInt64(k).MapKey(), protoreflect.ValueOfString("v"))
	}
	set("opt_i32", int32(0))
	if depth > 0 {
		set("msg", fullAll(md, depth-1))
		set("o_msg", fullAll(md, depth-1))
		l = m.Mutable(f("rep_msg")).List()
		l.Append(protoreflect.ValueOfMessage(dynamicpb.NewMessage(md)))
		l.Append(protoreflect.ValueOfMessage(fullAll(md, depth-1)))
		mp = m.Mutable(f("map_i32_msg")).Map()
		mp.Set(protoreflect.ValueOfInt32(-5).MapKey(), protoreflect.ValueOfMessage(dynamicpb.NewMessage(md)))
		mp.Set(protoreflect.ValueOfInt32(3).MapKey(), protoreflect.ValueOfMessage(fullAll(md, depth-1)))
	} else {
		set("o_str", "in the oneof")
	}
	return m
}

// checkLikeProtojson fails t unless MarshalJSON gives protojson's JSON for
// m (once protojson's random spaces are compacted away), or fails where it
// fails. It reports whether both succeeded.
func checkLikeProtojson(t testing.TB, m proto.Message) bool {
	t.Helper()
	want, wantErr := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	got, err := MarshalJSON(m)
	if wantErr != nil || err != nil {
		if wantErr == nil || err == nil || err.Error() != wantErr.Error() {
			t.Fatalf("MarshalJSON error %v, protojson error %v", err, wantErr)
		}
		return false
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, want); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, compact.Bytes()) {
		t.Fatalf("MarshalJSON differs from protojson:\n got  %s\n want %s", got, compact.Bytes())
	}
	return true
}

func TestMarshalJSONLikeProtojson(t *testing.T) {
	all, p2, withDuration := jsonTestTypes(t)
	if !plainJSON(all) || !plainJSON(p2) || plainJSON(withDuration) {
		t.Fatalf("plainJSON: All %v, P2 %v, WithDuration %v; want true, true, false", plainJSON(all), plainJSON(p2), plainJSON(withDuration))
	}
	full := fullAll(all, 2)
	p2Full := dynamicpb.NewMessage(p2)
	p2Full.Set(p2.Fields().ByName("s"), protoreflect.ValueOfString("set"))
	p2Full.Set(p2.Fields().ByName("m"), protoreflect.ValueOfMessage(dynamicpb.NewMessage(p2)))
	p2BadUTF8 := dynamicpb.NewMessage(p2)
	p2BadUTF8.Set(p2.Fields().ByName("s"), protoreflect.ValueOfString("bad \xff"))
	badTS := dynamicpb.NewMessage(all)
	badTS.Set(all.Fields().ByName("ts"), protoreflect.ValueOfMessage((&timestamppb.Timestamp{Seconds: 253402300800}).ProtoReflect()))
	badNanos := dynamicpb.NewMessage(all)
	badNanos.Set(all.Fields().ByName("ts"), protoreflect.ValueOfMessage((&timestamppb.Timestamp{Nanos: -1}).ProtoReflect()))
	wholeSecondOfNanos := dynamicpb.NewMessage(all)
	wholeSecondOfNanos.Set(all.Fields().ByName("ts"), protoreflect.ValueOfMessage((&timestamppb.Timestamp{Nanos: 1e9}).ProtoReflect()))
	dur := dynamicpb.NewMessage(withDuration)
	dur.Set(withDuration.Fields().ByName("d"), protoreflect.ValueOfMessage(durationpb.New(1500*time.Millisecond).ProtoReflect()))
	for name, tc := range map[string]struct {
		m  proto.Message
		ok bool
	}{
		"every field set":          {full, true},
		"nothing set":              {dynamicpb.NewMessage(all), true},
		"proto2, nothing set":      {dynamicpb.NewMessage(p2), true},
		"proto2, some set":         {p2Full, true},
		"proto2, invalid UTF-8":    {p2BadUTF8, false},
		"timestamp past 9999":      {badTS, false},
		"timestamp negative nanos": {badNanos, false},
		"timestamp nanos of 1e9":   {wholeSecondOfNanos, false},
		"another well-known type":  {dur, true},
		"a compiled-in shop type":  {&shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 4200, Currency: "EUR", Items: []*shopv1.LineItem{{Sku: "s", Quantity: 2, PriceCents: 2100}}}, true},
		"a Timestamp at top level": {timestamppb.New(time.Date(2026, 11, 24, 1, 2, 3, 4000, time.UTC)), true},
		"a shop type, nothing set": {&shopv1.PaymentCaptured{}, true},
	} {
		t.Run(name, func(t *testing.T) {
			if ok := checkLikeProtojson(t, tc.m); ok != tc.ok {
				t.Fatalf("marshalled without error: %v, want %v", ok, tc.ok)
			}
		})
	}
}

// TestDecodeRefusesWhatSinksCannotWrite: a protobuf payload that decodes
// but that protojson would refuse to write must not pass the edge, or every
// sink would dead-letter it.
func TestDecodeRefusesWhatSinksCannotWrite(t *testing.T) {
	all, p2, _ := jsonTestTypes(t)
	reg, err := New(all.ParentFile())
	if err != nil {
		t.Fatal(err)
	}
	for _, ts := range []*timestamppb.Timestamp{{Nanos: 1_938_227_200}, {Seconds: 253402300800}} {
		m := dynamicpb.NewMessage(all)
		m.Set(all.Fields().ByName("ts"), protoreflect.ValueOfMessage(ts.ProtoReflect()))
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.Parse(loadedType, ContentTypeProtobuf, data); err != nil {
			t.Fatalf("Parse: %v; want the payload to decode", err)
		}
		for name, decode := range map[string]func() error{
			"Decode":    func() error { _, err := reg.Decode(loadedType, ContentTypeProtobuf, data); return err },
			"Canonical": func() error { _, err := reg.Canonical(loadedType, ContentTypeProtobuf, data); return err },
		} {
			if err := decode(); err == nil || !strings.Contains(err.Error(), "cannot be written as JSON") {
				t.Errorf("%s of timestamp %v: got error %v, want one saying it cannot be written as JSON", name, ts, err)
			}
		}
	}
	// Only messages that can hold such values pay for the check.
	for md, want := range map[protoreflect.MessageDescriptor]bool{
		all: true, p2: true, (&shopv1.OrderPlaced{}).ProtoReflect().Descriptor(): false,
	} {
		if got := jsonMayFail(md); got != want {
			t.Errorf("jsonMayFail(%s) = %v, want %v", md.FullName(), got, want)
		}
	}
}

// FuzzMarshalJSON checks MarshalJSON against protojson on every message the
// fuzzer's bytes decode to, as All and as the proto2 P2.
func FuzzMarshalJSON(f *testing.F) {
	all, p2, _ := jsonTestTypes(f)
	for _, m := range []proto.Message{fullAll(all, 1), fullAll(all, 0), dynamicpb.NewMessage(all)} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("\x12\x03\xff\xfe\xfd")) // P2.s, invalid UTF-8
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, md := range []protoreflect.MessageDescriptor{all, p2} {
			m := dynamicpb.NewMessage(md)
			if err := unmarshalProto(proto.UnmarshalOptions{DiscardUnknown: true}, data, m); err != nil {
				continue
			}
			checkLikeProtojson(t, m)
		}
	})
}

// FuzzLoadedType runs the registry's decoders over a type loaded at run
// time, a dynamic message with a field of every kind, where generated code
// does not help: none may panic, and what Decode takes must survive
// Canonical and JSON unchanged.
func FuzzLoadedType(f *testing.F) {
	all, _, _ := jsonTestTypes(f)
	reg, err := New(all.ParentFile())
	if err != nil {
		f.Fatal(err)
	}
	for _, m := range []proto.Message{fullAll(all, 1), fullAll(all, 0), dynamicpb.NewMessage(all)} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(false, b)
		js, err := MarshalJSON(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(true, js)
	}
	f.Add(true, []byte(`{"map_i32_msg":{"-1":{"ts":"2026-11-24T00:00:00.5Z"}},"rep_db":["NaN",1e300]}`))
	f.Fuzz(func(t *testing.T, isJSON bool, data []byte) {
		ct := ContentTypeProtobuf
		if isJSON {
			ct = ContentTypeJSON
		}
		_, _ = reg.Parse(loadedType, ct, data)
		_, _ = reg.JSON(loadedType, ct, data)
		m, err := reg.Decode(loadedType, ct, data)
		if err != nil {
			if _, cerr := reg.Canonical(loadedType, ct, data); cerr == nil {
				t.Fatalf("Canonical took a payload Decode refused (%v)", err)
			}
			return
		}
		canon, err := reg.Canonical(loadedType, ct, data)
		if err != nil {
			t.Fatalf("Canonical: got error %v for a payload Decode took", err)
		}
		m2, err := reg.Decode(loadedType, ContentTypeProtobuf, canon)
		if err != nil {
			t.Fatalf("Decode(Canonical): got error %v, want none", err)
		}
		js, err := reg.JSON(loadedType, ct, data)
		if err != nil {
			t.Fatalf("JSON: got error %v for a payload Decode took", err)
		}
		m3, err := reg.Decode(loadedType, ContentTypeJSON, js)
		if err != nil {
			t.Fatalf("Decode(JSON): got error %v for %s, want none", err, js)
		}
		for name, got := range map[string]proto.Message{"Decode(Canonical)": m2, "Decode(JSON)": m3} {
			if diff := cmp.Diff(m, got, protocmp.Transform(), cmpopts.EquateNaNs()); diff != "" {
				t.Fatalf("%s differs from Decode (-want +got):\n%s", name, diff)
			}
		}
	})
}

func BenchmarkMarshalJSON(b *testing.B) {
	m := &shopv1.OrderPlaced{OrderId: "o-123456", CustomerId: "cust-42", AmountCents: 4200, Currency: "EUR",
		Items: []*shopv1.LineItem{{Sku: "sku-1", Quantity: 2, PriceCents: 1000}, {Sku: "sku-2", Quantity: 1, PriceCents: 2200}}}
	b.Run("MarshalJSON", func(b *testing.B) {
		for b.Loop() {
			if _, err := MarshalJSON(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		for b.Loop() {
			if _, err := jsonOut.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestNullValueInAMapIsNotPlain: protojson writes a NullValue as null, in a
// map too, so a message holding one is not written by the direct encoder.
func TestNullValueInAMapIsNotPlain(t *testing.T) {
	files := new(protoregistry.Files)
	if err := files.RegisterFile(structpb.File_google_protobuf_struct_proto); err != nil {
		t.Fatal(err)
	}
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name: proto.String("nm.proto"), Package: proto.String("nm"), Syntax: proto.String("proto3"),
		Dependency: []string{"google/protobuf/struct.proto"},
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("M"),
			Field: []*descriptorpb.FieldDescriptorProto{{Name: proto.String("m"), Number: proto.Int32(1),
				Type: descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum(),
				TypeName: proto.String(".nm.M.MEntry")}},
			NestedType: []*descriptorpb.DescriptorProto{{
				Name: proto.String("MEntry"),
				Field: []*descriptorpb.FieldDescriptorProto{
					{Name: proto.String("key"), Number: proto.Int32(1), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: opt},
					{Name: proto.String("value"), Number: proto.Int32(2), Type: descriptorpb.FieldDescriptorProto_TYPE_ENUM.Enum(), Label: opt,
						TypeName: proto.String(".google.protobuf.NullValue")},
				},
				Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
			}},
		}},
	}, files)
	if err != nil {
		t.Fatal(err)
	}
	md := fd.Messages().Get(0)
	if plainJSON(md) {
		t.Error("plainJSON: true for a map of NullValue")
	}
	m := dynamicpb.NewMessage(md)
	m.Mutable(md.Fields().Get(0)).Map().Set(protoreflect.ValueOfString("k").MapKey(), protoreflect.ValueOfEnum(0))
	checkLikeProtojson(t, m)
}
