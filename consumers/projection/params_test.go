package projection

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCompileSQL(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		names          []string
		err            string
	}{
		{"names in order of first use", "INSERT INTO t VALUES (:data.b, :id, :data.b)", "INSERT INTO t VALUES ($1, $2, $1)", []string{"data.b", "id"}, ""},
		{"casts are not parameters", "SELECT :id::text, x::int", "SELECT $1::text, x::int", []string{"id"}, ""},
		{"string literals", "SELECT ':id', 'it''s :x', :y", "SELECT ':id', 'it''s :x', $1", []string{"y"}, ""},
		{"E string with backslash quote", `SELECT E'\' :no', :yes`, `SELECT E'\' :no', $1`, []string{"yes"}, ""},
		{"quoted identifiers", `SELECT ":id" FROM t WHERE a = :a`, `SELECT ":id" FROM t WHERE a = $1`, []string{"a"}, ""},
		{"line comment", "SELECT 1 -- :id\n, :a", "SELECT 1 -- :id\n, $1", []string{"a"}, ""},
		{"nested block comment", "SELECT /* :a /* :b */ :c */ :d", "SELECT /* :a /* :b */ :c */ $1", []string{"d"}, ""},
		{"dollar quotes", "DO $x$ SELECT :a $x$; SELECT $$:b$$, :c", "DO $x$ SELECT :a $x$; SELECT $$:b$$, $1", []string{"c"}, ""},
		{"trailing dot is not part of a name", "SELECT :data.a.", "SELECT $1.", []string{"data.a"}, ""},
		{"array slice colon", "SELECT a[1:2]", "SELECT a[1:2]", nil, ""},
		{"positional placeholders refused", "SELECT $1", "", nil, "positional parameter $1"},
		{"unterminated quote", "SELECT 'abc", "", nil, "unterminated ' quote"},
		{"unterminated dollar quote", "SELECT $q$ abc", "", nil, "unterminated $q$ quote"},
		{"unterminated comment", "SELECT /* abc", "", nil, "unterminated /* comment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, names, _, err := compileSQL(tc.in, nil)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("compileSQL(%q) error = %v, want one containing %q", tc.in, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("compileSQL(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if diff := cmp.Diff(tc.names, names); diff != "" {
				t.Errorf("names (-want +got):\n%s", diff)
			}
		})
	}
}
