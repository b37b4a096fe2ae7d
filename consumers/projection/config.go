package projection

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/spate-io/spate/schemas"
)

// Load reads the projections section of a spate.yaml file:
//
//	projections:
//	  - name: event_log          # a built-in: event_log, latest or counters
//	    builtin: event_log
//	  - name: latest
//	    builtin: latest
//	    table: spate_latest      # latest and counters: the table (optional)
//	    types: ["shop.*"]        # built-ins: the types they take (globs; default all)
//	  - name: orders             # a projection in SQL
//	    migrations:              # run once each, in order, recorded in spate_migrations
//	      - CREATE TABLE orders (order_id text PRIMARY KEY, ...)
//	    on:                      # per event type, one statement or a list
//	      shop.order.placed.v1: |
//	        INSERT INTO orders (order_id, ...) VALUES (:data.order_id, ...)
//	  - name: customers          # or set-based: once per batch over "batch"
//	    batch:                   # type: one event type or a list of them
//	      - type: [shop.order.placed.v1, shop.order.cancelled.v1]
//	        sql: INSERT INTO customers ... SELECT DISTINCT :data.customer_id FROM batch ...
//
// Statements take named parameters (see paramGetter), always bound as
// values, never spliced into the SQL. Errors name the file, the line and
// the projection. Other top-level sections are left to their readers.
func Load(file string, data []byte, reg *schemas.Registry) ([]Projection, error) {
	var doc struct {
		Projections []yaml.Node `yaml:"projections"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var projs []Projection
	var set *sqlSet
	seen := map[string]int{}
	for _, n := range doc.Projections {
		var pc struct {
			Name       string    `yaml:"name"`
			Builtin    string    `yaml:"builtin"`
			Table      string    `yaml:"table"`
			Types      []string  `yaml:"types"`
			Migrations []string  `yaml:"migrations"`
			On         yaml.Node `yaml:"on"`
			Batch      yaml.Node `yaml:"batch"`
		}
		bad := func(line int, format string, args ...any) error {
			return fmt.Errorf("%s:%d: projection %s: %s", file, line, pc.Name, fmt.Sprintf(format, args...))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "name" {
				pc.Name = n.Content[i+1].Value // for errors before decoding
			}
		}
		if line, err := checkKeys(&n, projectionKeys); err != nil {
			return nil, bad(line, "%v", err)
		}
		if err := n.Decode(&pc); err != nil {
			return nil, bad(n.Line, "%v", err)
		}
		switch {
		case pc.Name == "":
			return nil, bad(n.Line, "name is required")
		case seen[pc.Name] > 0:
			return nil, bad(n.Line, "declared twice (first at line %d)", seen[pc.Name])
		}
		seen[pc.Name] = n.Line
		for _, g := range pc.Types {
			if _, err := path.Match(g, ""); err != nil {
				return nil, bad(n.Line, "types: bad pattern %q", g)
			}
		}

		if pc.Builtin != "" {
			if len(pc.Migrations) > 0 || !pc.On.IsZero() || !pc.Batch.IsZero() {
				return nil, bad(n.Line, "a built-in takes no migrations, on or batch")
			}
			var p Projection
			switch pc.Builtin {
			case "event_log":
				if pc.Table != "" {
					return nil, bad(n.Line, "event_log has a fixed table")
				}
				p = EventLog()
			case "latest":
				p = Latest(pc.Table)
			case "counters":
				p = Counters(pc.Table)
			default:
				return nil, bad(n.Line, "unknown builtin %q: want event_log, latest or counters", pc.Builtin)
			}
			if p = Filter(p, pc.Types...); pc.Name != p.Name() {
				p = renamed{p, pc.Name}
			}
			projs = append(projs, p)
			continue
		}

		if pc.Table != "" || len(pc.Types) > 0 {
			return nil, bad(n.Line, "table and types are for built-ins; a SQL projection takes the types of its on or batch section")
		}
		if !pc.Batch.IsZero() {
			if !pc.On.IsZero() {
				return nil, bad(n.Line, "give on (statements per event) or batch (statements per batch), not both")
			}
			bp, err := loadBatch(&pc.Batch, reg, func(line int, format string, args ...any) error { return bad(line, format, args...) })
			if err != nil {
				return nil, err
			}
			bp.name, bp.migrations = pc.Name, pc.Migrations
			projs = append(projs, bp)
			continue
		}
		sp := &sqlProjection{name: pc.Name, migrations: pc.Migrations, on: map[string][]*statement{}}
		if pc.On.Kind != yaml.MappingNode || len(pc.On.Content) == 0 {
			return nil, bad(n.Line, "on: want a map from event type to statements")
		}
		for i := 0; i < len(pc.On.Content); i += 2 {
			key, val := pc.On.Content[i], pc.On.Content[i+1]
			typ := key.Value
			mt, err := reg.Message(typ)
			if err != nil {
				return nil, bad(key.Line, "on: %v", err)
			}
			var nodes []*yaml.Node
			switch val.Kind {
			case yaml.ScalarNode:
				nodes = []*yaml.Node{val}
			case yaml.SequenceNode:
				nodes = val.Content
			}
			if len(nodes) == 0 {
				return nil, bad(val.Line, "on %s: want a statement or a list of statements", typ)
			}
			for _, sn := range nodes {
				if sn.Kind != yaml.ScalarNode || strings.TrimSpace(sn.Value) == "" {
					return nil, bad(sn.Line, "on %s: want a statement", typ)
				}
				st, line, err := compileStatement(sn, mt.Descriptor())
				if err != nil {
					return nil, bad(line, "on %s: %v", typ, err)
				}
				sp.on[typ] = append(sp.on[typ], st)
			}
		}
		if set == nil {
			set = &sqlSet{}
			projs = append(projs, set)
		}
		set.projs = append(set.projs, sp)
	}
	return projs, nil
}

// loadBatch reads a batch section: a list of {type, sql}, where type is
// an event type or a list of them.
func loadBatch(n *yaml.Node, reg *schemas.Registry, bad func(int, string, ...any) error) (*batchProjection, error) {
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		return nil, bad(n.Line, "batch: want a list of {type, sql}")
	}
	bp := &batchProjection{}
	for _, en := range n.Content {
		if line, err := checkKeys(en, []string{"type", "sql"}); err != nil {
			return nil, bad(line, "batch: %v", err)
		}
		var e struct {
			Type yaml.Node `yaml:"type"`
			SQL  yaml.Node `yaml:"sql"`
		}
		if err := en.Decode(&e); err != nil {
			return nil, bad(en.Line, "batch: %v", err)
		}
		// type: one event type, or a list of them read as one relation.
		var typs []string
		switch e.Type.Kind {
		case yaml.ScalarNode:
			typs = []string{e.Type.Value}
		case yaml.SequenceNode:
			if err := e.Type.Decode(&typs); err != nil {
				return nil, bad(e.Type.Line, "batch: type: %v", err)
			}
		}
		if len(typs) == 0 || slices.Contains(typs, "") {
			return nil, bad(en.Line, "batch: want type: an event type or a list of them")
		}
		name := strings.Join(typs, ",")
		mds := make([]protoreflect.MessageDescriptor, len(typs))
		for i, typ := range typs {
			if slices.Contains(typs[:i], typ) {
				return nil, bad(e.Type.Line, "batch: type %s is listed twice", typ)
			}
			mt, err := reg.Message(typ)
			if err != nil {
				return nil, bad(en.Line, "batch: %v", err)
			}
			mds[i] = mt.Descriptor()
		}
		sql := &e.SQL
		if sql.Kind == yaml.AliasNode { // sql: *anchor, one text for several types
			sql = sql.Alias
		}
		if sql.Kind != yaml.ScalarNode || strings.TrimSpace(sql.Value) == "" {
			return nil, bad(en.Line, "batch %s: want sql", name)
		}
		st, line, err := compileBatchStatement(sql, typs, mds)
		if err != nil {
			return nil, bad(line, "batch %s: %v", name, err)
		}
		bp.stmts = append(bp.stmts, st)
	}
	return bp, nil
}

// projectionKeys are the keys a projection may have.
var projectionKeys = []string{"name", "builtin", "table", "types", "migrations", "on", "batch"}

// checkKeys reports a key of mapping n that is not in keys, with its line.
func checkKeys(n *yaml.Node, keys []string) (int, error) {
	if n.Kind != yaml.MappingNode {
		return n.Line, errors.New("want a map")
	}
	for i := 0; i < len(n.Content); i += 2 {
		if k := n.Content[i]; !slices.Contains(keys, k.Value) {
			return k.Line, fmt.Errorf("unknown key %q; want one of %s", k.Value, strings.Join(keys, ", "))
		}
	}
	return 0, nil
}

// Filter returns p restricted to the event types matching any of the glob
// patterns (path.Match syntax, e.g. "shop.order.*"). No patterns: all types.
func Filter(p Projection, patterns ...string) Projection {
	if len(patterns) == 0 {
		return p
	}
	return filtered{p, patterns}
}

// renamed is a built-in declared under a name of its own (say, two latest
// projections on two tables), by which Select, the rebuild, dead letters
// and metrics know it.
type renamed struct {
	Projection
	name string
}

func (r renamed) Name() string { return r.name }

func (r renamed) Migrate(ctx context.Context, tx pgx.Tx) error {
	return migrateWrapped(ctx, tx, r.Projection)
}

type filtered struct {
	Projection
	patterns []string
}

func (f filtered) match(typ string) bool {
	for _, g := range f.patterns {
		if ok, _ := path.Match(g, typ); ok {
			return true
		}
	}
	return false
}

func (f filtered) Apply(ctx context.Context, tx pgx.Tx, evs []*Event) error {
	var mine []*Event
	for _, ev := range evs {
		if f.match(ev.Type) {
			mine = append(mine, ev)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	return f.Projection.Apply(ctx, tx, mine)
}

func (f filtered) Migrate(ctx context.Context, tx pgx.Tx) error {
	return migrateWrapped(ctx, tx, f.Projection)
}

// migrateWrapped runs the migrations of a projection a wrapper holds, if it
// has any.
func migrateWrapped(ctx context.Context, tx pgx.Tx, p Projection) error {
	if m, ok := p.(Migrator); ok {
		return m.Migrate(ctx, tx)
	}
	return nil
}

// migrate runs a projection's migrations that have not run yet, and
// refuses one that changed since it ran.
func migrate(ctx context.Context, tx pgx.Tx, projection string, migrations []string) error {
	for i, m := range migrations {
		version := i + 1
		sum := sha256.Sum256([]byte(strings.TrimSpace(m)))
		checksum := hex.EncodeToString(sum[:])
		var applied string
		err := tx.QueryRow(ctx, `SELECT checksum FROM spate_migrations WHERE projection = $1 AND version = $2`, projection, version).Scan(&applied)
		switch {
		case err == nil && applied == checksum:
			continue
		case err == nil:
			return fmt.Errorf("migration %d changed since it was applied: leave applied migrations as they are and add a new one", version)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		if _, err := tx.Exec(ctx, m); err != nil {
			return fmt.Errorf("migration %d: %w", version, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO spate_migrations (projection, version, checksum) VALUES ($1, $2, $3)`, projection, version, checksum); err != nil {
			return err
		}
	}
	return nil
}
