package schemas

import (
	"math"
	"regexp"
	"unicode/utf8"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The edge checks every payload against the constraints of its schema.
// For a message whose constraints are all of the common kinds (a string's
// length in characters, and its pattern; an integer's bounds; a list's
// length), and those of the messages it holds, a plan made once checks
// them straight from the message: protovalidate's walk took a seventh of
// the edge's CPU. A plan only ever says that a message passes. A message
// it does not pass, and a type with any other constraint, go to
// protovalidate, which words the violations. FuzzChecks compares the two.

// checkPlan is the constraints of a message type a plan checks.
type checkPlan struct {
	fields []fieldCheck
}

// fieldCheck is the constraints of one field, as protovalidate applies
// them: to a field with presence only when it is set, to others always.
type fieldCheck struct {
	fd       protoreflect.FieldDescriptor
	presence bool
	list     bool
	// A string's length in characters, and its pattern.
	minLen, maxLen *uint64
	pattern        *regexp.Regexp
	// An integer's bounds, inclusive, as signed or unsigned by its kind.
	signed         bool
	minInt, maxInt *int64
	minUint        *uint64
	maxUint        *uint64
	// A list's length.
	minItems, maxItems *uint64
	// The plan of a message field, or of a list's messages, that has
	// constraints.
	msg *checkPlan
}

// newCheckPlan returns the plan of md, or nil when a plan cannot check
// every constraint of md's messages, or md has none (protovalidate's walk
// of a message without constraints costs little).
func newCheckPlan(md protoreflect.MessageDescriptor) *checkPlan {
	p, ok := buildCheckPlan(md, map[protoreflect.MessageDescriptor]*checkPlan{})
	if !ok {
		return nil
	}
	return p
}

// buildCheckPlan returns the plan of md, nil if md's messages have no
// constraints, and false if a plan cannot check them.
func buildCheckPlan(md protoreflect.MessageDescriptor, built map[protoreflect.MessageDescriptor]*checkPlan) (*checkPlan, bool) {
	if p, ok := built[md]; ok {
		return p, true
	}
	if !noConstraints(md.Options(), validate.E_Message) {
		return nil, false
	}
	for i := range md.Oneofs().Len() {
		if !noConstraints(md.Oneofs().Get(i).Options(), validate.E_Oneof) {
			return nil, false
		}
	}
	// Decided before the fields: a message that holds itself gets this
	// plan, checked once its fields are known.
	p := &checkPlan{}
	built[md] = p
	fds := md.Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		c, ok := buildFieldCheck(fd, built)
		if !ok {
			return nil, false
		}
		if c != nil {
			p.fields = append(p.fields, *c)
		}
	}
	if len(p.fields) == 0 {
		built[md] = nil // a message holding this one need not look in
		return nil, true
	}
	return p, true
}

// buildFieldCheck returns the check of fd, nil if it has no constraints,
// and false if a plan cannot check them.
func buildFieldCheck(fd protoreflect.FieldDescriptor, built map[protoreflect.MessageDescriptor]*checkPlan) (*fieldCheck, bool) {
	c := &fieldCheck{fd: fd, presence: fd.HasPresence(), list: fd.IsList()}
	if fd.IsMap() {
		// Maps are left to protovalidate, unless nothing in them is
		// constrained.
		if v := fd.MapValue(); !noConstraints(fd.Options(), validate.E_Field) || v.Message() != nil && !unconstrained(v.Message(), built) {
			return nil, false
		}
		return nil, true
	}
	if fd.Message() != nil {
		sub, ok := buildCheckPlan(fd.Message(), built)
		if !ok {
			return nil, false
		}
		c.msg = sub
	}
	constrained, ok := c.readRules(fd)
	if !ok {
		return nil, false
	}
	if !constrained && c.msg == nil {
		return nil, true
	}
	return c, true
}

// unconstrained reports whether md's messages have no constraints.
func unconstrained(md protoreflect.MessageDescriptor, built map[protoreflect.MessageDescriptor]*checkPlan) bool {
	p, ok := buildCheckPlan(md, built)
	return ok && p == nil
}

// noConstraints reports whether opts hold no constraint of ext (and
// nothing unknown, which could be one not decoded).
func noConstraints(opts proto.Message, ext protoreflect.ExtensionType) bool {
	if opts == nil {
		return true
	}
	rules := rulesIn(opts, ext)
	return len(opts.ProtoReflect().GetUnknown()) == 0 && (rules == nil || proto.Size(rules.Interface()) == 0)
}

// rulesIn returns a copy of the rules of ext in opts, nil if it holds
// none. They are read by their names: options decoded with a resolver of
// their own hold them as a dynamic message, not as ext's Go type.
func rulesIn(opts proto.Message, ext protoreflect.ExtensionType) protoreflect.Message {
	r, xd := opts.ProtoReflect(), ext.TypeDescriptor()
	if !r.Has(xd) {
		return nil
	}
	return proto.Clone(r.Get(xd).Message().Interface()).ProtoReflect()
}

// rulesOfKind names the field of validate.FieldRules that holds the rules
// of a value of each kind the plan checks.
var rulesOfKind = map[protoreflect.Kind]protoreflect.Name{
	protoreflect.StringKind: "string",
	protoreflect.Int32Kind:  "int32", protoreflect.Int64Kind: "int64",
	protoreflect.Uint32Kind: "uint32", protoreflect.Uint64Kind: "uint64",
	protoreflect.Sint32Kind: "sint32", protoreflect.Sint64Kind: "sint64",
	protoreflect.Fixed32Kind: "fixed32", protoreflect.Fixed64Kind: "fixed64",
	protoreflect.Sfixed32Kind: "sfixed32", protoreflect.Sfixed64Kind: "sfixed64",
}

// readRules reads fd's constraints into c: whether it has any, and false
// if any of them is of a kind the plan does not check.
func (c *fieldCheck) readRules(fd protoreflect.FieldDescriptor) (constrained, ok bool) {
	opts := fd.Options()
	if noConstraints(opts, validate.E_Field) {
		return false, true
	}
	if len(opts.ProtoReflect().GetUnknown()) > 0 {
		return false, false
	}
	rules := rulesIn(opts, validate.E_Field)
	typeField := rules.WhichOneof(rules.Descriptor().Oneofs().ByName("type"))
	if typeField == nil {
		return false, proto.Size(rules.Interface()) == 0
	}
	want := rulesOfKind[fd.Kind()]
	if fd.IsList() {
		want = "repeated"
	}
	if typeField.Name() != want {
		return false, false // another kind's rules, or a kind not checked here
	}
	typed := rules.Get(typeField).Message()
	take := func(name protoreflect.Name) (protoreflect.Value, bool) {
		f := typed.Descriptor().Fields().ByName(name)
		if !typed.Has(f) {
			return protoreflect.Value{}, false
		}
		v := typed.Get(f)
		typed.Clear(f)
		return v, true
	}
	uintRule := func(name protoreflect.Name) *uint64 {
		if v, ok := take(name); ok {
			n := v.Uint()
			return &n
		}
		return nil
	}
	switch {
	case fd.IsList():
		c.minItems, c.maxItems = uintRule("min_items"), uintRule("max_items")
	case fd.Kind() == protoreflect.StringKind:
		c.minLen, c.maxLen = uintRule("min_len"), uintRule("max_len")
		if v, ok := take("pattern"); ok {
			re, err := regexp.Compile(v.String())
			if err != nil {
				return false, false
			}
			c.pattern = re
		}
	default:
		if !c.readBounds(fd.Kind(), take) {
			return false, false
		}
	}
	// Anything left, on the field or its kind, is not checked here.
	if len(typed.GetUnknown()) > 0 || proto.Size(typed.Interface()) > 0 {
		return false, false
	}
	rules.Clear(typeField)
	return true, proto.Size(rules.Interface()) == 0
}

// readBounds reads an integer's gt, gte, lt and lte as inclusive bounds,
// and reports false for bounds that protovalidate reads as a range to stay
// out of (the lower over the upper), or that nothing could meet.
func (c *fieldCheck) readBounds(kind protoreflect.Kind, take func(protoreflect.Name) (protoreflect.Value, bool)) (ok bool) {
	switch kind {
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind:
		c.minUint, c.maxUint, ok = bounds(take, protoreflect.Value.Uint, 0, math.MaxUint64)
	default:
		c.signed = true
		c.minInt, c.maxInt, ok = bounds(take, protoreflect.Value.Int, math.MinInt64, math.MaxInt64)
	}
	return ok
}

// bounds is readBounds for values of type T, as of reads them, whose
// range runs from lowest to highest.
func bounds[T int64 | uint64](take func(protoreflect.Name) (protoreflect.Value, bool), of func(protoreflect.Value) T, lowest, highest T) (lo, hi *T, ok bool) {
	if v, ok := take("gt"); ok {
		if of(v) == highest {
			return nil, nil, false
		}
		n := of(v) + 1
		lo = &n
	} else if v, ok := take("gte"); ok {
		n := of(v)
		lo = &n
	}
	if v, ok := take("lt"); ok {
		if of(v) == lowest {
			return nil, nil, false
		}
		n := of(v) - 1
		hi = &n
	} else if v, ok := take("lte"); ok {
		n := of(v)
		hi = &n
	}
	return lo, hi, lo == nil || hi == nil || *lo <= *hi
}

// passes reports whether m meets every constraint of the plan: false
// means only that protovalidate must say.
func (p *checkPlan) passes(m protoreflect.Message) bool {
	for i := range p.fields {
		if !p.fields[i].passes(m) {
			return false
		}
	}
	return true
}

func (c *fieldCheck) passes(m protoreflect.Message) bool {
	if c.list {
		l := m.Get(c.fd).List()
		n := uint64(l.Len())
		if c.minItems != nil && n < *c.minItems || c.maxItems != nil && n > *c.maxItems {
			return false
		}
		if c.msg != nil {
			for i := range l.Len() {
				if !c.msg.passes(l.Get(i).Message()) {
					return false
				}
			}
		}
		return true
	}
	if c.presence && !m.Has(c.fd) {
		return true
	}
	v := m.Get(c.fd)
	switch {
	case c.msg != nil:
		return c.msg.passes(v.Message())
	case c.fd.Kind() == protoreflect.StringKind:
		s := v.String()
		if c.minLen != nil || c.maxLen != nil {
			n := uint64(utf8.RuneCountInString(s))
			if c.minLen != nil && n < *c.minLen || c.maxLen != nil && n > *c.maxLen {
				return false
			}
		}
		return c.pattern == nil || c.pattern.MatchString(s)
	case c.signed:
		n := v.Int()
		return (c.minInt == nil || n >= *c.minInt) && (c.maxInt == nil || n <= *c.maxInt)
	default:
		n := v.Uint()
		return (c.minUint == nil || n >= *c.minUint) && (c.maxUint == nil || n <= *c.maxUint)
	}
}
