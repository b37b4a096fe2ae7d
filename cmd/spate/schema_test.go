package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
)

// writeSet writes a descriptor set of one file, billing.proto, whose
// message Invoice is the event type billing.invoice.issued.v1 with fields,
// and the files it imports.
func writeSet(t *testing.T, dir, name string, fields ...string) string {
	t.Helper()
	return writeBilling(t, dir, name, func(f *descriptorpb.FileDescriptorProto) {
		inv := f.MessageType[0]
		inv.Field = inv.Field[:0]
		for i, name := range fields {
			inv.Field = append(inv.Field, stringField(name, int32(i+1)))
		}
	})
}

// writeBilling writes a descriptor set of billing.proto, edited by edit,
// and the files it imports. Unedited, billing.proto declares the event type
// billing.invoice.issued.v1, message Invoice, with fields invoice_id (1),
// customer_id (2) and status (3), of the enum Status: STATUS_UNKNOWN (0)
// and STATUS_OPEN (1).
func writeBilling(t *testing.T, dir, name string, edit func(*descriptorpb.FileDescriptorProto)) string {
	t.Helper()
	opts := &descriptorpb.MessageOptions{}
	proto.SetExtension(opts, spatev1.E_EventType, "billing.invoice.issued.v1")
	file := &descriptorpb.FileDescriptorProto{
		Name: proto.String("billing/v1/billing.proto"), Package: proto.String("billing.v1"), Syntax: proto.String("proto3"),
		Dependency: []string{"spate/v1/event.proto"},
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("Invoice"), Options: opts,
			Field: []*descriptorpb.FieldDescriptorProto{stringField("invoice_id", 1), stringField("customer_id", 2), {
				Name: proto.String("status"), Number: proto.Int32(3), JsonName: proto.String("status"), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
				Type: descriptorpb.FieldDescriptorProto_TYPE_ENUM.Enum(), TypeName: proto.String(".billing.v1.Status")}}}},
		EnumType: []*descriptorpb.EnumDescriptorProto{{Name: proto.String("Status"),
			Value: []*descriptorpb.EnumValueDescriptorProto{{Name: proto.String("STATUS_UNKNOWN"), Number: proto.Int32(0)}, {Name: proto.String("STATUS_OPEN"), Number: proto.Int32(1)}}}},
	}
	if edit != nil {
		edit(file)
	}
	set := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
		protodesc.ToFileDescriptorProto(descriptorpb.File_google_protobuf_descriptor_proto),
		protodesc.ToFileDescriptorProto(timestamppb.File_google_protobuf_timestamp_proto),
		protodesc.ToFileDescriptorProto(spatev1.File_spate_v1_event_proto),
		file,
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

func stringField(name string, number int32) *descriptorpb.FieldDescriptorProto {
	return &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(number), JsonName: proto.String(name),
		Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()}
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

// TestSchemaCheckRules: a field removed with its number and name reserved
// breaks nothing; and schema check tells what buf's rules do not see,
// breaks of Spate's own.
func TestSchemaCheckRules(t *testing.T) {
	dir := t.TempDir()
	old := writeBilling(t, dir, "old.binpb", nil)
	removeCustomer := func(reserveNumber, reserveName bool) func(*descriptorpb.FileDescriptorProto) {
		return func(f *descriptorpb.FileDescriptorProto) {
			inv := f.MessageType[0]
			inv.Field = slices.DeleteFunc(inv.Field, func(fd *descriptorpb.FieldDescriptorProto) bool { return fd.GetName() == "customer_id" })
			if reserveNumber {
				inv.ReservedRange = []*descriptorpb.DescriptorProto_ReservedRange{{Start: proto.Int32(2), End: proto.Int32(3)}}
			}
			if reserveName {
				inv.ReservedName = []string{"customer_id"}
			}
		}
	}
	for _, c := range []struct {
		name string
		edit func(*descriptorpb.FileDescriptorProto)
		want string // in the output; "" for compatible
	}{
		{"a field removed, its number and name reserved", removeCustomer(true, true), ""},
		{"a field removed, its number reserved but not its name", removeCustomer(true, false), "customer_id"},
		{"a field removed, its name reserved but not its number", removeCustomer(false, true), "customer_id"},
		{"an alias added after a value", func(f *descriptorpb.FileDescriptorProto) {
			f.EnumType[0].Options = &descriptorpb.EnumOptions{AllowAlias: proto.Bool(true)}
			f.EnumType[0].Value = append(f.EnumType[0].Value, &descriptorpb.EnumValueDescriptorProto{Name: proto.String("STATUS_OPENED"), Number: proto.Int32(1)})
		}, ""},
		{"an alias put before a value", func(f *descriptorpb.FileDescriptorProto) {
			f.EnumType[0].Options = &descriptorpb.EnumOptions{AllowAlias: proto.Bool(true)}
			vs := f.EnumType[0].Value
			f.EnumType[0].Value = []*descriptorpb.EnumValueDescriptorProto{vs[0], {Name: proto.String("STATUS_OPENED"), Number: proto.Int32(1)}, vs[1]}
		}, "enum billing.v1.Status value 1 is now written STATUS_OPENED, was STATUS_OPEN"},
		{"the event type renamed", func(f *descriptorpb.FileDescriptorProto) {
			proto.SetExtension(f.MessageType[0].Options, spatev1.E_EventType, "billing.invoice.sent.v1")
		}, `event type "billing.invoice.issued.v1" (billing.v1.Invoice) is gone`},
		{"the event type moved to another message", func(f *descriptorpb.FileDescriptorProto) {
			f.MessageType[0].Options = nil
			opts := &descriptorpb.MessageOptions{}
			proto.SetExtension(opts, spatev1.E_EventType, "billing.invoice.issued.v1")
			f.MessageType = append(f.MessageType, &descriptorpb.DescriptorProto{Name: proto.String("InvoiceV2"), Options: opts})
		}, `event type "billing.invoice.issued.v1" is now message billing.v1.InvoiceV2, was billing.v1.Invoice`},
		{"two messages claiming one type", func(f *descriptorpb.FileDescriptorProto) {
			f.MessageType = append(f.MessageType, &descriptorpb.DescriptorProto{Name: proto.String("Copy"), Options: f.MessageType[0].Options})
		}, "Spate cannot load it"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := runCLI("schema", "check", old, writeBilling(t, t.TempDir(), "new.binpb", c.edit))
			switch {
			case c.want == "" && err != nil:
				t.Errorf("%v\n%s\nwant compatible", err, out)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), "breaks") || !strings.Contains(out, c.want)):
				t.Errorf("%v\n%s\nwant a break naming %q", err, out, c.want)
			}
		})
	}
}

// TestSchemaCheckEnumsNoPayloadHolds: an alias put first in an enum that no
// event type's payload holds changes nothing a sink writes: compatible.
func TestSchemaCheckEnumsNoPayloadHolds(t *testing.T) {
	dir := t.TempDir()
	withUnused := func(name string, values ...string) string {
		return writeBilling(t, dir, name, func(f *descriptorpb.FileDescriptorProto) {
			e := &descriptorpb.EnumDescriptorProto{Name: proto.String("Unused"), Options: &descriptorpb.EnumOptions{AllowAlias: proto.Bool(true)},
				Value: []*descriptorpb.EnumValueDescriptorProto{{Name: proto.String("UNUSED_UNKNOWN"), Number: proto.Int32(0)}}}
			for _, v := range values {
				e.Value = append(e.Value, &descriptorpb.EnumValueDescriptorProto{Name: proto.String(v), Number: proto.Int32(1)})
			}
			f.EnumType = append(f.EnumType, e)
		})
	}
	old, new := withUnused("old.binpb", "UNUSED_LOW", "UNUSED_MIN"), withUnused("new.binpb", "UNUSED_MIN", "UNUSED_LOW")
	if out, err := runCLI("schema", "check", old, new); err != nil {
		t.Errorf("%v\n%s\nwant compatible: no event type's payload holds billing.v1.Unused", err, out)
	}
}

// TestSchemaCheckReadsOldAsItIs: OLD may be an earlier release's set, whose
// copy of a file Spate compiles in (shop.proto) lacked a field added since:
// it is compared as it is, not refused for differing.
func TestSchemaCheckReadsOldAsItIs(t *testing.T) {
	dir := t.TempDir()
	old := shopSet(t, filepath.Join(dir, "old.binpb"), func(f *descriptorpb.FileDescriptorProto) {
		for _, m := range f.MessageType {
			if m.GetName() == "PaymentCaptured" {
				m.Field = m.Field[:len(m.Field)-1] // added later
			}
		}
	})
	if out, err := runCLI("schema", "check", old, shopSet(t, filepath.Join(dir, "new.binpb"), nil)); err != nil || !strings.Contains(out, "compatible") {
		t.Errorf("a field added to shop.proto: %v\n%s\nwant compatible", err, out)
	}
}

// shopSet writes the compiled-in shop.proto, edited by edit, with every
// file it imports, as a descriptor set at path.
func shopSet(t *testing.T, path string, edit func(*descriptorpb.FileDescriptorProto)) string {
	t.Helper()
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		for i := range fd.Imports().Len() {
			add(fd.Imports().Get(i).FileDescriptor)
		}
		fdp := protodesc.ToFileDescriptorProto(fd)
		if fd.Path() == shopv1.File_shop_v1_shop_proto.Path() && edit != nil {
			edit(fdp)
		}
		set.File = append(set.File, fdp)
	}
	add(shopv1.File_shop_v1_shop_proto)
	b, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
