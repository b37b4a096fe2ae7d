package projection

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/schemas"
)

// compileSQL replaces the :name parameters of a statement with what ref
// returns for them (nil ref: $1, $2, ...), numbered in order of first use (a
// name used twice is one parameter), and returns the names with the byte
// offset of their first use. It leaves string literals, quoted identifiers,
// dollar-quoted bodies, comments and :: casts alone, and refuses $n
// placeholders: values reach a statement only as named parameters.
func compileSQL(sql string, ref func(n int, name string) string) (string, []string, []int, error) {
	if ref == nil {
		ref = func(n int, _ string) string { return "$" + strconv.Itoa(n) }
	}
	var out strings.Builder
	var names []string
	var at []int
	index := map[string]int{}
	s := sql
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\'' || c == '"':
			end := closeQuote(s, i, c)
			if end < 0 {
				return "", nil, nil, fmt.Errorf("unterminated %c quote", c)
			}
			out.WriteString(s[i:end])
			i = end
		case c == '-' && strings.HasPrefix(s[i:], "--"):
			end := strings.IndexByte(s[i:], '\n')
			if end < 0 {
				end = len(s) - i
			}
			out.WriteString(s[i : i+end])
			i += end
		case c == '/' && strings.HasPrefix(s[i:], "/*"):
			end := closeComment(s, i)
			if end < 0 {
				return "", nil, nil, fmt.Errorf("unterminated /* comment")
			}
			out.WriteString(s[i:end])
			i = end
		case c == '$':
			if tag := dollarTag.FindString(s[i:]); tag != "" {
				end := strings.Index(s[i+len(tag):], tag)
				if end < 0 {
					return "", nil, nil, fmt.Errorf("unterminated %s quote", tag)
				}
				end += i + 2*len(tag)
				out.WriteString(s[i:end])
				i = end
				continue
			}
			if i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9' {
				return "", nil, nil, fmt.Errorf("positional parameter $%c: use named parameters such as :id or :data.field", s[i+1])
			}
			out.WriteByte(c)
			i++
		case c == ':' && strings.HasPrefix(s[i:], "::"):
			out.WriteString("::")
			i += 2
		case c == ':' && i+1 < len(s) && isNameStart(s[i+1]):
			j := i + 1
			for j < len(s) && (isNameStart(s[j]) || s[j] >= '0' && s[j] <= '9' || s[j] == '.' && j+1 < len(s) && isNameStart(s[j+1])) {
				j++
			}
			name := s[i+1 : j]
			n, ok := index[name]
			if !ok {
				names = append(names, name)
				at = append(at, i)
				n = len(names)
				index[name] = n
			}
			out.WriteString(ref(n, name))
			i = j
		default:
			out.WriteByte(c)
			i++
		}
	}
	return out.String(), names, at, nil
}

var dollarTag = regexp.MustCompile(`^\$([A-Za-z_][A-Za-z0-9_]*)?\$`)

func isNameStart(c byte) bool { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// closeQuote returns the index after the quote that closes the one at i;
// a doubled quote is an escaped one, and in an E'...' string so is \'.
func closeQuote(s string, i int, q byte) int {
	escapes := q == '\'' && i > 0 && (s[i-1] == 'E' || s[i-1] == 'e')
	for j := i + 1; j < len(s); j++ {
		switch {
		case escapes && s[j] == '\\':
			j++
		case s[j] == q && j+1 < len(s) && s[j+1] == q:
			j++
		case s[j] == q:
			return j + 1
		}
	}
	return -1
}

// closeComment returns the index after the */ closing the (nestable)
// comment at i.
func closeComment(s string, i int) int {
	depth := 0
	for j := i; j+1 < len(s); j++ {
		switch s[j : j+2] {
		case "/*":
			depth++
			j++
		case "*/":
			depth--
			j++
			if depth == 0 {
				return j + 1
			}
		}
	}
	return -1
}

// getter returns a parameter's value for an event.
type getter func(ev *Event) (any, error)

// paramGetter resolves a parameter name for events whose payload is md:
//
//	id source type subject datacontenttype dataschema topic   text
//	time                                                      timestamptz
//	offset (bigint), partition (int)
//	ext.<name>                                                the extension, or NULL
//	data                                                      the payload as JSON
//	data.<field>[.<field>...]                                 a payload field, by .proto or JSON name
//
// Scalar fields bind as their Go type (int64, string, bool, ...), enums as
// their value name (or, for a number the schema does not name, the number
// as text), google.protobuf.Timestamp as a time, and messages,
// repeated fields and maps as JSON. An unset message field is NULL.
func paramGetter(name string, md protoreflect.MessageDescriptor) (getter, error) {
	switch name {
	case "id":
		return func(ev *Event) (any, error) { return ev.Id, nil }, nil
	case "source":
		return func(ev *Event) (any, error) { return ev.Source, nil }, nil
	case "type":
		return func(ev *Event) (any, error) { return ev.Type, nil }, nil
	case "subject":
		return func(ev *Event) (any, error) { return ev.Subject, nil }, nil
	case "datacontenttype":
		return func(ev *Event) (any, error) { return ev.Datacontenttype, nil }, nil
	case "dataschema":
		return func(ev *Event) (any, error) { return ev.Dataschema, nil }, nil
	case "topic":
		return func(ev *Event) (any, error) { return ev.Topic, nil }, nil
	case "time":
		return func(ev *Event) (any, error) { return ev.Time.AsTime(), nil }, nil
	case "offset":
		return func(ev *Event) (any, error) { return ev.Offset, nil }, nil
	case "partition":
		return func(ev *Event) (any, error) { return ev.Partition, nil }, nil
	case "data":
		return func(ev *Event) (any, error) {
			b, err := ev.JSON()
			return string(b), err
		}, nil
	}
	if ext, ok := strings.CutPrefix(name, "ext."); ok {
		return func(ev *Event) (any, error) {
			if v, ok := ev.Extensions[ext]; ok {
				return v, nil
			}
			return nil, nil
		}, nil
	}
	path, ok := strings.CutPrefix(name, "data.")
	if !ok {
		return nil, fmt.Errorf("unknown parameter :%s; want :id, :source, :type, :subject, :time, :offset, :partition, :topic, :datacontenttype, :dataschema, :ext.<name>, :data or :data.<field>", name)
	}
	var fds []protoreflect.FieldDescriptor
	cur := md
	for i, part := range strings.Split(path, ".") {
		if cur == nil {
			return nil, fmt.Errorf("parameter :%s: %s is not a message", name, strings.Join(strings.Split(path, ".")[:i], "."))
		}
		fd := cur.Fields().ByName(protoreflect.Name(part))
		if fd == nil {
			fd = cur.Fields().ByJSONName(part)
		}
		if fd == nil {
			return nil, fmt.Errorf("parameter :%s: %s has no field %q", name, cur.FullName(), part)
		}
		fds = append(fds, fd)
		cur = nil
		if fd.Message() != nil && !fd.IsList() && !fd.IsMap() && fd.Message().FullName() != "google.protobuf.Timestamp" {
			cur = fd.Message()
		}
	}
	return func(ev *Event) (any, error) {
		m := ev.Payload.ProtoReflect()
		for _, fd := range fds[:len(fds)-1] {
			if !m.Has(fd) {
				return nil, nil
			}
			m = m.Get(fd).Message()
		}
		return fieldValue(m, fds[len(fds)-1])
	}, nil
}

// fieldValue returns the bind value of field fd of m.
func fieldValue(m protoreflect.Message, fd protoreflect.FieldDescriptor) (any, error) {
	if fd.HasPresence() && !m.Has(fd) {
		return nil, nil
	}
	v := m.Get(fd)
	switch {
	case fd.IsList():
		l := v.List()
		elems := make([]json.RawMessage, l.Len())
		for i := range l.Len() {
			b, err := jsonValue(fd, l.Get(i))
			if err != nil {
				return nil, err
			}
			elems[i] = b
		}
		b, err := json.Marshal(elems)
		return string(b), err
	case fd.IsMap():
		out := map[string]json.RawMessage{}
		var err error
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			out[k.String()], err = jsonValue(fd.MapValue(), mv)
			return err == nil
		})
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(out)
		return string(b), err
	case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
		if ts, ok := v.Message().Interface().(*timestamppb.Timestamp); ok {
			return ts.AsTime(), nil
		}
		b, err := schemas.MarshalJSON(v.Message().Interface())
		return string(b), err
	case fd.Kind() == protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name()), nil
		}
		return strconv.Itoa(int(v.Enum())), nil // a number a newer schema names: text, as enums are
	}
	return v.Interface(), nil
}

// jsonValue encodes one element of a repeated field or map as JSON.
func jsonValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) (json.RawMessage, error) {
	if fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
		return schemas.MarshalJSON(v.Message().Interface())
	}
	if fd.Kind() == protoreflect.EnumKind {
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return json.Marshal(string(ev.Name()))
		}
	}
	return json.Marshal(v.Interface())
}
