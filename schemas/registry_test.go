package schemas_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	validate "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const placed = "shop.order.placed.v1"

// order is the message the JSON and protobuf fixtures below all encode.
func order() *shopv1.OrderPlaced {
	return &shopv1.OrderPlaced{
		OrderId:     "o-1",
		CustomerId:  "c-7",
		AmountCents: 1250,
		Currency:    "EUR",
		Items: []*shopv1.LineItem{
			{Sku: "sku-1", Quantity: 2, PriceCents: 500},
			{Sku: "sku-2", Quantity: 1, PriceCents: 250},
		},
	}
}

const (
	orderCamel = `{"orderId":"o-1","customerId":"c-7","amountCents":"1250","currency":"EUR",
		"items":[{"sku":"sku-1","quantity":2,"priceCents":"500"},{"sku":"sku-2","quantity":1,"priceCents":250}]}`
	orderSnake = `{"order_id":"o-1","customer_id":"c-7","amount_cents":1250,"currency":"EUR",
		"items":[{"sku":"sku-1","quantity":2,"price_cents":500},{"sku":"sku-2","quantity":1,"price_cents":"250"}]}`
)

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatalf("marshal %T: %v", m, err)
	}
	return b
}

// withUnknown appends field 99, which no shop message has, to b.
func withUnknown(b []byte) []byte {
	b = protowire.AppendTag(b, 99, protowire.BytesType)
	return protowire.AppendString(b, "surprise")
}

// itemsWithUnknown returns an OrderPlaced whose second line item carries
// field 99.
func itemsWithUnknown(t testing.TB) []byte {
	t.Helper()
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, "o-1")
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	b = protowire.AppendBytes(b, marshal(t, &shopv1.LineItem{Sku: "sku-1"}))
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	b = protowire.AppendBytes(b, withUnknown(marshal(t, &shopv1.LineItem{Sku: "sku-2"})))
	return b
}

func TestDecode(t *testing.T) {
	reg := schemas.Builtin()
	orderPB := marshal(t, order())

	// Field 4 before field 1: valid protobuf, but not the canonical order.
	var shuffled []byte
	shuffled = protowire.AppendTag(shuffled, 4, protowire.BytesType)
	shuffled = protowire.AppendString(shuffled, "EUR")
	shuffled = protowire.AppendTag(shuffled, 1, protowire.BytesType)
	shuffled = protowire.AppendString(shuffled, "o-1")
	shuffled = protowire.AppendTag(shuffled, 2, protowire.BytesType)
	shuffled = protowire.AppendString(shuffled, "c-7")

	tests := []struct {
		name        string
		eventType   string
		contentType string
		data        string
		want        proto.Message // nil when an error is wanted
		wantIs      error         // the error wraps it
		wantInErr   string        // the error message holds it
	}{
		{name: "json lowerCamel", eventType: placed, contentType: "application/json", data: orderCamel, want: order()},
		{name: "json proto names", eventType: placed, contentType: "application/json", data: orderSnake, want: order()},
		{name: "json with parameters", eventType: placed, contentType: "application/json; charset=utf-8", data: orderCamel, want: order()},
		{name: "json suffix", eventType: placed, contentType: "application/vnd.shop+json", data: orderCamel, want: order()},
		{name: "json upper-case media type", eventType: placed, contentType: "Application/JSON", data: orderCamel, want: order()},
		{name: "json empty object", eventType: placed, contentType: "application/json", data: `{}`, wantInErr: "orderId: must be at least 1 characters"},
		{
			name: "json other type", eventType: "shop.order.cancelled.v1", contentType: "application/json",
			data: `{"orderId":"o-1","reason":"changed mind"}`,
			want: &shopv1.OrderCancelled{OrderId: "o-1", Reason: "changed mind"},
		},
		{
			name: "json unknown field", eventType: placed, contentType: "application/json",
			data: `{"orderId":"o-1","discountCode":"X"}`, wantInErr: `unknown field "discountCode"`,
		},
		{
			name: "json unknown nested field", eventType: placed, contentType: "application/json",
			data: `{"items":[{"sku":"s","colour":"red"}]}`, wantInErr: `unknown field "colour"`,
		},
		{
			name: "json duplicate field", eventType: placed, contentType: "application/json",
			data: `{"orderId":"o-1","orderId":"o-2"}`, wantInErr: `duplicate field "orderId"`,
		},
		{
			name: "json duplicate field under both names", eventType: placed, contentType: "application/json",
			data: `{"orderId":"o-1","order_id":"o-2"}`, wantInErr: `duplicate field "order_id"`,
		},
		{
			name: "json wrong value type", eventType: placed, contentType: "application/json",
			data: `{"amountCents":true}`, wantInErr: "field amountCents",
		},
		{
			name: "json string for number", eventType: placed, contentType: "application/json",
			data: `{"items":[{"quantity":"two"}]}`, wantInErr: "field quantity",
		},
		{
			name: "json out of range", eventType: placed, contentType: "application/json",
			data: `{"items":[{"quantity":3000000000}]}`, wantInErr: "field quantity",
		},
		{name: "json malformed", eventType: placed, contentType: "application/json", data: `{"orderId":`, wantInErr: "unexpected EOF"},
		{name: "json not an object", eventType: placed, contentType: "application/json", data: `[]`, wantInErr: "unexpected token ["},
		{name: "unknown type", eventType: "shop.order.shipped.v1", contentType: "application/json", data: `{}`, wantIs: schemas.ErrUnknownType},
		{name: "empty type", eventType: "", data: "", wantIs: schemas.ErrUnknownType},
		{name: "unsupported content type", eventType: placed, contentType: "text/plain", data: orderCamel, wantIs: schemas.ErrContentType},
		{name: "xml content type", eventType: placed, contentType: "application/xml", data: orderCamel, wantIs: schemas.ErrContentType},
		{name: "malformed content type", eventType: placed, contentType: "application/json; =", data: orderCamel, wantIs: schemas.ErrContentType},
		{name: "protobuf", eventType: placed, contentType: "application/protobuf", data: string(orderPB), want: order()},
		{name: "protobuf x-protobuf", eventType: placed, contentType: "application/x-protobuf", data: string(orderPB), want: order()},
		{name: "protobuf by default", eventType: placed, contentType: "", data: string(orderPB), want: order()},
		{name: "protobuf empty", eventType: placed, contentType: "", data: "", wantInErr: "order_id: must be at least 1 characters"},
		{
			name: "protobuf field order", eventType: placed, contentType: "application/protobuf", data: string(shuffled),
			want: &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-7", Currency: "EUR"},
		},
		{
			name: "protobuf unknown field", eventType: placed, contentType: "application/protobuf",
			data: string(withUnknown(orderPB)), wantInErr: "shop.v1.OrderPlaced: unknown field",
		},
		{
			name: "protobuf unknown field in line item", eventType: placed, contentType: "application/protobuf",
			data: string(itemsWithUnknown(t)), wantInErr: "items[1]: unknown field",
		},
		{
			name: "protobuf known field with wrong wire type", eventType: placed, contentType: "application/protobuf",
			data: string(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 7)), wantInErr: "unknown field",
		},
		{
			name: "protobuf truncated", eventType: placed, contentType: "application/protobuf",
			data: string(orderPB[:len(orderPB)-3]), wantInErr: "cannot parse invalid wire-format data",
		},
		{
			name: "protobuf invalid utf-8", eventType: placed, contentType: "application/protobuf",
			data: string(protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "\xff")), wantInErr: "invalid UTF-8",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := reg.Decode(tt.eventType, tt.contentType, []byte(tt.data))
			if tt.want != nil {
				if err != nil {
					t.Fatalf("Decode: got error %v, want none", err)
				}
				if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
					t.Errorf("Decode: message mismatch (-want +got):\n%s", diff)
				}
				return
			}
			if err == nil {
				t.Fatalf("Decode: got %v, want an error", got)
			}
			if got != nil {
				t.Errorf("Decode: got message %v with error, want nil", got)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Decode: got error %v, want one wrapping %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantInErr) {
				t.Errorf("Decode: got error %q, want one naming %q", err, tt.wantInErr)
			}
			if strings.HasPrefix(err.Error(), "proto:") {
				t.Errorf("Decode: got error %q, want it without the proto: prefix", err)
			}
		})
	}
}

// Decode enforces the schema's buf.validate constraints and reports every
// field at fault, nested ones by their path, named as the payload's
// encoding names them.
func TestDecodeViolations(t *testing.T) {
	reg := schemas.Builtin()
	bad := order()
	bad.AmountCents = -5
	bad.Currency = "euro"
	bad.Items[1].PriceCents = -1
	asJSON, err := protojson.Marshal(bad)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		contentType                  string
		data                         []byte
		amountCents, itemsPriceCents string
	}{
		{"application/protobuf", marshal(t, bad), "amount_cents", "items[1].price_cents"},
		{"application/json", asJSON, "amountCents", "items[1].priceCents"},
	} {
		_, err := reg.Decode(placed, tt.contentType, tt.data)
		verr, ok := errors.AsType[*schemas.ViolationsError](err)
		if !ok {
			t.Fatalf("Decode %s: got error %v, want a *ViolationsError", tt.contentType, err)
		}
		want := []schemas.Violation{
			{Field: tt.amountCents, Rule: "int64.gte", Detail: "must be greater than or equal to 0"},
			{Field: "currency", Rule: "string.pattern", Detail: "does not match regex pattern `^[A-Z]{3}$`"},
			{Field: tt.itemsPriceCents, Rule: "int64.gte", Detail: "must be greater than or equal to 0"},
		}
		if diff := cmp.Diff(want, verr.Violations); diff != "" {
			t.Errorf("violations of %s (-want +got):\n%s", tt.contentType, diff)
		}
	}
	// Sinks read what the edge accepted, and events from before a
	// constraint was added: Parse does not enforce them.
	if _, err := reg.Parse(placed, "application/protobuf", marshal(t, bad)); err != nil {
		t.Errorf("Parse: got error %v, want none", err)
	}
}

func TestCanonical(t *testing.T) {
	reg := schemas.Builtin()
	want := marshal(t, order())
	tests := []struct {
		name        string
		contentType string
		data        []byte
	}{
		{"json lowerCamel", "application/json", []byte(orderCamel)},
		{"json proto names", "application/json", []byte(orderSnake)},
		{"protobuf", "application/protobuf", want},
		// Non-deterministic encoders may order fields as they like; the
		// canonical form does not depend on it.
		{"protobuf reordered", "application/protobuf", firstFieldLast(t, want)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := reg.Canonical(placed, tt.contentType, tt.data)
			if err != nil {
				t.Fatalf("Canonical: got error %v, want none", err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Canonical: bytes mismatch (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("invalid", func(t *testing.T) {
		got, err := reg.Canonical(placed, "application/json", []byte(`{"nope":1}`))
		if err == nil {
			t.Fatalf("Canonical: got %x, want an error", got)
		}
		if got != nil {
			t.Errorf("Canonical: got %x with error, want nil", got)
		}
	})

	// Canonical protobuf takes a short way; it refuses what Decode refuses.
	bad := order()
	bad.Items[1].Quantity = 0
	for _, tt := range []struct {
		name, wantInErr string
		data            []byte
	}{
		{"unknown field last", "shop.v1.OrderPlaced: unknown field", withUnknown(want)},
		{"unknown field in line item", "items[1]: unknown field", itemsWithUnknown(t)},
		{"constraint", "items[1].quantity: must be greater than 0", marshal(t, bad)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := reg.Canonical(placed, "application/protobuf", tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.wantInErr) {
				t.Errorf("Canonical: got %x, error %v; want an error naming %q", got, err, tt.wantInErr)
			}
		})
	}
}

// firstFieldLast moves the first field of the protobuf message b to its end.
func firstFieldLast(t testing.TB, b []byte) []byte {
	t.Helper()
	_, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		t.Fatalf("consume tag: %v", protowire.ParseError(n))
	}
	m := protowire.ConsumeFieldValue(0, typ, b[n:])
	if m < 0 {
		t.Fatalf("consume field: %v", protowire.ParseError(m))
	}
	return append(append([]byte(nil), b[n+m:]...), b[:n+m]...)
}

func TestJSON(t *testing.T) {
	reg := schemas.Builtin()
	tests := []struct {
		name        string
		eventType   string
		contentType string
		data        []byte
		want        map[string]any
	}{
		{
			name: "from json", eventType: placed, contentType: "application/json", data: []byte(orderCamel),
			want: map[string]any{
				"order_id": "o-1", "customer_id": "c-7", "amount_cents": "1250", "currency": "EUR",
				"items": []any{
					map[string]any{"sku": "sku-1", "quantity": 2.0, "price_cents": "500"},
					map[string]any{"sku": "sku-2", "quantity": 1.0, "price_cents": "250"},
				},
			},
		},
		{
			name: "from protobuf", eventType: placed, contentType: "application/protobuf", data: marshal(t, order()),
			want: map[string]any{
				"order_id": "o-1", "customer_id": "c-7", "amount_cents": "1250", "currency": "EUR",
				"items": []any{
					map[string]any{"sku": "sku-1", "quantity": 2.0, "price_cents": "500"},
					map[string]any{"sku": "sku-2", "quantity": 1.0, "price_cents": "250"},
				},
			},
		},
		{
			name: "unpopulated fields present", eventType: placed, contentType: "", data: nil,
			want: map[string]any{
				"order_id": "", "customer_id": "", "amount_cents": "0", "currency": "", "items": []any{},
			},
		},
		{
			name: "other type", eventType: "shop.payment.captured.v1", contentType: "application/json",
			data: []byte(`{"paymentId":"p-1","orderId":"o-1","amountCents":99,"currency":"EUR"}`),
			want: map[string]any{"payment_id": "p-1", "order_id": "o-1", "amount_cents": "99", "currency": "EUR"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := reg.JSON(tt.eventType, tt.contentType, tt.data)
			if err != nil {
				t.Fatalf("JSON: got error %v, want none", err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("JSON: got %s, want a JSON object: %v", b, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("JSON: mismatch (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("invalid", func(t *testing.T) {
		got, err := reg.JSON("shop.nothing.v1", "application/json", []byte(`{}`))
		if !errors.Is(err, schemas.ErrUnknownType) {
			t.Errorf("JSON: got %s, %v, want an error wrapping ErrUnknownType", got, err)
		}
	})
}

func TestTypes(t *testing.T) {
	got := schemas.Builtin().Types()
	want := []string{"shop.order.cancelled.v1", "shop.order.placed.v1", "shop.payment.captured.v1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Types: mismatch (-want +got):\n%s", diff)
	}
}

func TestMessage(t *testing.T) {
	reg := schemas.Builtin()
	mt, err := reg.Message(placed)
	if err != nil {
		t.Fatalf("Message(%q): got error %v, want none", placed, err)
	}
	// Compiled-in messages decode to their generated Go types.
	if got, want := mt.New().Interface(), proto.Message(&shopv1.OrderPlaced{}); !cmp.Equal(got, want, protocmp.Transform()) {
		t.Errorf("Message(%q).New(): got %T, want %T", placed, got, want)
	}
	if _, ok := mt.New().Interface().(*shopv1.OrderPlaced); !ok {
		t.Errorf("Message(%q).New(): got %T, want *shopv1.OrderPlaced", placed, mt.New().Interface())
	}
	if _, err := reg.Message("LineItem"); !errors.Is(err, schemas.ErrUnknownType) {
		t.Errorf("Message(LineItem): got error %v, want one wrapping ErrUnknownType", err)
	}
}

// dynamicFile builds a proto file, dyn/v1/<name>.proto in package dyn.v1, of
// one message Thing (with a nested message Part) registered as eventType and
// Part registered as partType (none when empty). Thing's thing_id carries a
// constraint: at least one character.
func dynamicFile(t testing.TB, name, eventType, partType string) protoreflect.FileDescriptor {
	t.Helper()
	opts := func(typ string) *descriptorpb.MessageOptions {
		if typ == "" {
			return nil
		}
		o := &descriptorpb.MessageOptions{}
		proto.SetExtension(o, spatev1.E_EventType, typ)
		return o
	}
	nonEmpty := &descriptorpb.FieldOptions{}
	proto.SetExtension(nonEmpty, validate.E_Field, validate.FieldRules_builder{
		String: validate.StringRules_builder{MinLen: proto.Uint64(1)}.Build(),
	}.Build())
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	fdp := &descriptorpb.FileDescriptorProto{
		Name:       proto.String("dyn/v1/" + name + ".proto"),
		Package:    proto.String("dyn.v1." + name),
		Syntax:     proto.String("proto3"),
		Dependency: []string{"buf/validate/validate.proto", "spate/v1/event.proto"},
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("Thing"),
			Field: []*descriptorpb.FieldDescriptorProto{
				{Name: proto.String("thing_id"), JsonName: proto.String("thingId"), Number: proto.Int32(1), Type: str, Label: opt, Options: nonEmpty},
			},
			NestedType: []*descriptorpb.DescriptorProto{{
				Name: proto.String("Part"),
				Field: []*descriptorpb.FieldDescriptorProto{
					{Name: proto.String("part_id"), JsonName: proto.String("partId"), Number: proto.Int32(1), Type: str, Label: opt},
				},
				Options: opts(partType),
			}},
			Options: opts(eventType),
		}},
	}
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatalf("build %s: %v", fdp.GetName(), err)
	}
	return fd
}

func TestNewDynamic(t *testing.T) {
	fd := dynamicFile(t, "ok", "dyn.thing.made.v1", "dyn.part.made.v1")
	reg, err := schemas.New(shopv1.File_shop_v1_shop_proto, fd)
	if err != nil {
		t.Fatalf("New: got error %v, want none", err)
	}
	want := []string{"dyn.part.made.v1", "dyn.thing.made.v1", "shop.order.cancelled.v1", "shop.order.placed.v1", "shop.payment.captured.v1"}
	if diff := cmp.Diff(want, reg.Types()); diff != "" {
		t.Errorf("Types: mismatch (-want +got):\n%s", diff)
	}

	m, err := reg.Decode("dyn.thing.made.v1", "application/json", []byte(`{"thingId":"t-1"}`))
	if err != nil {
		t.Fatalf("Decode: got error %v, want none", err)
	}
	if _, ok := m.(*dynamicpb.Message); !ok {
		t.Errorf("Decode: got %T, want *dynamicpb.Message", m)
	}
	if got := m.ProtoReflect().Get(m.ProtoReflect().Descriptor().Fields().ByName("thing_id")).String(); got != "t-1" {
		t.Errorf("Decode: got thing_id %q, want %q", got, "t-1")
	}
	b, err := reg.JSON("dyn.part.made.v1", "application/json", []byte(`{"partId":"p-1"}`))
	if err != nil {
		t.Fatalf("JSON: got error %v, want none", err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("JSON: got %s, want a JSON object: %v", b, err)
	}
	if diff := cmp.Diff(map[string]any{"part_id": "p-1"}, got); diff != "" {
		t.Errorf("JSON: mismatch (-want +got):\n%s", diff)
	}
	if _, err := reg.Decode("dyn.thing.made.v1", "application/json", []byte(`{"partId":"p-1"}`)); err == nil {
		t.Errorf("Decode: got no error for a field of another message, want one")
	}
}

func TestNewDuplicateType(t *testing.T) {
	tests := []struct {
		name   string
		files  []protoreflect.FileDescriptor
		naming []string // the error names these
	}{
		{
			name:   "same file twice",
			files:  []protoreflect.FileDescriptor{shopv1.File_shop_v1_shop_proto, shopv1.File_shop_v1_shop_proto},
			naming: []string{"shop/v1/shop.proto", `"shop.order.placed.v1"`, "shop.v1.OrderPlaced"},
		},
		{
			name:   "another file claims a shop type",
			files:  []protoreflect.FileDescriptor{shopv1.File_shop_v1_shop_proto, dynamicFile(t, "thief", placed, "")},
			naming: []string{"dyn/v1/thief.proto", `"shop.order.placed.v1"`, "shop.v1.OrderPlaced", "dyn.v1.thief.Thing"},
		},
		{
			name:   "a nested message claims its parent's type",
			files:  []protoreflect.FileDescriptor{dynamicFile(t, "nest", "dyn.thing.made.v1", "dyn.thing.made.v1")},
			naming: []string{"dyn/v1/nest.proto", `"dyn.thing.made.v1"`, "dyn.v1.nest.Thing", "dyn.v1.nest.Thing.Part"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg, err := schemas.New(tt.files...)
			if err == nil {
				t.Fatalf("New: got registry of %v, want an error", reg.Types())
			}
			for _, s := range tt.naming {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("New: got error %q, want it to name %s", err, s)
				}
			}
		})
	}
}

func TestNewEmpty(t *testing.T) {
	// A file without the option contributes nothing; an empty option value is
	// no registration either.
	reg, err := schemas.New(spatev1.File_spate_v1_event_proto, dynamicFile(t, "empty", "", ""))
	if err != nil {
		t.Fatalf("New: got error %v, want none", err)
	}
	if got := reg.Types(); len(got) != 0 {
		t.Errorf("Types: got %v, want none", got)
	}
}

var fuzzContentTypes = []string{
	"",
	"application/protobuf",
	"application/x-protobuf",
	"application/json",
	"application/cloudevents+json; charset=utf-8",
	"text/plain",
}

func FuzzDecode(f *testing.F) {
	f.Add(uint8(0), marshal(f, order()))
	f.Add(uint8(1), withUnknown(marshal(f, order())))
	f.Add(uint8(2), itemsWithUnknown(f))
	f.Add(uint8(3), []byte(orderCamel))
	f.Add(uint8(4), []byte(orderSnake))
	f.Add(uint8(3), []byte(`{"orderId":"o-1","orderId":"o-2"}`))
	f.Add(uint8(3), []byte(`{"items":[{"quantity":1e3}],"amountCents":"-9223372036854775808"}`))
	f.Add(uint8(5), []byte(`{}`))
	reg := schemas.Builtin()
	f.Fuzz(func(t *testing.T, ct uint8, data []byte) {
		contentType := fuzzContentTypes[int(ct)%len(fuzzContentTypes)]
		m, err := reg.Decode(placed, contentType, data)
		if err != nil {
			return
		}
		canon, err := reg.Canonical(placed, contentType, data)
		if err != nil {
			t.Fatalf("Canonical: got error %v for a payload Decode took", err)
		}
		m2, err := reg.Decode(placed, schemas.ContentTypeProtobuf, canon)
		if err != nil {
			t.Fatalf("Decode(Canonical): got error %v, want none", err)
		}
		if !proto.Equal(m, m2) {
			t.Fatalf("Decode(Canonical): got %v, want %v", m2, m)
		}
		canon2, err := reg.Canonical(placed, schemas.ContentTypeProtobuf, canon)
		if err != nil || string(canon2) != string(canon) {
			t.Fatalf("Canonical(Canonical): got %x, %v, want %x", canon2, err, canon)
		}
		js, err := reg.JSON(placed, contentType, data)
		if err != nil {
			t.Fatalf("JSON: got error %v for a payload Decode took", err)
		}
		m3, err := reg.Decode(placed, schemas.ContentTypeJSON, js)
		if err != nil {
			t.Fatalf("Decode(JSON): got error %v for %s, want none", err, js)
		}
		if !proto.Equal(m, m3) {
			t.Fatalf("Decode(JSON): got %v, want %v", m3, m)
		}
	})
}

func TestParseKeepsWhatDecodeRefuses(t *testing.T) {
	reg := schemas.Builtin()
	known, err := proto.Marshal(&shopv1.OrderCancelled{OrderId: "o-1", Reason: "r"})
	if err != nil {
		t.Fatal(err)
	}
	newer := protowire.AppendString(protowire.AppendTag(known, 99, protowire.BytesType), "from a newer schema")
	for _, tc := range []struct {
		ct   string
		data []byte
	}{
		{schemas.ContentTypeProtobuf, newer},
		{schemas.ContentTypeJSON, []byte(`{"orderId":"o-1","reason":"r","refund":true}`)},
	} {
		if _, err := reg.Decode("shop.order.cancelled.v1", tc.ct, tc.data); err == nil {
			t.Errorf("%s: Decode accepted a field the schema does not know", tc.ct)
		}
		m, err := reg.Parse("shop.order.cancelled.v1", tc.ct, tc.data)
		if err != nil {
			t.Fatalf("%s: Parse: %v", tc.ct, err)
		}
		if got := m.(*shopv1.OrderCancelled); got.OrderId != "o-1" || got.Reason != "r" {
			t.Errorf("%s: Parse = %v, want order o-1 with reason r", tc.ct, got)
		}
	}
}

// TestMalformedMapEntryOfLoadedType feeds a type loaded at run time (a
// dynamic message) a map entry whose key comes twice, the second time with
// the wrong wire type, on which google.golang.org/protobuf panics: every
// decoding path must answer an error instead.
func TestMalformedMapEntryOfLoadedType(t *testing.T) {
	opts := &descriptorpb.MessageOptions{}
	proto.SetExtension(opts, spatev1.E_EventType, "dyn.labelled.v1")
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:       proto.String("dyn/v1/labelled.proto"),
		Package:    proto.String("dyn.v1.labelled"),
		Syntax:     proto.String("proto3"),
		Dependency: []string{"spate/v1/event.proto"},
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("Labelled"),
			Field: []*descriptorpb.FieldDescriptorProto{{
				Name: proto.String("labels"), Number: proto.Int32(1), Label: descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum(),
				Type: descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(), TypeName: proto.String(".dyn.v1.labelled.Labelled.LabelsEntry"),
			}},
			NestedType: []*descriptorpb.DescriptorProto{{
				Name: proto.String("LabelsEntry"),
				Field: []*descriptorpb.FieldDescriptorProto{
					{Name: proto.String("key"), Number: proto.Int32(1), Type: str, Label: opt},
					{Name: proto.String("value"), Number: proto.Int32(2), Type: str, Label: opt},
				},
				Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
			}},
			Options: opts,
		}},
	}, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := schemas.New(fd)
	if err != nil {
		t.Fatal(err)
	}
	entry := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "k")
	entry = protowire.AppendVarint(protowire.AppendTag(entry, 1, protowire.VarintType), 0)
	data := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), entry)
	for name, decode := range map[string]func() error{
		"Decode": func() error { _, err := reg.Decode("dyn.labelled.v1", schemas.ContentTypeProtobuf, data); return err },
		"Parse":  func() error { _, err := reg.Parse("dyn.labelled.v1", schemas.ContentTypeProtobuf, data); return err },
		"Canonical": func() error {
			_, err := reg.Canonical("dyn.labelled.v1", schemas.ContentTypeProtobuf, data)
			return err
		},
		"JSON": func() error { _, err := reg.JSON("dyn.labelled.v1", schemas.ContentTypeProtobuf, data); return err },
	} {
		if err := decode(); err == nil || !strings.Contains(err.Error(), "invalid wire-format data") {
			t.Errorf("%s: got error %v, want one about invalid wire-format data", name, err)
		}
	}
}

func TestLoadDescriptorSet(t *testing.T) {
	fd := dynamicFile(t, "ok", "dyn.thing.made.v1", "dyn.part.made.v1")
	set := setWith(protodesc.ToFileDescriptorProto(fd))
	b, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := schemas.Load(b)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := []string{"dyn.part.made.v1", "dyn.thing.made.v1", "shop.order.cancelled.v1", "shop.order.placed.v1", "shop.payment.captured.v1"}
	if diff := cmp.Diff(want, reg.Types()); diff != "" {
		t.Errorf("Types (-want +got):\n%s", diff)
	}
	if _, err := reg.Canonical("dyn.thing.made.v1", "application/json", []byte(`{"thingId":"t-1"}`)); err != nil {
		t.Errorf("a loaded type does not decode: %v", err)
	}
	_, err = reg.Canonical("dyn.thing.made.v1", "application/json", []byte(`{"thingId":""}`))
	if verr, ok := errors.AsType[*schemas.ViolationsError](err); !ok || len(verr.Violations) != 1 || verr.Violations[0].Field != "thingId" {
		t.Errorf("a loaded type's constraint: got error %v, want a violation of thingId (named as JSON names it)", err)
	}

	set.File = set.File[len(set.File)-1:] // without its imports
	b, _ = proto.Marshal(set)
	if _, err := schemas.Load(b); err == nil {
		t.Error("Load of a set without the files it imports: no error")
	}
	if _, err := schemas.Load([]byte("not protobuf")); err == nil {
		t.Error("Load of garbage: no error")
	}
}

// TestLoadedExtensions: a payload may hold extensions declared in a loaded
// set, here a proto2 message's, by number in protobuf and by name in JSON:
// the edge takes it, keeping them in its canonical encoding, and sinks
// write them.
func TestLoadedExtensions(t *testing.T) {
	opts := &descriptorpb.MessageOptions{}
	proto.SetExtension(opts, spatev1.E_EventType, "ext.noted.v1")
	fdp := &descriptorpb.FileDescriptorProto{
		Name:       proto.String("ext/v1/noted.proto"),
		Package:    proto.String("ext.v1"),
		Syntax:     proto.String("proto2"),
		Dependency: []string{"spate/v1/event.proto"},
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("Noted"),
			Field: []*descriptorpb.FieldDescriptorProto{{Name: proto.String("id"), Number: proto.Int32(1),
				Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()}},
			ExtensionRange: []*descriptorpb.DescriptorProto_ExtensionRange{{Start: proto.Int32(100), End: proto.Int32(200)}},
			Options:        opts,
		}},
		Extension: []*descriptorpb.FieldDescriptorProto{{Name: proto.String("note"), Number: proto.Int32(100), Extendee: proto.String(".ext.v1.Noted"),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()}},
	}
	b, err := proto.Marshal(setWith(fdp))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := schemas.Load(b)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	data := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "n-1")
	data = protowire.AppendString(protowire.AppendTag(data, 100, protowire.BytesType), "hello")
	var first []byte // the canonical encoding, all alike
	for _, c := range []struct{ contentType, payload string }{
		{schemas.ContentTypeProtobuf, string(data)},
		{schemas.ContentTypeJSON, `{"id":"n-1","[ext.v1.note]":"hello"}`},
	} {
		canonical, err := reg.Canonical("ext.noted.v1", c.contentType, []byte(c.payload))
		if err != nil {
			t.Errorf("%s: Canonical: %v, want the extension taken", c.contentType, err)
			continue
		}
		if first == nil {
			first = canonical
		} else if !bytes.Equal(canonical, first) {
			t.Errorf("%s: Canonical = %x, want %x as of the others", c.contentType, canonical, first)
		}
		js, err := reg.JSON("ext.noted.v1", schemas.ContentTypeProtobuf, canonical)
		if err != nil || !strings.Contains(string(js), `"[ext.v1.note]":"hello"`) {
			t.Errorf("%s: what sinks write: %s (%v), want the extension", c.contentType, js, err)
		}
	}
	if again, err := reg.Canonical("ext.noted.v1", schemas.ContentTypeProtobuf, first); err != nil || !bytes.Equal(again, first) {
		t.Errorf("the canonical encoding, again: %x (%v), want it as it is", again, err)
	}
	if _, err := reg.Decode("ext.noted.v1", schemas.ContentTypeJSON, []byte(`{"id":"n-1","[ext.v1.nope]":"x"}`)); err == nil {
		t.Error("an extension the set does not declare: taken, want refused")
	}
}

// A set may declare a name a compiled-in file declares too, under a path
// of its own (a copy of shop.proto, say, whose event types were renamed):
// it loads, as it did before the registry looked up extensions.
func TestLoadTakesNamesDeclaredTwice(t *testing.T) {
	opts := &descriptorpb.MessageOptions{}
	proto.SetExtension(opts, spatev1.E_EventType, "mine.order.placed.v1")
	b, err := proto.Marshal(setWith(&descriptorpb.FileDescriptorProto{
		Name: proto.String("mine/shop.proto"), Package: proto.String("shop.v1"), Syntax: proto.String("proto3"),
		Dependency: []string{"spate/v1/event.proto"},
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("LineItem")}, // as shop/v1/shop.proto's
			{Name: proto.String("Mine"), Options: opts},
		},
	}))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := schemas.Load(b)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if _, err := reg.Canonical("mine.order.placed.v1", schemas.ContentTypeJSON, []byte(`{}`)); err != nil {
		t.Errorf("its event type: %v", err)
	}
}

// setWith returns a descriptor set of files and of what user files import
// from Spate and protobuf: as buf build writes one.
func setWith(files ...*descriptorpb.FileDescriptorProto) *descriptorpb.FileDescriptorSet {
	set := &descriptorpb.FileDescriptorSet{}
	for _, f := range []protoreflect.FileDescriptor{
		descriptorpb.File_google_protobuf_descriptor_proto, timestamppb.File_google_protobuf_timestamp_proto,
		durationpb.File_google_protobuf_duration_proto, fieldmaskpb.File_google_protobuf_field_mask_proto,
		validate.File_buf_validate_validate_proto, spatev1.File_spate_v1_event_proto,
	} {
		set.File = append(set.File, protodesc.ToFileDescriptorProto(f))
	}
	set.File = append(set.File, files...)
	return set
}

// BenchmarkCanonical measures what the edge does to every payload: decode
// strictly, check constraints, encode canonically.
//
//	go test -run '^$' -bench Canonical ./schemas/
func BenchmarkCanonical(b *testing.B) {
	reg := schemas.Builtin()
	for _, bc := range []struct {
		name, contentType string
		data              []byte
	}{
		{"protobuf", "application/protobuf", marshal(b, order())},
		{"json", "application/json", []byte(orderCamel)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := reg.Canonical(placed, bc.contentType, bc.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A set whose copy of a compiled-in file of event types was changed is
// refused: Spate would use its own, and the change would pass unnoticed.
// An unchanged copy, source code info aside, loads.
func TestLoadRefusesAChangedCompiledInFile(t *testing.T) {
	load := func(shop *descriptorpb.FileDescriptorProto) error {
		b, err := proto.Marshal(setWith(shop))
		if err != nil {
			t.Fatal(err)
		}
		_, err = schemas.Load(b)
		return err
	}
	same := protodesc.ToFileDescriptorProto(shopv1.File_shop_v1_shop_proto)
	same.SourceCodeInfo = &descriptorpb.SourceCodeInfo{Location: []*descriptorpb.SourceCodeInfo_Location{{Path: []int32{4, 0}, Span: []int32{1, 0, 5}}}}
	if err := load(same); err != nil {
		t.Errorf("Load of an unchanged shop/v1/shop.proto: %v", err)
	}
	changed := protodesc.ToFileDescriptorProto(shopv1.File_shop_v1_shop_proto)
	changed.MessageType[0].Field = append(changed.MessageType[0].Field, &descriptorpb.FieldDescriptorProto{
		Name: proto.String("note"), JsonName: proto.String("note"), Number: proto.Int32(99),
		Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()})
	if err := load(changed); err == nil || !strings.Contains(err.Error(), "shop/v1/shop.proto differs") {
		t.Errorf("Load of a changed shop/v1/shop.proto: error %v, want one naming the file", err)
	}
}
