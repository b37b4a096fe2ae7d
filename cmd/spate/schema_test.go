package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// writeSet writes a descriptor set of one file, billing.proto, whose
// message Invoice is the event type billing.invoice.issued.v1 with fields,
// and the files it imports.
func writeSet(t *testing.T, dir, name string, fields ...string) string {
	t.Helper()
	opts := &descriptorpb.MessageOptions{}
	proto.SetExtension(opts, spatev1.E_EventType, "billing.invoice.issued.v1")
	msg := &descriptorpb.DescriptorProto{Name: proto.String("Invoice"), Options: opts}
	for i, f := range fields {
		msg.Field = append(msg.Field, &descriptorpb.FieldDescriptorProto{
			Name: proto.String(f), Number: proto.Int32(int32(i + 1)), JsonName: proto.String(f),
			Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		})
	}
	set := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
		protodesc.ToFileDescriptorProto(descriptorpb.File_google_protobuf_descriptor_proto),
		protodesc.ToFileDescriptorProto(timestamppb.File_google_protobuf_timestamp_proto),
		protodesc.ToFileDescriptorProto(spatev1.File_spate_v1_event_proto),
		{
			Name: proto.String("billing/v1/billing.proto"), Package: proto.String("billing.v1"), Syntax: proto.String("proto3"),
			Dependency: []string{"spate/v1/event.proto"}, MessageType: []*descriptorpb.DescriptorProto{msg},
		},
	}}
	b, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func runCLI(args ...string) (string, error) {
	var out bytes.Buffer
	root := newRoot(&out, &out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestSchemaListAndCheck(t *testing.T) {
	dir := t.TempDir()
	v1 := writeSet(t, dir, "v1.binpb", "invoice_id", "customer_id")
	v2 := writeSet(t, dir, "v2.binpb", "invoice_id") // customer_id removed, not reserved

	out, err := runCLI("schema", "list", "--schemas", v1)
	if err != nil || !strings.Contains(out, "billing.invoice.issued.v1") || !strings.Contains(out, "billing.v1.Invoice") || !strings.Contains(out, "shop.order.placed.v1") {
		t.Fatalf("schema list --schemas: %v\n%s", err, out)
	}
	if out, err := runCLI("schema", "check", v1, v1); err != nil || !strings.Contains(out, "compatible") {
		t.Fatalf("check of a set against itself: %v\n%s", err, out)
	}
	out, err = runCLI("schema", "check", v1, v2)
	if err == nil || !strings.Contains(err.Error(), "breaks") || !strings.Contains(out, "customer_id") {
		t.Fatalf("check of a removed field: %v\n%s\nwant an error and buf naming customer_id", err, out)
	}
	// A buf.yaml in the working directory that leaves the rule out does
	// not loosen the check. (buf is looked for from the working directory
	// too: keep the one found here.)
	buf, err := findBuf()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", filepath.Dir(buf)+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Chdir(dir)
	if err := os.WriteFile(filepath.Join(dir, "buf.yaml"), []byte("version: v2\nbreaking:\n  use: [FILE]\n  except: [FIELD_NO_DELETE]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI("schema", "check", v1, v2); err == nil || !strings.Contains(err.Error(), "breaks") {
		t.Fatalf("check of a removed field beside a buf.yaml that leaves FIELD_NO_DELETE out: %v, want a break", err)
	}
	empty := filepath.Join(dir, "empty.binpb")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI("schema", "check", empty, v1); err == nil || strings.Contains(err.Error(), "breaks") {
		t.Fatalf("check of an empty set: %v, want a failure to compare, not a break", err)
	}
	if _, err := runCLI("schema", "list", "--schemas", filepath.Join(dir, "missing.binpb")); err == nil {
		t.Fatal("schema list of a missing file: no error")
	}
}
