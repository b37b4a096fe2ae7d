package schemas

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
)

// checkJSONWire fails t unless the JSON path reads data as md into the
// message protojson reads, or gives up, and unless what it calls canonical
// is what proto.Marshal writes, of a dynamic message and of md's generated
// type, if it has one. It reports whether the path read it.
func checkJSONWire(t testing.TB, data []byte, md protoreflect.MessageDescriptor) bool {
	t.Helper()
	p := newJSONPlan(md)
	if p == nil {
		t.Fatalf("%s has no JSON plan", md.FullName())
	}
	b, isCanonical, ok := appendJSONWire(nil, data, p)
	if !ok {
		return false
	}
	if isCanonical {
		ms := []proto.Message{dynamicpb.NewMessage(md)}
		if mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName()); err == nil && mt.Descriptor() == md {
			ms = append(ms, mt.New().Interface())
		}
		for _, m := range ms {
			if err := proto.Unmarshal(b, m); err != nil {
				t.Fatalf("JSON path wrote wire bytes that do not decode for %s: %v", data, err)
			}
			if want, err := canonical.Marshal(m); err != nil || !bytes.Equal(b, want) {
				t.Fatalf("JSON path called its writing of %s canonical:\n got  %x\n want %x (%v), of a %T", data, b, want, err, m)
			}
		}
	}
	got := dynamicpb.NewMessage(md)
	if err := proto.Unmarshal(b, got); err != nil {
		t.Fatalf("JSON path wrote wire bytes that do not decode for %s: %v", data, err)
	}
	want := dynamicpb.NewMessage(md)
	if err := protojson.Unmarshal(data, want); err != nil {
		t.Fatalf("JSON path read %s where protojson fails: %v", data, err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("JSON path differs from protojson for %s:\n got  %v\n want %v", data, got, want)
	}
	return true
}

// jsonWireCases are payloads of jt.All, by name, and whether the JSON path
// takes them: those it takes, it must read as protojson does, and it must
// give up on the others (most of which protojson refuses).
var jsonWireCases = []struct {
	name  string
	data  string
	taken bool
}{
	{"empty", `{}`, true},
	{"space around and between", " \t\n{ \"b\" : true ,\r\n\"i32\":1 } \n", true},
	{"every plain kind", `{"b":true,"i32":-7,"s32":-2147483648,"sf32":42,"u32":4294967295,"f32":9,"i64":-9223372036854775808,` +
		`"s64":-1,"sf64":9007199254740993,"u64":18446744073709551615,"f64":3,"str":"é 漢 😀 </script>","en":"E_NEG",` +
		`"camelName":"x","repI32":[0,-1,1073741824],"repStr":["","a"],"repEn":["E_ONE",-3,7],"oStr":"o","optI32":0}`, true},
	{"a raw DEL", "{\"str\":\"\x7f\"}", true},
	{".proto names", `{"rep_i32":[1],"rep_str":["x"],"o_str":"","opt_i32":5}`, true},
	{"zeros", `{"b":false,"i32":0,"u64":0,"str":"","en":"E_ZERO"}`, true},
	{"quoted integers", `{"i32":"-7","u32":"4294967295","i64":"-9223372036854775808","u64":"18446744073709551615","sf64":"1","f32":"2"}`, true},
	{"enum by number", `{"en":-3}`, true},
	{"enum by a number it does not name", `{"en":12}`, true},
	{"nested messages", `{"msg":{"msg":{"i32":3,"repMsg":[{"b":true},{}]}},"repMsg":[{"str":"a"}]}`, true},
	{"a oneof member that is a message", `{"oMsg":{"i32":1}}`, true},
	// A nested message is written after a length of one byte, moved along
	// for a longer one.
	{"a nested message of 127 bytes", `{"msg":{"str":"` + strings.Repeat("x", 125) + `"},"i32":1}`, true},
	{"a nested message of 128 bytes", `{"msg":{"str":"` + strings.Repeat("x", 126) + `"},"i32":1}`, true},
	{"a nested message of 3 length bytes", `{"repMsg":[{"str":"a"},{"msg":{"str":"` + strings.Repeat("y", 20000) + `"},"i32":2},{"str":"b"}]}`, true},
	{"empty arrays", `{"repI32":[],"repMsg":[]}`, true},
	{"both names of a field", `{"repI32":[1],"rep_i32":[2]}`, false},
	{"a field twice", `{"i32":1,"i32":2}`, false},
	{"two members of a oneof", `{"oStr":"a","oMsg":{}}`, false},
	{"an unknown name", `{"nope":1}`, false},
	{"a name of another case", `{"REP_I32":[1]}`, false},
	{"null", `{"i32":null}`, false},
	{"null in a list", `{"repStr":[null]}`, false},
	{"an escape", `{"str":"a\nb"}`, false},
	{"an escaped name", `{"st\u0072":"x"}`, false},
	{"invalid UTF-8", "{\"str\":\"\xff\"}", false},
	{"a raw control character", "{\"str\":\"\x01\"}", false},
	{"an int32 out of range", `{"i32":2147483648}`, false},
	{"an int32 at its lowest less one", `{"i32":-2147483649}`, false},
	{"a uint64 out of range", `{"u64":18446744073709551616}`, false},
	{"a negative uint32", `{"u32":-1}`, false},
	{"minus zero", `{"i32":-0}`, false},
	{"a leading zero", `{"i32":01}`, false},
	{"a fraction", `{"i32":1.0}`, false},
	{"an exponent", `{"i32":1e2}`, false},
	{"a quoted integer with space", `{"i32":" 1"}`, false},
	{"a quoted enum number", `{"en":"1"}`, false},
	{"an enum name it does not hold", `{"en":"E_TWO"}`, false},
	{"a float", `{"fl":1}`, false},
	{"a double", `{"db":1}`, false},
	{"bytes", `{"by":"AAE="}`, false},
	{"a timestamp", `{"ts":"2024-01-01T00:00:00Z"}`, false},
	{"a map", `{"mapStrI64":{"a":"1"}}`, false},
	{"a string for a bool", `{"b":"true"}`, false},
	{"a bool run on", `{"b":truex}`, false},
	{"trailing data", `{"b":true} {}`, false},
	{"a trailing comma", `{"b":true,}`, false},
	{"an array at the top", `[{}]`, false},
	{"not closed", `{"b":true`, false},
	{"empty input", ``, false},
}

func TestJSONWire(t *testing.T) {
	all, _, _ := jsonTestTypes(t)
	for _, c := range jsonWireCases {
		t.Run(c.name, func(t *testing.T) {
			if taken := checkJSONWire(t, []byte(c.data), all); taken != c.taken {
				t.Errorf("taken = %v, want %v", taken, c.taken)
			}
		})
	}
	t.Run("nesting past the limit", func(t *testing.T) {
		deep := strings.Repeat(`{"msg":`, wireMaxDepth) + `{}` + strings.Repeat(`}`, wireMaxDepth)
		if checkJSONWire(t, []byte(deep), all) {
			t.Error("the JSON path took nesting past wireMaxDepth")
		}
		ok := strings.Repeat(`{"msg":`, wireMaxDepth-1) + `{}` + strings.Repeat(`}`, wireMaxDepth-1)
		if !checkJSONWire(t, []byte(ok), all) {
			t.Error("the JSON path gave up on nesting within wireMaxDepth")
		}
	})
}

// TestJSONWireCanonical: the JSON path tells which of its writings are
// canonical; of the others, proto.Marshal leaves out a zero value of a
// field without presence, packs a list, orders fields by number and writes
// a oneof's last (dynamic messages). checkJSONWire checks each claim.
func TestJSONWireCanonical(t *testing.T) {
	all, _, _ := jsonTestTypes(t)
	for _, c := range []struct {
		data      string
		canonical bool
	}{
		{`{}`, true},
		{`{"b":true,"i32":-1,"str":"x","en":"E_ONE","camelName":"y"}`, true},
		{`{"msg":{"i32":3,"repMsg":[{}]},"repStr":["","a"],"repMsg":[{"str":"a"}]}`, true},
		{`{"optI32":0}`, true},
		{`{"repI32":[]}`, true},
		{`{"msg":{}}`, true},
		{`{"i32":1,"b":true}`, false},
		{`{"i32":0}`, false},
		{`{"str":""}`, false},
		{`{"b":false}`, false},
		{`{"en":"E_ZERO"}`, false},
		{`{"en":0}`, false},
		{`{"msg":{"u64":0}}`, false},
		{`{"repI32":[1]}`, false},
		{`{"repEn":["E_ONE"]}`, false},
		{`{"oStr":"a"}`, false},
	} {
		if !checkJSONWire(t, []byte(c.data), all) {
			t.Fatalf("%s: the JSON path gave up", c.data)
		}
		if _, isCanonical, _ := appendJSONWire(nil, []byte(c.data), newJSONPlan(all)); isCanonical != c.canonical {
			t.Errorf("%s: canonical = %v, want %v", c.data, isCanonical, c.canonical)
		}
	}
	placed := (&shopv1.OrderPlaced{}).ProtoReflect().Descriptor()
	bench := []byte(`{"orderId":"o-1","customerId":"c-1","amountCents":4200,"currency":"EUR","items":[{"sku":"tea-1","quantity":2,"priceCents":2100}]}`)
	if !checkJSONWire(t, bench, placed) {
		t.Fatal("the JSON path gave up on an order")
	}
	if _, isCanonical, _ := appendJSONWire(nil, bench, newJSONPlan(placed)); !isCanonical {
		t.Errorf("an order in field order, without zeros: not canonical, want canonical")
	}
}

// TestRegistryTakesTheJSONPath checks that the shop types have a plan, that
// Decode of the payload spate bench sends gives what protojson gives, and
// that a payload the path gives up on still gets protojson's error.
func TestRegistryTakesTheJSONPath(t *testing.T) {
	r := Builtin()
	for _, typ := range r.Types() {
		if r.jsonIn[typ] == nil {
			t.Errorf("%s has no JSON plan", typ)
		}
	}
	const typ = "shop.order.placed.v1"
	data := `{"orderId":"o-1","customerId":"c-1","amountCents":4200,"currency":"EUR","items":[{"sku":"tea-1","quantity":2,"priceCents":2100}]}`
	if !checkJSONWire(t, []byte(data), (&shopv1.OrderPlaced{}).ProtoReflect().Descriptor()) {
		t.Fatal("the JSON path gave up on the bench payload")
	}
	m, err := r.Decode(typ, ContentTypeJSON, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 4200, Currency: "EUR",
		Items: []*shopv1.LineItem{{Sku: "tea-1", Quantity: 2, PriceCents: 2100}}}
	if !proto.Equal(m, want) {
		t.Errorf("Decode = %v, want %v", m, want)
	}
	_, err = r.Decode(typ, ContentTypeJSON, []byte(`{"orderId":"o-1","order_id":"o-2"}`))
	if err == nil || !strings.Contains(err.Error(), "duplicate field") {
		t.Errorf("Decode of a field named twice: err = %v, want protojson's duplicate field", err)
	}
}

// FuzzJSONWire checks the JSON path against protojson on whatever bytes the
// fuzzer makes, as jt.All and as a shop type.
func FuzzJSONWire(f *testing.F) {
	all, _, _ := jsonTestTypes(f)
	for _, c := range jsonWireCases {
		f.Add([]byte(c.data))
	}
	f.Add([]byte(`{"orderId":"o-1","customerId":"c-1","amountCents":"4200","currency":"EUR","items":[{"sku":"tea-1","quantity":2,"priceCents":2100}]}`))
	placed := (&shopv1.OrderPlaced{}).ProtoReflect().Descriptor()
	f.Fuzz(func(t *testing.T, data []byte) {
		checkJSONWire(t, data, all)
		checkJSONWire(t, data, placed)
	})
}

// TestJSONWireNamesAsProtojsonFindsThem: names that protodesc takes but
// protojson does not find each field by (a JSON name two fields claim, one
// in brackets) send the message the long way, and so does every message
// that reaches one; the messages that refer back to it keep to protojson's
// reading too.
func TestJSONWireNamesAsProtojsonFindsThem(t *testing.T) {
	field := func(name string, n int32, msgType, jsonName string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(n),
			Type: descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()}
		if msgType != "" {
			f.Type, f.TypeName = descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(), proto.String(msgType)
		}
		if jsonName != "" {
			f.JsonName = proto.String(jsonName)
		}
		return f
	}
	message := func(name string, fields ...*descriptorpb.FieldDescriptorProto) *descriptorpb.DescriptorProto {
		return &descriptorpb.DescriptorProto{Name: proto.String(name), Field: fields}
	}
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{Name: proto.String("names.proto"), Package: proto.String("names"),
		Syntax: proto.String("proto3"), MessageType: []*descriptorpb.DescriptorProto{
			// T reaches A, whose names clash, through B, which refers back to A.
			message("T", field("a", 1, ".names.A", ""), field("b", 2, ".names.B", "")),
			message("A", field("b", 1, ".names.B", ""), field("foo", 2, "", "bar"), field("baz", 3, "", "foo")),
			message("B", field("a", 1, ".names.A", ""), field("n", 2, "", "")),
			message("Bracket", field("x", 1, "", "[x]")),
		}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	msgs := fd.Messages()
	for _, name := range []protoreflect.Name{"A", "Bracket"} {
		if newJSONPlan(msgs.ByName(name)) != nil {
			t.Errorf("%s has a JSON plan, want none: protojson does not find its fields by each of their names", name)
		}
	}
	cases := map[protoreflect.Name][]string{
		"T":       {`{"b":{"a":{"foo":5}}}`, `{"b":{"n":1},"a":{"bar":2}}`},
		"B":       {`{"a":{"foo":5}}`, `{"n":1}`},
		"Bracket": {`{"[x]":1}`, `{"x":1}`},
	}
	for name, datas := range cases {
		md := msgs.ByName(name)
		if newJSONPlan(md) == nil {
			continue // the long way: protojson's own
		}
		for _, data := range datas {
			checkJSONWire(t, []byte(data), md)
		}
	}
	if !checkJSONWire(t, []byte(`{"n":1}`), msgs.ByName("B")) {
		t.Error("B's own plain fields took the long way")
	}
}
