package projection_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/consumers/projection"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
)

func TestLoadExample(t *testing.T) {
	projs, err := projection.Load("spate.yaml", shopv1.ExampleConfig, schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range projs {
		names = append(names, p.Name())
	}
	if got, want := strings.Join(names, " "), "event_log latest counters payments orders"; got != want {
		t.Fatalf("projections %q, want %q", got, want)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown field in statement", `
projections:
  - name: p
    on:
      shop.order.placed.v1: |
        INSERT INTO t
        VALUES (:data.order_id,
                :data.discount)
`, "spate.yaml:8: projection p: on shop.order.placed.v1: parameter :data.discount: shop.v1.OrderPlaced has no field \"discount\""},
		{"unknown parameter", `
projections:
  - name: p
    on:
      shop.order.placed.v1: INSERT INTO t VALUES (:payload)
`, "spate.yaml:5: projection p: on shop.order.placed.v1: unknown parameter :payload"},
		{"path through a scalar", `
projections:
  - name: p
    on:
      shop.order.placed.v1: INSERT INTO t VALUES (:data.currency.code)
`, "currency is not a message"},
		{"unknown type", `
projections:
  - name: p
    on:
      shop.order.shipped.v1: INSERT INTO t VALUES (:id)
`, "spate.yaml:5: projection p: on: unknown event type \"shop.order.shipped.v1\""},
		{"positional parameter", `
projections:
  - name: p
    on:
      shop.order.placed.v1: INSERT INTO t VALUES ($1)
`, "spate.yaml:5: projection p: on shop.order.placed.v1: positional parameter $1"},
		{"no name", `
projections:
  - builtin: latest
`, "spate.yaml:3: projection : name is required"},
		{"declared twice", `
projections:
  - name: latest
    builtin: latest
  - name: latest
    builtin: counters
`, "spate.yaml:5: projection latest: declared twice (first at line 3)"},
		{"unknown builtin", `
projections:
  - name: x
    builtin: everything
`, "unknown builtin \"everything\""},
		{"unknown key", `
projections:
  - name: x
    builtin: latest
    tabel: t
`, "spate.yaml:5: projection x: unknown key \"tabel\"; want one of name, builtin"},
		{"no statements", `
projections:
  - name: x
`, "spate.yaml:3: projection x: on: want a map from event type to statements"},
		{"not yaml", "projections: [", "spate.yaml: yaml:"},
		{"batch type listed twice", `
projections:
  - name: p
    batch:
      - type: [shop.order.placed.v1, shop.order.placed.v1]
        sql: SELECT :id FROM batch
`, "spate.yaml:5: projection p: batch: type shop.order.placed.v1 is listed twice"},
		// A field that only some of the types have is NULL for the others
		// (the example's orders reads :data.customer_id of both order
		// types); one that none has is an error.
		{"batch types none of which has the field", `
projections:
  - name: p
    batch:
      - type: [shop.order.placed.v1, shop.order.cancelled.v1]
        sql: |
          SELECT :data.order_id,
                 :data.discount FROM batch
`, "spate.yaml:8: projection p: batch shop.order.placed.v1,shop.order.cancelled.v1: parameter :data.discount: shop.v1.OrderPlaced has no field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := projection.Load("spate.yaml", []byte(tc.yaml), schemas.Builtin())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// A batch statement over several event types binds each column with one SQL
// type; a field whose type differs between them is refused.
func TestLoadBatchColumnTypesAgree(t *testing.T) {
	reg := testRegistry(t, &descriptorpb.FileDescriptorProto{
		Name: proto.String("two/v1/two.proto"), Package: proto.String("two.v1"), Syntax: proto.String("proto3"),
		Dependency: []string{"spate/v1/event.proto"},
		MessageType: []*descriptorpb.DescriptorProto{
			testMessage("Counted", "two.counted.v1", testField("n", 1, descriptorpb.FieldDescriptorProto_TYPE_INT64)),
			testMessage("Named", "two.named.v1", testField("n", 1, descriptorpb.FieldDescriptorProto_TYPE_STRING)),
		},
	})
	_, err := projection.Load("spate.yaml", []byte(`
projections:
  - name: p
    batch:
      - type: [two.counted.v1, two.named.v1]
        sql: SELECT :data.n FROM batch
`), reg)
	const want = "spate.yaml:6: projection p: batch two.counted.v1,two.named.v1: :data.n is bigint in two.counted.v1 but text in two.named.v1"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Load error = %v, want one containing %q", err, want)
	}
}

// testRegistry returns the registry of file, which may use
// google/protobuf/timestamp.proto and spate/v1/event.proto.
func testRegistry(t *testing.T, file *descriptorpb.FileDescriptorProto) *schemas.Registry {
	t.Helper()
	set, err := proto.Marshal(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
		protodesc.ToFileDescriptorProto(descriptorpb.File_google_protobuf_descriptor_proto),
		protodesc.ToFileDescriptorProto(timestamppb.File_google_protobuf_timestamp_proto),
		protodesc.ToFileDescriptorProto(spatev1.File_spate_v1_event_proto),
		file,
	}})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := schemas.Load(set)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// testMessage declares message name as the payload of eventType.
func testMessage(name, eventType string, fields ...*descriptorpb.FieldDescriptorProto) *descriptorpb.DescriptorProto {
	o := &descriptorpb.MessageOptions{}
	proto.SetExtension(o, spatev1.E_EventType, eventType)
	return &descriptorpb.DescriptorProto{Name: proto.String(name), Field: fields, Options: o}
}

func testField(name string, number int32, typ descriptorpb.FieldDescriptorProto_Type) *descriptorpb.FieldDescriptorProto {
	return &descriptorpb.FieldDescriptorProto{Name: proto.String(name), JsonName: proto.String(name), Number: proto.Int32(number),
		Type: typ.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()}
}
