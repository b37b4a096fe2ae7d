package projection_test

import (
	"strings"
	"testing"

	"github.com/spate-io/spate/consumers/projection"
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
	if got, want := strings.Join(names, " "), "event_log latest counters orders customer_totals payments"; got != want {
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := projection.Load("spate.yaml", []byte(tc.yaml), schemas.Builtin())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
