package projection

import (
	"cmp"
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// batchStatement is a set-based statement: it runs once per batch over the
// relation "batch", which holds one row per event of its types, with one
// column per parameter the statement names (":data.order_id" is the column
// "data.order_id"), in offset order.
type batchStatement struct {
	typs   []string // the event types it reads, as declared
	sql    string
	params map[string][]getter // by event type, one getter per column
	types  []string            // SQL type of each parameter's column
	line   int
}

// batchProjection is a SQL projection of batch statements, applied in the
// order they are declared.
type batchProjection struct {
	name       string
	migrations []string
	stmts      []*batchStatement
}

func (p *batchProjection) Name() string { return p.name }

func (p *batchProjection) Migrate(ctx context.Context, tx pgx.Tx) error {
	return migrate(ctx, tx, p.name, p.migrations)
}

// Apply applies the batch in a savepoint. A set statement cannot say which
// event made it fail, so on a data or constraint error it finds the event at
// fault by applying halves of the batch (findFailing).
func (p *batchProjection) Apply(ctx context.Context, tx pgx.Tx, evs []*Event) error {
	return findFailing(ctx, tx, p.apply, evs)
}

func (p *batchProjection) apply(ctx context.Context, tx pgx.Tx, evs []*Event) error {
	var b pgx.Batch
	var queued []*batchStatement
	for _, st := range p.stmts {
		cols := make([][]any, len(st.types))
		for _, ev := range evs {
			getters, ok := st.params[ev.Type]
			if !ok {
				continue
			}
			for i, g := range getters {
				v, err := g(ev)
				if err != nil {
					return &EventError{Event: ev, Err: err}
				}
				cols[i] = append(cols[i], v)
			}
		}
		if len(cols[0]) == 0 {
			continue // no event of its types
		}
		args := make([]any, len(cols))
		for i, c := range cols {
			args[i] = c
		}
		b.Queue(st.sql, args...)
		queued = append(queued, st)
	}
	if len(queued) == 0 {
		return nil
	}
	if i, err := encodable(ctx, tx, &b); err != nil {
		return fmt.Errorf("batch statement at line %d: %w", queued[i].line, err)
	}
	br := tx.SendBatch(ctx, &b)
	for _, st := range queued {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return fmt.Errorf("batch statement at line %d: %w", st.line, err)
		}
	}
	return br.Close()
}

// nullParam is the parameter of an event whose type lacks the field.
func nullParam(*Event) (any, error) { return nil, nil }

// leadingWith matches a statement that starts with its own WITH clause,
// once leading space and comments are skipped (see sqlStart).
var leadingWith = regexp.MustCompile(`(?is)^WITH\s+(RECURSIVE\s+)?`)

// sqlStart returns where a statement's first token begins: after white
// space, -- comments and /* */ comments, which nest in PostgreSQL.
func sqlStart(sql string) int {
	i := 0
	for i < len(sql) {
		switch {
		case strings.ContainsRune(" \t\r\n\f\v", rune(sql[i])):
			i++
		case strings.HasPrefix(sql[i:], "--"):
			end := strings.IndexByte(sql[i:], '\n')
			if end < 0 {
				return len(sql)
			}
			i += end + 1
		case strings.HasPrefix(sql[i:], "/*"):
			i += 2
			for depth := 1; i < len(sql) && depth > 0; {
				switch {
				case strings.HasPrefix(sql[i:], "/*"):
					depth++
					i += 2
				case strings.HasPrefix(sql[i:], "*/"):
					depth--
					i += 2
				default:
					i++
				}
			}
		default:
			return i
		}
	}
	return i
}

// compileBatchStatement compiles a batch statement for events of the types
// typs, whose payloads are mds: each :name becomes the column "name" of the
// relation batch, defined in a WITH clause over unnest of one array
// parameter per column. A column must have the same SQL type in every
// event type the statement reads.
func compileBatchStatement(n *yaml.Node, typs []string, mds []protoreflect.MessageDescriptor) (*batchStatement, int, error) {
	first := n.Line
	if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		first++
	}
	body, names, at, err := compileSQL(n.Value, func(_ int, name string) string { return pgx.Identifier{name}.Sanitize() })
	if err != nil {
		return nil, first, err
	}
	if len(names) == 0 {
		return nil, first, fmt.Errorf("a batch statement reads its events through parameters such as :id or :data.field; this one names none")
	}
	st := &batchStatement{typs: typs, params: map[string][]getter{}, line: first}
	cols := make([]string, len(names))
	unnest := make([]string, len(names))
	for i, name := range names {
		line := first + strings.Count(n.Value[:at[i]], "\n")
		// A payload field that some of the types lack is NULL in their
		// events' rows; one that none of them has is an error.
		var firstErr error
		typ, typOf := "", ""
		for j, md := range mds {
			g, err := paramGetter(name, md)
			if err != nil {
				firstErr = cmp.Or(firstErr, err)
				g = nullParam
			} else if t := paramType(name, md); typ == "" {
				typ, typOf = t, typs[j]
			} else if t != typ {
				return nil, line, fmt.Errorf(":%s is %s in %s but %s in %s; a column has one type", name, typ, typOf, t, typs[j])
			}
			st.params[typs[j]] = append(st.params[typs[j]], g)
		}
		if typ == "" {
			return nil, line, firstErr
		}
		st.types = append(st.types, typ)
		cols[i] = pgx.Identifier{name}.Sanitize()
		unnest[i] = fmt.Sprintf("$%d::%s[]", i+1, st.types[i])
	}
	with := fmt.Sprintf("WITH batch (%s) AS (SELECT * FROM unnest(%s))", strings.Join(cols, ", "), strings.Join(unnest, ", "))
	if start := sqlStart(body); leadingWith.MatchString(body[start:]) {
		m := leadingWith.FindStringSubmatch(body[start:])
		if m[1] != "" {
			with = "WITH RECURSIVE" + strings.TrimPrefix(with, "WITH")
		}
		st.sql = body[:start] + with + ",\n" + body[start+len(m[0]):]
	} else {
		st.sql = with + "\n" + body
	}
	return st, first, nil
}

// paramType is the SQL type of a parameter, for its batch column.
func paramType(name string, md protoreflect.MessageDescriptor) string {
	switch name {
	case "time":
		return "timestamptz"
	case "offset":
		return "bigint"
	case "partition":
		return "int"
	case "data":
		return "jsonb"
	}
	path, ok := strings.CutPrefix(name, "data.")
	if !ok {
		return "text" // envelope attributes and extensions
	}
	var fd protoreflect.FieldDescriptor
	for _, part := range strings.Split(path, ".") {
		if fd = md.Fields().ByName(protoreflect.Name(part)); fd == nil {
			fd = md.Fields().ByJSONName(part)
		}
		md = fd.Message()
	}
	switch {
	case fd.IsList() || fd.IsMap():
		return "jsonb"
	case fd.Message() != nil && fd.Message().FullName() == "google.protobuf.Timestamp":
		return "timestamptz"
	}
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return "boolean"
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return "int"
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind, protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return "bigint"
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return "numeric"
	case protoreflect.FloatKind:
		return "real"
	case protoreflect.DoubleKind:
		return "double precision"
	case protoreflect.BytesKind:
		return "bytea"
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return "jsonb"
	}
	return "text" // strings and enums
}
