package schemas

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
)

// checkWireJSON fails t unless the wire path writes what the long way
// (decode with protobuf-go, then MarshalJSON) writes for data as md, or
// gives up. It reports whether the wire path wrote it.
func checkWireJSON(t testing.TB, data []byte, md protoreflect.MessageDescriptor) bool {
	t.Helper()
	got, ok := appendWireJSON(nil, data, newWirePlan(md), 0)
	m := dynamicpb.NewMessage(md)
	err := unmarshalProto(proto.UnmarshalOptions{}, data, m)
	var want []byte
	if err == nil {
		want, err = MarshalJSON(m)
	}
	switch {
	case ok && err != nil:
		t.Fatalf("wire path wrote %s where the long way fails: %v", got, err)
	case ok && !bytes.Equal(got, want):
		t.Fatalf("wire path differs from the long way:\n got  %s\n want %s", got, want)
	}
	return ok
}

// FuzzWireJSON checks the wire path against the long way on whatever bytes
// the fuzzer makes, as All (every kind of field) and as a shop type.
func FuzzWireJSON(f *testing.F) {
	all, _, _ := jsonTestTypes(f)
	for _, m := range []proto.Message{fullAll(all, 2), fullAll(all, 0), dynamicpb.NewMessage(all)} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	placed, err := proto.Marshal(&shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 4200, Currency: "EUR",
		Items: []*shopv1.LineItem{{Sku: "s", Quantity: 2, PriceCents: 2100}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(placed)
	for _, b := range wireCases(f, all) {
		f.Add(b)
	}
	placedMD := (&shopv1.OrderPlaced{}).ProtoReflect().Descriptor()
	f.Fuzz(func(t *testing.T, data []byte) {
		checkWireJSON(t, data, all)
		checkWireJSON(t, data, placedMD)
	})
}

// wireCases are encodings that a marshaller of protobuf-go would not write
// but a decoder takes, by name.
func wireCases(t testing.TB, all protoreflect.MessageDescriptor) map[string][]byte {
	t.Helper()
	num := func(name string) protowire.Number { return all.Fields().ByName(protoreflect.Name(name)).Number() }
	varint := func(name string, v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, num(name), protowire.VarintType), v)
	}
	bytesField := func(name string, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num(name), protowire.BytesType), v)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	packed := protowire.AppendVarint(protowire.AppendVarint(nil, 5), 1<<40) // int32 truncates 1<<40
	entry := func(key, val []byte) []byte { return bytesField("map_str_i64", cat(key, val)) }
	key := func(k string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), k)
	}
	val := func(v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), v)
	}
	ts := func(secs, nanos uint64) []byte {
		return cat(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), secs),
			protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), nanos))
	}
	unknown := protowire.AppendString(protowire.AppendTag(nil, 999, protowire.BytesType), "skipped")
	fixed := func(name string, typ protowire.Type, bits uint64) []byte {
		b := protowire.AppendTag(nil, num(name), typ)
		if typ == protowire.Fixed32Type {
			return protowire.AppendFixed32(b, uint32(bits))
		}
		return protowire.AppendFixed64(b, bits)
	}
	return map[string][]byte{
		"fields out of order":                  cat(varint("u32", 3), varint("b", 1), bytesField("str", []byte("x"))),
		"packed and unpacked elements mixed":   cat(varint("rep_i32", 1), bytesField("rep_i32", packed), varint("rep_i32", 2)),
		"an empty packed run":                  bytesField("rep_i32", nil),
		"a scalar twice":                       cat(varint("i32", 1), varint("i32", 2)),
		"a message twice":                      cat(bytesField("msg", varint("b", 1)), bytesField("msg", varint("i32", 2))),
		"two members of a oneof":               cat(bytesField("o_str", []byte("a")), bytesField("o_msg", nil)),
		"a zero in a oneof":                    bytesField("o_str", nil),
		"an optional at zero":                  varint("opt_i32", 0),
		"an unknown field":                     cat(unknown, varint("b", 1), unknown),
		"a known field of another wire type":   bytesField("i32", []byte{1}),
		"a map entry without key or value":     entry(nil, nil),
		"map entries out of order":             cat(entry(key("b"), val(2)), entry(key("a"), nil), entry(nil, val(1))),
		"a map key twice":                      cat(entry(key("a"), val(1)), entry(key("a"), val(2))),
		"a map entry's value twice":            entry(key("a"), cat(val(1), val(2))),
		"an empty message value of a map":      bytesField("map_i32_msg", nil),
		"invalid UTF-8":                        bytesField("str", []byte{0xff}),
		"invalid UTF-8 in a map key":           entry(key("\xff"), nil),
		"a timestamp with fields out of order": bytesField("ts", cat(protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 5), protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 7))),
		"a timestamp with an unknown field":    bytesField("ts", cat(unknown, ts(7, 0))),
		"a timestamp out of range":             bytesField("ts", ts(253402300800, 0)),
		"a timestamp of negative nanos":        bytesField("ts", ts(0, uint64(1<<64-1))),
		"a negative int32, ten bytes":          varint("i32", uint64(1<<64-7)),
		"an unknown negative enum value":       varint("en", uint64(1<<64-9)),
		"packed enums":                         bytesField("rep_en", []byte{1, 5, 0x7d}),
		"a negative zero double":               fixed("db", protowire.Fixed64Type, 1<<63),
		"a signalling NaN float":               fixed("fl", protowire.Fixed32Type, 0x7f800001),
		"packed doubles":                       bytesField("rep_db", protowire.AppendFixed64(protowire.AppendFixed64(nil, 1<<63), 0x7ff0000000000000)),
		"packed doubles, a byte short":         bytesField("rep_db", make([]byte, 7)),
		"packed timestamps":                    bytesField("rep_ts", []byte{8, 1}),
		"a truncated varint":                   []byte{0x08, 0x80},
		"a truncated length":                   cat(protowire.AppendTag(nil, num("str"), protowire.BytesType), []byte{5, 'a'}),
		"field number zero":                    []byte{0x00, 0x01},
		"an end group at top level":            protowire.AppendTag(nil, 5, protowire.EndGroupType),
		"an unknown group":                     cat(protowire.AppendTag(nil, 998, protowire.StartGroupType), varint("b", 1), protowire.AppendTag(nil, 998, protowire.EndGroupType)),
	}
}

// TestWireJSON: on encodings a decoder takes but protobuf-go's marshaller
// does not write, the wire path writes the long way's JSON or gives up; and
// it does not give up on what is common.
func TestWireJSON(t *testing.T) {
	all, _, _ := jsonTestTypes(t)
	mustTake := map[string]bool{
		"fields out of order": true, "packed and unpacked elements mixed": true, "an empty packed run": true,
		"a zero in a oneof": true, "an optional at zero": true, "an unknown field": true,
		"a map entry without key or value": true, "map entries out of order": true, "an empty message value of a map": true,
		"a timestamp with fields out of order": true, "a timestamp with an unknown field": true, "a negative int32, ten bytes": true,
		"an unknown group": true, "an unknown negative enum value": true, "packed enums": true, "a negative zero double": true,
		"a signalling NaN float": true, "packed doubles": true,
	}
	for name, data := range wireCases(t, all) {
		t.Run(name, func(t *testing.T) {
			if took := checkWireJSON(t, data, all); mustTake[name] && !took {
				t.Fatal("the wire path gave up")
			}
		})
	}
	for name, m := range map[string]proto.Message{
		"every field set": fullAll(all, 2),
		"nothing set":     dynamicpb.NewMessage(all),
		"a shop type":     &shopv1.OrderPlaced{OrderId: "o-1", Items: []*shopv1.LineItem{{Sku: "s", Quantity: 2}, {}}},
		"a Timestamp":     timestamppb.New(time.Date(2026, 11, 24, 1, 2, 3, 4000, time.UTC)),
	} {
		t.Run(name, func(t *testing.T) {
			data, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if !checkWireJSON(t, data, m.ProtoReflect().Descriptor()) {
				t.Fatal("the wire path gave up")
			}
		})
	}
}

// TestWirePlans: only proto3 messages of plain fields take the wire path.
func TestWirePlans(t *testing.T) {
	all, p2, withDuration := jsonTestTypes(t)
	placed := (&shopv1.OrderPlaced{}).ProtoReflect().Descriptor()
	for md, want := range map[protoreflect.MessageDescriptor]bool{all: true, placed: true, p2: false, withDuration: false} {
		if got := newWirePlan(md) != nil; got != want {
			t.Errorf("newWirePlan(%s) != nil: %v, want %v", md.FullName(), got, want)
		}
	}
	if Builtin().wire["shop.order.placed.v1"] == nil {
		t.Error("the builtin registry has no wire plan for shop.order.placed.v1")
	}
}

// BenchmarkRegistryJSON compares Registry.JSON of a protobuf payload, which
// takes the wire path, with the long way: decode, then MarshalJSON.
//
//	go test -run '^$' -bench RegistryJSON ./schemas/
func BenchmarkRegistryJSON(b *testing.B) {
	reg := Builtin()
	data, err := proto.Marshal(&shopv1.OrderPlaced{OrderId: "o-123456", CustomerId: "cust-42", AmountCents: 4200, Currency: "EUR",
		Items: []*shopv1.LineItem{{Sku: "sku-1", Quantity: 2, PriceCents: 1000}, {Sku: "sku-2", Quantity: 1, PriceCents: 2200}}})
	if err != nil {
		b.Fatal(err)
	}
	const typ = "shop.order.placed.v1"
	b.Run("wire", func(b *testing.B) {
		for b.Loop() {
			if _, err := reg.JSON(typ, ContentTypeProtobuf, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode-then-marshal", func(b *testing.B) {
		for b.Loop() {
			m, err := reg.Parse(typ, ContentTypeProtobuf, data)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := MarshalJSON(m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestWireJSONWideMessage: a message of 129 fields, the one numbered 1
// declared last, and others numbered past 128.
func TestWireJSONWideMessage(t *testing.T) {
	var fields []*descriptorpb.FieldDescriptorProto
	for n := range int32(129) {
		fields = append(fields, &descriptorpb.FieldDescriptorProto{
			Name: proto.String(fmt.Sprint("f", (n+1)%129+1)), Number: proto.Int32((n+1)%129 + 1),
			Type:  descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum(),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		})
	}
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name: proto.String("wide.proto"), Package: proto.String("wide"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("Wide"), Field: fields}},
	}, new(protoregistry.Files))
	if err != nil {
		t.Fatal(err)
	}
	md := fd.Messages().Get(0)
	for _, n := range []protowire.Number{1, 2, 128, 129} {
		data := protowire.AppendVarint(protowire.AppendTag(nil, n, protowire.VarintType), 5)
		if !checkWireJSON(t, data, md) {
			t.Fatalf("field %d: the wire path gave up", n)
		}
	}
}

// TestWireJSONLargeMap: 100,000 entries of distinct keys, in reverse order,
// sorted as the long way sorts them. (Looking for each key among the entries
// before it took minutes.)
func TestWireJSONLargeMap(t *testing.T) {
	all, _, _ := jsonTestTypes(t)
	n := all.Fields().ByName("map_u64_en").Number()
	var data []byte
	for i := uint64(100_000); i > 0; i-- {
		e := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), i)
		data = protowire.AppendBytes(protowire.AppendTag(data, n, protowire.BytesType), e)
	}
	if !checkWireJSON(t, data, all) {
		t.Fatal("the wire path gave up")
	}
}
