package projection

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// defined is a projection that can state its definition: its tables and
// statements. Projections declared in spate.yaml and the built-ins are;
// projections written in Go are not, and are not checked.
type defined interface {
	definition() string
}

func (eventLog) definition() string   { return "builtin event_log" }
func (l latest) definition() string   { return "builtin latest " + l.table }
func (c counters) definition() string { return "builtin counters " + c.table }

func (f filtered) definition() string {
	d, ok := f.Projection.(defined)
	if !ok {
		return ""
	}
	return d.definition() + " types " + strings.Join(f.patterns, ",")
}

func (r renamed) definition() string {
	if d, ok := r.Projection.(defined); ok {
		return d.definition()
	}
	return ""
}

func (p *sqlProjection) definition() string {
	var b strings.Builder
	for _, m := range p.migrations {
		fmt.Fprintf(&b, "migration %q\n", strings.TrimSpace(m))
	}
	for _, typ := range slices.Sorted(maps.Keys(p.on)) {
		for _, st := range p.on[typ] {
			fmt.Fprintf(&b, "on %s %q\n", typ, st.sql)
		}
	}
	return b.String()
}

func (p *batchProjection) definition() string {
	var b strings.Builder
	for _, m := range p.migrations {
		fmt.Fprintf(&b, "migration %q\n", strings.TrimSpace(m))
	}
	for _, st := range p.stmts {
		fmt.Fprintf(&b, "batch %s %q\n", strings.Join(st.typs, ","), st.sql)
	}
	return b.String()
}

// named returns the projections in projs by name, the SQL projections
// applied together as one taken apart.
func named(projs []Projection) map[string]Projection {
	byName := map[string]Projection{}
	for _, pr := range each(projs) {
		byName[pr.Name()] = pr
	}
	return byName
}

// each returns the projections in projs one by one, in order: the SQL
// projections that a set applies together each on its own.
func each(projs []Projection) []Projection {
	var out []Projection
	for _, pr := range projs {
		if set, ok := pr.(*sqlSet); ok {
			for _, sp := range set.projs {
				out = append(out, &sqlSet{projs: []*sqlProjection{sp}})
			}
			continue
		}
		out = append(out, pr)
	}
	return out
}

// Names returns the names of the projections in projs, as Select and dead
// letters name them: each SQL projection by its own name.
func Names(projs []Projection) []string {
	return slices.Sorted(maps.Keys(named(projs)))
}

// definitions returns the checksum of the definition of each projection in
// projs that has one, by name.
func definitions(projs []Projection) map[string]string {
	sums := map[string]string{}
	for name, pr := range named(projs) {
		var d defined
		if set, ok := pr.(*sqlSet); ok {
			d = set.projs[0]
		} else if d, ok = pr.(defined); !ok {
			continue
		}
		if d.definition() != "" {
			sum := sha256.Sum256([]byte(d.definition()))
			sums[name] = hex.EncodeToString(sum[:8])
		}
	}
	return sums
}

// Select returns the projections of projs with the given names, in the
// order of projs. A projection declared with on: statements can be taken
// alone, apart from the others applied with it.
func Select(projs []Projection, names ...string) ([]Projection, error) {
	byName := named(projs)
	want := map[string]bool{}
	for _, n := range names {
		if _, ok := byName[n]; !ok {
			return nil, fmt.Errorf("no projection %q; the configuration has %s", n, strings.Join(Names(projs), ", "))
		}
		want[n] = true
	}
	var out []Projection
	var set *sqlSet
	for _, pr := range projs {
		s, ok := pr.(*sqlSet)
		if !ok {
			if want[pr.Name()] {
				out = append(out, pr)
			}
			continue
		}
		for _, sp := range s.projs {
			if !want[sp.name] {
				continue
			}
			if set == nil {
				set = &sqlSet{}
				out = append(out, set)
			}
			set.projs = append(set.projs, sp)
		}
	}
	return out, nil
}

// ErrDefinitionChanged reports that a projection in Postgres was rebuilt
// from, or is applied by another projector with, a definition other than
// this projector's. The projector stops applying until it is restarted with
// the definition the tables were built from.
var ErrDefinitionChanged = errors.New("projection definition changed")

// registerDefinitions records the definition of each projection in
// spate_projections. A changed definition is recorded too, as the one
// that now applies; it applies to new events only.
func (p *Projector) registerDefinitions(ctx context.Context, tx pgx.Tx) error {
	for _, name := range slices.Sorted(maps.Keys(p.defs)) {
		sum := p.defs[name]
		var old string
		err := tx.QueryRow(ctx, `SELECT checksum FROM spate_projections WHERE projection = $1`, name).Scan(&old)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if old == sum {
			continue
		}
		if old != "" {
			p.log.Warn("projection definition changed: the new one applies to new events only; if it changes how past events project, rebuild with spate replay projection",
				"projection", name, "was", old, "now", sum)
		}
		_, err = tx.Exec(ctx, `INSERT INTO spate_projections (projection, checksum) VALUES ($1, $2)
			ON CONFLICT (projection) DO UPDATE SET checksum = excluded.checksum, updated_at = now()`, name, sum)
		if err != nil {
			return err
		}
	}
	return nil
}

// checkDefinitionsSQL returns the projections whose recorded definition is
// not the one given.
const checkDefinitionsSQL = `
SELECT coalesce(string_agg(s.projection, ', ' ORDER BY s.projection), '')
FROM spate_projections AS s JOIN unnest($1::text[], $2::text[]) AS m(projection, checksum) USING (projection)
WHERE s.checksum <> m.checksum`
