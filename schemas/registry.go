// Package schemas is Spate's event-type registry. It maps each event type
// (domain.entity.verb.vN) to the protobuf message of its payload, decodes and
// validates payloads, and transcodes JSON: protojson reads it, MarshalJSON
// writes it.
//
// A message joins the registry through the spate.v1.event_type option:
//
//	message OrderPlaced {
//	  option (spate.v1.event_type) = "shop.order.placed.v1";
//	  ...
//	}
//
// The canonical encoding of a payload, the one that travels in Kafka, is the
// deterministic protobuf binary encoding of its message.
//
// Payload fields may carry protovalidate constraints (buf.validate
// annotations). Decode, which the edge uses, enforces them and reports each
// field that breaks one as a Violation; Parse, which sinks use, does not.
package schemas

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"slices"
	"strings"
	"sync"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
)

// Content types of payloads.
const (
	ContentTypeProtobuf = "application/protobuf"
	ContentTypeJSON     = "application/json"
)

var (
	// ErrUnknownType is returned for an event type that is not registered.
	ErrUnknownType = errors.New("unknown event type")
	// ErrContentType is returned for a payload content type that is neither
	// protobuf nor JSON.
	ErrContentType = errors.New("unsupported datacontenttype")
)

// Registry maps event types to payload messages. It is safe for concurrent
// use once built.
type Registry struct {
	types map[string]protoreflect.MessageType
	// wire holds the plan of each event type whose protobuf payloads JSON
	// writes straight from the wire format (see newWirePlan).
	wire map[string]*wirePlan
	// jsonIn holds the plan of each event type whose JSON payloads are
	// read straight into the wire format (see newJSONPlan).
	jsonIn map[string]*jsonPlan
	// checks holds the plan of each event type whose constraints are
	// checked without protovalidate's walk, unless broken (see
	// newCheckPlan).
	checks map[string]*checkPlan
	// validator is built on first use: only Decode, the edge's, checks
	// constraints, and a sink need not pay for it, nor fail on a rule.
	validator func() (protovalidate.Validator, error)
	// resolver finds the extensions (and the messages of
	// google.protobuf.Any values) that payloads hold, among the registry's
	// files first.
	resolver typeResolver
}

// typeResolver finds types among the registry's files, the ones loaded at
// run time included, and then among those compiled in.
type typeResolver struct{ files *dynamicpb.Types }

func (t typeResolver) FindExtensionByName(name protoreflect.FullName) (protoreflect.ExtensionType, error) {
	if x, err := t.files.FindExtensionByName(name); err == nil {
		return x, nil
	}
	return protoregistry.GlobalTypes.FindExtensionByName(name)
}

func (t typeResolver) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	if x, err := t.files.FindExtensionByNumber(message, field); err == nil {
		return x, nil
	}
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}

func (t typeResolver) FindMessageByName(name protoreflect.FullName) (protoreflect.MessageType, error) {
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(name); err == nil {
		return mt, nil // generated, as the registry's own payloads of it
	}
	return t.files.FindMessageByName(name)
}

func (t typeResolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	if mt, err := protoregistry.GlobalTypes.FindMessageByURL(url); err == nil {
		return mt, nil
	}
	return t.files.FindMessageByURL(url)
}

// Violation is a payload field that breaks a constraint of its schema.
type Violation struct {
	// Field is the field's path in the payload, by the names a payload of
	// its content type is written with: JSON names for JSON (e.g.
	// items[0].priceCents), .proto names for protobuf (items[0].price_cents).
	// Empty for a constraint on the whole message.
	Field string
	// Rule names the constraint, e.g. int32.gt.
	Rule string
	// Detail says what is wrong, e.g. "value must be greater than 0".
	Detail string
}

// ViolationsError is Decode's error for a payload that breaks constraints
// of its schema: every field at fault, not only the first.
type ViolationsError struct {
	Violations []Violation
}

func (e *ViolationsError) Error() string {
	parts := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		parts[i] = v.Detail
		if v.Field != "" {
			parts[i] = v.Field + ": " + v.Detail
		}
	}
	return strings.Join(parts, "; ")
}

// Builtin returns the registry of the schemas compiled into Spate: the
// example domain shop.v1.
func Builtin() *Registry {
	r, err := New(shopv1.File_shop_v1_shop_proto)
	if err != nil {
		panic(err) // the compiled-in schemas are fixed; a failure is a build defect
	}
	return r
}

// Load returns the registry of the compiled-in schemas and of the event
// types in a serialized FileDescriptorSet, as buf build -o FILE.binpb or
// protoc --include_imports --descriptor_set_out write it: users' own types,
// without rebuilding Spate. The set must hold every file its files import;
// files Spate compiles in (spate/v1/event.proto, the shop example) are taken
// from Spate. A set whose copy of a compiled-in file of event types differs
// (an edited shop.proto) is refused, rather than silently not used.
func Load(set []byte) (*Registry, error) {
	var fds descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(set, &fds); err != nil {
		return nil, fmt.Errorf("schemas: not a FileDescriptorSet: %w", err)
	}
	files, err := protodesc.NewFiles(&fds)
	if err != nil {
		return nil, fmt.Errorf("schemas: %w", err)
	}
	all := []protoreflect.FileDescriptor{shopv1.File_shop_v1_shop_proto}
	files.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		compiled, ferr := protoregistry.GlobalFiles.FindFileByPath(fd.Path())
		switch {
		case ferr != nil: // not compiled in
			all = append(all, fd)
		case declaresTypes(compiled.Messages()) && !sameFile(compiled, fd):
			err = fmt.Errorf("schemas: the set's %s differs from the one Spate compiles in, whose event types Spate uses: give your changed copy a path and package of its own", fd.Path())
			return false
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	return New(all...)
}

// declaresTypes reports whether any of mds, or of the messages they nest,
// claims an event type.
func declaresTypes(mds protoreflect.MessageDescriptors) bool {
	for i := range mds.Len() {
		md := mds.Get(i)
		if proto.GetExtension(md.Options(), spatev1.E_EventType) != "" || declaresTypes(md.Messages()) {
			return true
		}
	}
	return false
}

// sameFile reports whether a and b declare the same, their source code
// info (comments, positions) left out.
func sameFile(a, b protoreflect.FileDescriptor) bool {
	pa, pb := protodesc.ToFileDescriptorProto(a), protodesc.ToFileDescriptorProto(b)
	pa.SourceCodeInfo, pb.SourceCodeInfo = nil, nil
	return proto.Equal(pa, pb)
}

// New builds a registry from the messages of files that carry the
// spate.v1.event_type option. Compiled-in messages use their generated Go
// types; others are dynamic. Two messages claiming one type is an error.
func New(files ...protoreflect.FileDescriptor) (*Registry, error) {
	r := &Registry{types: make(map[string]protoreflect.MessageType), wire: make(map[string]*wirePlan), jsonIn: make(map[string]*jsonPlan),
		checks: make(map[string]*checkPlan)}
	all := new(protoregistry.Files)
	for _, fd := range files {
		if err := r.addMessages(fd.Messages()); err != nil {
			return nil, fmt.Errorf("register %s: %w", fd.Path(), err)
		}
		registerWithImports(all, fd)
	}
	r.resolver = typeResolver{dynamicpb.NewTypes(all)}
	for typ, mt := range r.types {
		if p := newWirePlan(mt.Descriptor()); p != nil {
			r.wire[typ] = p
		}
		if p := newJSONPlan(mt.Descriptor()); p != nil {
			r.jsonIn[typ] = p
		}
		if p := newCheckPlan(mt.Descriptor()); p != nil {
			r.checks[typ] = p
		}
	}
	r.validator = sync.OnceValues(func() (protovalidate.Validator, error) {
		mds := make([]protoreflect.MessageDescriptor, 0, len(r.types))
		for _, mt := range r.types {
			mds = append(mds, mt.Descriptor())
		}
		return protovalidate.New(protovalidate.WithMessageDescriptors(mds...))
	})
	return r, nil
}

// registerWithImports registers fd in files, after the files it imports,
// each once by path. A file declaring a name another already declares (a
// copy of a compiled-in file under a path of its own, say) is left out:
// its extensions are not found, as before extensions were looked up.
func registerWithImports(files *protoregistry.Files, fd protoreflect.FileDescriptor) {
	if _, err := files.FindFileByPath(fd.Path()); err == nil {
		return
	}
	imports := fd.Imports()
	for i := range imports.Len() {
		registerWithImports(files, imports.Get(i).FileDescriptor)
	}
	files.RegisterFile(fd) // an error leaves it out (see above)
}

func (r *Registry) addMessages(mds protoreflect.MessageDescriptors) error {
	for i := range mds.Len() {
		md := mds.Get(i)
		if err := r.addMessages(md.Messages()); err != nil {
			return err
		}
		opts := md.Options()
		if opts == nil || !proto.HasExtension(opts, spatev1.E_EventType) {
			continue
		}
		typ, _ := proto.GetExtension(opts, spatev1.E_EventType).(string)
		if typ == "" {
			continue
		}
		if prev, ok := r.types[typ]; ok {
			return fmt.Errorf("event type %q claimed by both %s and %s", typ, prev.Descriptor().FullName(), md.FullName())
		}
		mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
		if err != nil || mt.Descriptor() != md {
			mt = dynamicpb.NewMessageType(md)
		}
		r.types[typ] = mt
	}
	return nil
}

// Types returns the registered event types, sorted.
func (r *Registry) Types() []string {
	ts := make([]string, 0, len(r.types))
	for t := range r.types {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	return ts
}

// Message returns the payload message type of an event type.
func (r *Registry) Message(eventType string) (protoreflect.MessageType, error) {
	mt, ok := r.types[eventType]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownType, eventType)
	}
	return mt, nil
}

// Decode decodes a payload of the given content type as the event type's
// message, strictly, as the edge must: JSON is read as protojson reads it
// (the plain payload by a faster reader, see jsonwire.go) and may not hold
// unknown or duplicate fields; protobuf may not hold fields the
// schema does not know either. An empty content type means protobuf. A
// payload that breaks the schema's constraints is refused with a
// *ViolationsError.
func (r *Registry) Decode(eventType, contentType string, data []byte) (proto.Message, error) {
	m, _, err := r.decodeChecked(eventType, contentType, data)
	return m, err
}

// decodeChecked is Decode, also returning the canonical encoding that
// decode may give.
func (r *Registry) decodeChecked(eventType, contentType string, data []byte) (proto.Message, []byte, error) {
	m, wire, err := r.decode(eventType, contentType, data, true)
	if err != nil {
		return nil, nil, err
	}
	if err := r.check(eventType, contentType, m); err != nil {
		return nil, nil, err
	}
	return m, wire, nil
}

// check enforces the constraints of m's schema, naming fields as a payload
// of contentType, which decode accepted, names them.
func (r *Registry) check(eventType, contentType string, m proto.Message) error {
	v, err := r.validator()
	if err != nil {
		return fmt.Errorf("schemas: constraints: %w", err)
	}
	if p := r.checks[eventType]; p != nil && p.passes(m.ProtoReflect()) {
		return jsonWritable(m)
	}
	err = v.Validate(m)
	if err == nil {
		return jsonWritable(m)
	}
	verr, ok := errors.AsType[*protovalidate.ValidationError](err)
	if !ok {
		return fmt.Errorf("%s: constraints: %w", eventType, err)
	}
	kind, _ := contentKind(contentType)
	out := &ViolationsError{Violations: make([]Violation, len(verr.Violations))}
	for i, v := range verr.Violations {
		path := v.Proto.GetField()
		if kind == ContentTypeJSON {
			path = jsonNames(m.ProtoReflect().Descriptor(), path)
		}
		out.Violations[i] = Violation{Field: protovalidate.FieldPathString(path),
			Rule: v.Proto.GetRuleId(), Detail: v.Proto.GetMessage()}
	}
	return out
}

// jsonWritable refuses a payload that the sinks could not write as JSON,
// which they would dead-letter: a google.protobuf.Timestamp out of its
// range, say, or, in a proto2 message, a string that is not UTF-8. Only
// messages that can hold such values pay for the check.
func jsonWritable(m proto.Message) error {
	if !jsonMayFail(m.ProtoReflect().Descriptor()) {
		return nil
	}
	if _, err := MarshalJSON(m); err != nil {
		return fmt.Errorf("cannot be written as JSON: %w", cleanErr(err))
	}
	return nil
}

// jsonNames returns a copy of path, a field path from md, that names its
// fields by their JSON names. Extensions keep their full names.
func jsonNames(md protoreflect.MessageDescriptor, path *validate.FieldPath) *validate.FieldPath {
	out := proto.CloneOf(path)
	for _, el := range out.GetElements() {
		if md == nil {
			break
		}
		fd := md.Fields().ByNumber(protoreflect.FieldNumber(el.GetFieldNumber()))
		if fd == nil { // an extension
			break
		}
		el.SetFieldName(fd.JSONName())
		if fd.IsMap() {
			fd = fd.MapValue()
		}
		md = fd.Message()
	}
	return out
}

// Parse decodes a payload like Decode but keeps fields the schema does not
// know, following protobuf's rule for readers, as sinks must: an event that
// a producer wrote with a newer version of the schema still applies.
func (r *Registry) Parse(eventType, contentType string, data []byte) (proto.Message, error) {
	m, _, err := r.decode(eventType, contentType, data, false)
	return m, err
}

// decode decodes a payload as Decode (strict) or Parse do, and returns
// with the message its canonical encoding when it has it at no cost: a
// JSON payload read the short way whose wire format is canonical.
func (r *Registry) decode(eventType, contentType string, data []byte, strict bool) (m proto.Message, wire []byte, err error) {
	mt, err := r.Message(eventType)
	if err != nil {
		return nil, nil, err
	}
	m = mt.New().Interface()
	switch kind, err := contentKind(contentType); {
	case err != nil:
		return nil, nil, err
	case kind == ContentTypeJSON:
		if p := r.jsonIn[eventType]; p != nil {
			// What the short way reads holds no unknown field: strict or
			// not, protojson would read the same.
			if b, isCanonical, ok := appendJSONWire(make([]byte, 0, len(data)), data, p); ok {
				if err := unmarshalProto(proto.UnmarshalOptions{Resolver: r.resolver}, b, m); err == nil {
					if isCanonical {
						return m, b, nil
					}
					return m, nil, nil
				}
				m = mt.New().Interface()
			}
		}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: !strict, Resolver: r.resolver}).Unmarshal(data, m); err != nil {
			return nil, nil, cleanErr(err)
		}
	default:
		if err := unmarshalProto(proto.UnmarshalOptions{Resolver: r.resolver}, data, m); err != nil {
			return nil, nil, cleanErr(err)
		}
		if strict {
			if err := noUnknown(m.ProtoReflect()); err != nil {
				return nil, nil, err
			}
		}
	}
	return m, nil, nil
}

// Canonical decodes a payload like Decode and returns its canonical protobuf
// encoding.
func (r *Registry) Canonical(eventType, contentType string, data []byte) ([]byte, error) {
	if out, m := r.canonicalAlready(eventType, contentType, data); m != nil {
		if err := r.check(eventType, contentType, m); err != nil {
			return nil, err
		}
		return out, nil
	}
	m, out, err := r.decodeChecked(eventType, contentType, data)
	switch {
	case err != nil:
		return nil, err
	case out != nil: // as canonical.Marshal would write it
		return out, nil
	}
	return canonical.Marshal(m)
}

var canonical = proto.MarshalOptions{Deterministic: true}

// canonicalAlready is Canonical's short way, for the common protobuf payload
// that is already canonical: decoded leaving out fields the schema does not
// know, it encodes to the very same bytes, so it held none, and the strict
// decode's walk for them is not needed. It returns the payload decoded, or
// nil when the short way does not apply.
func (r *Registry) canonicalAlready(eventType, contentType string, data []byte) ([]byte, proto.Message) {
	mt, ok := r.types[eventType]
	if kind, err := contentKind(contentType); !ok || err != nil || kind != ContentTypeProtobuf {
		return nil, nil
	}
	m := mt.New().Interface()
	if err := unmarshalProto(proto.UnmarshalOptions{DiscardUnknown: true, Resolver: r.resolver}, data, m); err != nil {
		return nil, nil
	}
	out, err := canonical.Marshal(m)
	if err != nil || !bytes.Equal(out, data) {
		return nil, nil
	}
	return out, m
}

// JSON returns a payload of the given content type as MarshalJSON writes it.
// It reads like Parse: fields the schema does not know are left out. A
// protobuf payload of a proto3 type of plain fields is written straight from
// its wire format, without being decoded into a message (see wirejson.go).
func (r *Registry) JSON(eventType, contentType string, data []byte) ([]byte, error) {
	if p := r.wire[eventType]; p != nil {
		if kind, err := contentKind(contentType); err == nil && kind == ContentTypeProtobuf {
			if b, ok := appendWireJSON(make([]byte, 0, 128+3*len(data)), data, p, 0); ok {
				return b, nil
			}
		}
	}
	m, err := r.Parse(eventType, contentType, data)
	if err != nil {
		return nil, err
	}
	return MarshalJSON(m)
}

// contentKind maps a content type to ContentTypeProtobuf or ContentTypeJSON.
// The usual spellings need no parsing.
func contentKind(contentType string) (string, error) {
	switch contentType {
	case "", ContentTypeProtobuf:
		return ContentTypeProtobuf, nil
	case ContentTypeJSON:
		return ContentTypeJSON, nil
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return "", fmt.Errorf("%w %q", ErrContentType, contentType)
	}
	switch {
	case mt == ContentTypeProtobuf, mt == "application/x-protobuf":
		return ContentTypeProtobuf, nil
	case mt == ContentTypeJSON, strings.HasSuffix(mt, "+json"):
		return ContentTypeJSON, nil
	}
	return "", fmt.Errorf("%w %q: want %s or %s", ErrContentType, contentType, ContentTypeProtobuf, ContentTypeJSON)
}

// noUnknown reports the first field, at any depth, that the schema does not know.
func noUnknown(m protoreflect.Message) error {
	path, found := unknownAt(m)
	if !found {
		return nil
	}
	if path == "" {
		path = string(m.Descriptor().FullName())
	}
	return fmt.Errorf("%s: unknown field in protobuf payload", path)
}

// unknownAt finds the first message, at any depth, holding fields the schema
// does not know, and returns its path from m ("" for m itself). The path is
// built only once one is found: the walk of a payload without unknown fields
// allocates nothing.
func unknownAt(m protoreflect.Message) (path string, found bool) {
	if len(m.GetUnknown()) > 0 {
		return "", true
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		var sub string
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				if sub, found = unknownAt(l.Get(i).Message()); found {
					path = fmt.Sprintf("%s[%d]", fd.Name(), i)
					break
				}
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					if sub, found = unknownAt(mv.Message()); found {
						path = fmt.Sprintf("%s[%v]", fd.Name(), k.Interface())
					}
					return !found
				})
			}
		default:
			if sub, found = unknownAt(v.Message()); found {
				path = string(fd.Name())
			}
		}
		if found && sub != "" {
			path += "." + sub
		}
		return !found
	})
	return path, found
}

// unmarshalProto is opts.Unmarshal, with a panic turned into an error: a
// payload must never bring the edge or a consumer down. Decoding a dynamic
// message (a type loaded with --schemas) panics in google.golang.org/protobuf
// v1.36 when a map entry holds its key twice, the second time with the
// wrong wire type.
func unmarshalProto(opts proto.UnmarshalOptions, data []byte, m proto.Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("cannot parse invalid wire-format data: %v", p)
		}
	}()
	return opts.Unmarshal(data, m)
}

// cleanErr drops the "proto:" prefix (protobuf-go varies its spacing on
// purpose) and keeps the rest, which names the field and, for JSON, its line
// and column.
func cleanErr(err error) error {
	msg := strings.TrimPrefix(err.Error(), "proto:")
	msg = strings.TrimSpace(strings.ReplaceAll(msg, "\u00a0", " "))
	return errors.New(msg)
}
