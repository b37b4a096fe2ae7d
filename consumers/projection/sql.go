package projection

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// sqlProjection is a projection declared in spate.yaml.
type sqlProjection struct {
	name       string
	migrations []string
	on         map[string][]*statement // by event type
}

// statement is a compiled statement: $n placeholders and their getters.
type statement struct {
	sql    string
	params []getter
	line   int
}

// compileStatement compiles the statement in node n for payloads of md. On
// error it returns the line to blame: the parameter's own, where it can.
func compileStatement(n *yaml.Node, md protoreflect.MessageDescriptor) (*statement, int, error) {
	first := n.Line
	if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		first++ // a block scalar's text starts on the line after its indicator
	}
	sql, names, at, err := compileSQL(n.Value, nil)
	if err != nil {
		return nil, first, err
	}
	st := &statement{sql: sql, line: first}
	for i, name := range names {
		g, err := paramGetter(name, md)
		if err != nil {
			return nil, first + strings.Count(n.Value[:at[i]], "\n"), err
		}
		st.params = append(st.params, g)
	}
	return st, first, nil
}

// sqlSet applies the SQL projections together: event by event, and for each
// event its statements in the order projections and statements are
// declared, all in one pipelined round trip. So a projection sees the tables
// of those declared before it as they are after this event, and those
// declared after it as they were before.
type sqlSet struct {
	projs []*sqlProjection
}

func (s *sqlSet) Name() string {
	names := make([]string, len(s.projs))
	for i, p := range s.projs {
		names[i] = p.name
	}
	return strings.Join(names, ",")
}

func (s *sqlSet) Migrate(ctx context.Context, tx pgx.Tx) error {
	for _, p := range s.projs {
		if err := migrate(ctx, tx, p.name, p.migrations); err != nil {
			return fmt.Errorf("projection %s: %w", p.name, err)
		}
	}
	return nil
}

// Apply applies evs. A statement that Postgres refuses names its event. A
// parameter that pgx cannot encode does not: pgx fails the whole pipeline,
// so the error is returned as is, and the projector finds its event
// (findFailing).
func (s *sqlSet) Apply(ctx context.Context, tx pgx.Tx, evs []*Event) error {
	type origin struct {
		ev   *Event
		proj *sqlProjection
		st   *statement
	}
	var b pgx.Batch
	var origins []origin
	for _, ev := range evs {
		for _, p := range s.projs {
			for _, st := range p.on[ev.Type] {
				args := make([]any, len(st.params))
				for i, g := range st.params {
					v, err := g(ev)
					if err != nil {
						return &EventError{Event: ev, Projection: p.name, Err: err}
					}
					args[i] = v
				}
				b.Queue(st.sql, args...)
				origins = append(origins, origin{ev, p, st})
			}
		}
	}
	if len(origins) == 0 {
		return nil
	}
	if i, err := encodable(ctx, tx, &b); err != nil {
		o := origins[i]
		return &EventError{Event: o.ev, Projection: o.proj.name, Err: fmt.Errorf("statement at line %d: %w", o.st.line, err)}
	}
	br := tx.SendBatch(ctx, &b)
	for _, o := range origins {
		if _, err := br.Exec(); err != nil {
			br.Close()
			if encodeFailure(err) {
				return err // the pipeline failed as a whole: no event to name
			}
			return &EventError{Event: o.ev, Projection: o.proj.name, Err: fmt.Errorf("statement at line %d: %w", o.st.line, err)}
		}
	}
	return br.Close()
}
