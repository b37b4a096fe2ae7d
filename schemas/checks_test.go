package schemas

import (
	"strings"
	"testing"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
)

// checkTypes returns messages of the file cq.proto: Rules, with a
// constraint of each kind a plan checks (fields 1 to 17), and messages
// each with one constraint a plan leaves to protovalidate, by name.
func checkTypes(t testing.TB) (rules protoreflect.MessageDescriptor, left map[string]protoreflect.MessageDescriptor) {
	t.Helper()
	opt, rep := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	field := func(name string, n int32, typ descriptorpb.FieldDescriptorProto_Type, label *descriptorpb.FieldDescriptorProto_Label, rules string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(n), Type: typ.Enum(), Label: label}
		if rules != "" {
			r := &validate.FieldRules{}
			if err := prototext.Unmarshal([]byte(rules), r); err != nil {
				t.Fatalf("%s: %v", rules, err)
			}
			f.Options = &descriptorpb.FieldOptions{}
			proto.SetExtension(f.Options, validate.E_Field, r)
		}
		return f
	}
	msg := func(f *descriptorpb.FieldDescriptorProto, typeName string) *descriptorpb.FieldDescriptorProto {
		f.TypeName = proto.String(typeName)
		return f
	}
	const (
		str   = descriptorpb.FieldDescriptorProto_TYPE_STRING
		i64   = descriptorpb.FieldDescriptorProto_TYPE_INT64
		mtype = descriptorpb.FieldDescriptorProto_TYPE_MESSAGE
	)
	rulesFields := []*descriptorpb.FieldDescriptorProto{
		field("s1", 1, str, opt, `string: {min_len: 1, max_len: 5}`),
		field("s2", 2, str, opt, `string: {pattern: "^[a-z]+é?$"}`),
		field("i32", 3, descriptorpb.FieldDescriptorProto_TYPE_INT32, opt, `int32: {gt: -3, lt: 10}`),
		field("i64", 4, i64, opt, `int64: {gte: 0}`),
		field("u32", 5, descriptorpb.FieldDescriptorProto_TYPE_UINT32, opt, `uint32: {lte: 7}`),
		field("u64", 6, descriptorpb.FieldDescriptorProto_TYPE_UINT64, opt, `uint64: {gt: 5}`),
		field("si", 7, descriptorpb.FieldDescriptorProto_TYPE_SINT32, opt, `sint32: {gte: -5, lte: 5}`),
		field("f32", 8, descriptorpb.FieldDescriptorProto_TYPE_FIXED32, opt, `fixed32: {gt: 0}`),
		field("sf64", 9, descriptorpb.FieldDescriptorProto_TYPE_SFIXED64, opt, `sfixed64: {lt: 0}`),
		field("opt_s", 10, str, opt, `string: {min_len: 2}`),
		field("rep", 11, str, rep, `repeated: {min_items: 1, max_items: 3}`),
		msg(field("sub", 12, mtype, opt, ""), ".cq.Rules"),
		msg(field("reps", 13, mtype, rep, `repeated: {max_items: 2}`), ".cq.Rules"),
		field("o_a", 14, str, opt, `string: {min_len: 3}`),
		field("o_b", 15, i64, opt, `int64: {gt: 100}`),
		field("plain", 16, str, opt, ""),
		msg(field("m", 17, mtype, rep, ""), ".cq.Rules.MEntry"),
	}
	rulesFields[9].OneofIndex, rulesFields[9].Proto3Optional = proto.Int32(1), proto.Bool(true)
	rulesFields[13].OneofIndex, rulesFields[14].OneofIndex = proto.Int32(0), proto.Int32(0)
	entry := &descriptorpb.DescriptorProto{Name: proto.String("MEntry"),
		Field:   []*descriptorpb.FieldDescriptorProto{field("key", 1, str, opt, ""), field("value", 2, str, opt, "")},
		Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)}}
	msgs := []*descriptorpb.DescriptorProto{{Name: proto.String("Rules"), Field: rulesFields, NestedType: []*descriptorpb.DescriptorProto{entry},
		OneofDecl: []*descriptorpb.OneofDescriptorProto{{Name: proto.String("o")}, {Name: proto.String("_opt_s")}}}}
	leftRules := map[string]string{
		"Required":       `required: true`,
		"Cel":            `cel: {id: "x", expression: "this.size() > 1"}`,
		"Ignore":         `ignore: IGNORE_IF_ZERO_VALUE, string: {min_len: 1}`,
		"ExactLen":       `string: {len: 3}`,
		"Prefix":         `string: {min_len: 1, prefix: "a"}`,
		"In":             `int64: {in: [1, 2]}`,
		"Const":          `int64: {const: 1}`,
		"OutsideRange":   `int64: {gt: 10, lt: 5}`,
		"KindMismatched": `int32: {gt: 1}`,
		"Unique":         `repeated: {unique: true}`,
		"Items":          `repeated: {items: {string: {min_len: 1}}}`,
	}
	for name, r := range leftRules {
		f := field("f", 1, str, opt, r)
		if name == "Unique" || name == "Items" {
			f.Label = rep
		}
		if name == "In" || name == "Const" || name == "OutsideRange" {
			f.Type = i64.Enum()
		}
		msgs = append(msgs, &descriptorpb.DescriptorProto{Name: proto.String(name), Field: []*descriptorpb.FieldDescriptorProto{f}})
	}
	// A message rule; and a message holding one that a plan leaves.
	celMsg := &descriptorpb.MessageOptions{}
	proto.SetExtension(celMsg, validate.E_Message, &validate.MessageRules{})
	if err := prototext.Unmarshal([]byte(`cel: {id: "y", expression: "true"}`), proto.GetExtension(celMsg, validate.E_Message).(*validate.MessageRules)); err != nil {
		t.Fatal(err)
	}
	msgs = append(msgs,
		&descriptorpb.DescriptorProto{Name: proto.String("MessageCel"), Field: []*descriptorpb.FieldDescriptorProto{field("f", 1, str, opt, "")}, Options: celMsg},
		&descriptorpb.DescriptorProto{Name: proto.String("HoldsLeft"), Field: []*descriptorpb.FieldDescriptorProto{msg(field("f", 1, mtype, rep, ""), ".cq.Prefix")}})
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{Name: proto.String("cq.proto"), Package: proto.String("cq"),
		Syntax: proto.String("proto3"), Dependency: []string{"buf/validate/validate.proto"}, MessageType: msgs}, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatal(err)
	}
	left = map[string]protoreflect.MessageDescriptor{}
	for name := range leftRules {
		left[name] = fd.Messages().ByName(protoreflect.Name(name))
	}
	left["MessageCel"], left["HoldsLeft"] = fd.Messages().ByName("MessageCel"), fd.Messages().ByName("HoldsLeft")
	return fd.Messages().ByName("Rules"), left
}

// checkAgrees fails t unless the plan of md says of the message data
// decodes to what protovalidate says: it passes, or it does not.
func checkAgrees(t testing.TB, v protovalidate.Validator, md protoreflect.MessageDescriptor, data []byte) {
	t.Helper()
	var m proto.Message = dynamicpb.NewMessage(md)
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName()); err == nil {
		m = mt.New().Interface()
	}
	if proto.Unmarshal(data, m) != nil {
		return
	}
	p := newCheckPlan(md)
	if p == nil {
		t.Fatalf("%s has no plan", md.FullName())
	}
	if passes, err := p.passes(m.ProtoReflect()), v.Validate(m); passes != (err == nil) {
		t.Fatalf("%s %v: the plan says passes %v, protovalidate %v", md.FullName(), prototext.Format(m), passes, err)
	}
}

func TestCheckPlans(t *testing.T) {
	reg := Builtin()
	for _, typ := range reg.Types() {
		if reg.checks[typ] == nil {
			t.Errorf("%s has no plan: protovalidate walks every payload", typ)
		}
	}
	rules, left := checkTypes(t)
	for name, md := range left {
		if newCheckPlan(md) != nil {
			t.Errorf("%s has a plan, want it left to protovalidate", name)
		}
	}
	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	str := func(b []byte, n protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(b, n, protowire.BytesType), s)
	}
	varint := func(b []byte, n protowire.Number, x uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(b, n, protowire.VarintType), x)
	}
	valid := varint(varint(str(str(nil, 1, "ab"), 2, "abé"), 3, 9), 6, 6)
	valid = protowire.AppendFixed32(protowire.AppendTag(valid, 8, protowire.Fixed32Type), 1)
	valid = protowire.AppendFixed64(protowire.AppendTag(valid, 9, protowire.Fixed64Type), ^uint64(0)) // -1
	valid = str(valid, 11, "x")
	cases := map[string][]byte{
		"valid":                     valid,
		"empty: s1 and rep too few": nil,
		"s1 of 5 characters":        str(valid, 1, "ééééé"),
		"s1 of 6 characters":        str(valid, 1, "éééééé"),
		"s2 off its pattern":        str(valid, 2, "Ab"),
		"i32 at its lower bound":    varint(valid, 3, uint64(0xFFFFFFFFFFFFFFFD)), // -3
		"i32 just in":               varint(valid, 3, uint64(0xFFFFFFFFFFFFFFFE)),
		"i64 negative":              varint(valid, 4, ^uint64(0)),
		"u32 over":                  varint(valid, 5, 8),
		"u64 at its bound":          varint(valid, 6, 5),
		"si out":                    varint(valid, 7, protowire.EncodeZigZag(-6)),
		"f32 zero":                  protowire.AppendFixed32(protowire.AppendTag(valid, 8, protowire.Fixed32Type), 0),
		"sf64 zero":                 protowire.AppendFixed64(protowire.AppendTag(valid, 9, protowire.Fixed64Type), 0),
		"opt_s set short":           str(valid, 10, "a"),
		"opt_s set empty":           str(valid, 10, ""),
		"rep of 4":                  str(str(str(valid, 11, "a"), 11, "b"), 11, "c"),
		"sub valid":                 protowire.AppendBytes(protowire.AppendTag(valid, 12, protowire.BytesType), valid),
		"sub invalid":               protowire.AppendBytes(protowire.AppendTag(valid, 12, protowire.BytesType), nil),
		"reps of 3":                 protowire.AppendBytes(protowire.AppendTag(protowire.AppendBytes(protowire.AppendTag(protowire.AppendBytes(protowire.AppendTag(valid, 13, protowire.BytesType), valid), 13, protowire.BytesType), valid), 13, protowire.BytesType), valid),
		"reps holding an invalid":   protowire.AppendBytes(protowire.AppendTag(valid, 13, protowire.BytesType), str(nil, 1, "")),
		"o_a short":                 str(valid, 14, "ab"),
		"o_b low":                   varint(valid, 15, 100),
		"o_b high":                  varint(valid, 15, 101),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) { checkAgrees(t, v, rules, data) })
	}
	// The two outcomes each show.
	if p := newCheckPlan(rules); !p.passes(decoded(t, rules, valid)) || p.passes(decoded(t, rules, nil)) {
		t.Error("the plan does not tell the valid message from the empty one")
	}
}

func decoded(t *testing.T, md protoreflect.MessageDescriptor, data []byte) protoreflect.Message {
	t.Helper()
	m := dynamicpb.NewMessage(md)
	if err := proto.Unmarshal(data, m); err != nil {
		t.Fatal(err)
	}
	return m
}

// FuzzChecks compares the plans with protovalidate on whatever messages
// the fuzzer makes, of Rules and of the shop types.
func FuzzChecks(f *testing.F) {
	rules, _ := checkTypes(f)
	v, err := protovalidate.New()
	if err != nil {
		f.Fatal(err)
	}
	order, err := proto.Marshal(&shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 4200, Currency: "EUR",
		Items: []*shopv1.LineItem{{Sku: "tea-1", Quantity: 2, PriceCents: 2100}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(order)
	f.Add([]byte{})
	shop := []protoreflect.MessageDescriptor{
		(&shopv1.OrderPlaced{}).ProtoReflect().Descriptor(),
		(&shopv1.OrderCancelled{}).ProtoReflect().Descriptor(),
		(&shopv1.PaymentCaptured{}).ProtoReflect().Descriptor(),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAgrees(t, v, rules, data)
		for _, md := range shop {
			checkAgrees(t, v, md, data)
		}
	})
}

// Rules in options decoded with a resolver of their own are a dynamic
// message, not validate.FieldRules: New plans them all the same, and
// their constraints hold.
func TestCheckPlanOfDynamicRules(t *testing.T) {
	rules := &validate.FieldRules{}
	if err := prototext.Unmarshal([]byte(`string: {min_len: 3}`), rules); err != nil {
		t.Fatal(err)
	}
	fieldOpts := &descriptorpb.FieldOptions{}
	proto.SetExtension(fieldOpts, validate.E_Field, rules)
	msgOpts := &descriptorpb.MessageOptions{}
	proto.SetExtension(msgOpts, spatev1.E_EventType, "dr.d.made.v1")
	b, err := proto.Marshal(&descriptorpb.FileDescriptorProto{Name: proto.String("dr.proto"), Package: proto.String("dr"), Syntax: proto.String("proto3"),
		Dependency: []string{"buf/validate/validate.proto", "spate/v1/event.proto"},
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("D"), Options: msgOpts,
			Field: []*descriptorpb.FieldDescriptorProto{{Name: proto.String("s"), Number: proto.Int32(1), Options: fieldOpts,
				Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()}}}}})
	if err != nil {
		t.Fatal(err)
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, f := range []protoreflect.FileDescriptor{descriptorpb.File_google_protobuf_descriptor_proto, durationpb.File_google_protobuf_duration_proto,
		timestamppb.File_google_protobuf_timestamp_proto, fieldmaskpb.File_google_protobuf_field_mask_proto, validate.File_buf_validate_validate_proto} {
		set.File = append(set.File, protodesc.ToFileDescriptorProto(f))
	}
	own, err := protodesc.NewFiles(set)
	if err != nil {
		t.Fatal(err)
	}
	var fdp descriptorpb.FileDescriptorProto
	if err := (proto.UnmarshalOptions{Resolver: dynamicRules{dynamicpb.NewTypes(own)}}).Unmarshal(b, &fdp); err != nil {
		t.Fatal(err)
	}
	if _, dynamic := fdp.MessageType[0].Field[0].Options.ProtoReflect().Get(validate.E_Field.TypeDescriptor()).Message().Interface().(*dynamicpb.Message); !dynamic {
		t.Fatal("the rules were decoded as their Go type; the test wants them dynamic")
	}
	fd, err := protodesc.NewFile(&fdp, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := New(fd)
	if err != nil {
		t.Fatal(err)
	}
	if reg.checks["dr.d.made.v1"] == nil {
		t.Error("no plan of dynamic rules")
	}
	if _, err := reg.Decode("dr.d.made.v1", ContentTypeJSON, []byte(`{"s":"ab"}`)); err == nil || !strings.Contains(err.Error(), "at least 3 characters") {
		t.Errorf(`{"s":"ab"}: %v, want too short`, err)
	}
	if _, err := reg.Decode("dr.d.made.v1", ContentTypeJSON, []byte(`{"s":"abc"}`)); err != nil {
		t.Errorf(`{"s":"abc"}: %v, want taken`, err)
	}
}

// dynamicRules resolves buf.validate's field rules as a dynamic type of
// its own, and other types as compiled in.
type dynamicRules struct{ *dynamicpb.Types }

func (d dynamicRules) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	if xd := validate.E_Field.TypeDescriptor(); message == xd.ContainingMessage().FullName() && field == xd.Number() {
		return d.Types.FindExtensionByNumber(message, field)
	}
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}
