package projection_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/projection"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

// checkedRegistry holds checks.checked.v1: an enum status (1) and an int64
// n (2).
func checkedRegistry(t *testing.T) *schemas.Registry {
	status := testField("status", 1, descriptorpb.FieldDescriptorProto_TYPE_ENUM)
	status.TypeName = proto.String(".checks.v1.Status")
	return testRegistry(t, &descriptorpb.FileDescriptorProto{
		Name: proto.String("checks/v1/checks.proto"), Package: proto.String("checks.v1"), Syntax: proto.String("proto3"),
		Dependency: []string{"spate/v1/event.proto"},
		EnumType: []*descriptorpb.EnumDescriptorProto{{Name: proto.String("Status"), Value: []*descriptorpb.EnumValueDescriptorProto{
			{Name: proto.String("STATUS_UNSPECIFIED"), Number: proto.Int32(0)},
			{Name: proto.String("STATUS_OK"), Number: proto.Int32(1)},
		}}},
		MessageType: []*descriptorpb.DescriptorProto{
			testMessage("Checked", "checks.checked.v1", status, testField("n", 2, descriptorpb.FieldDescriptorProto_TYPE_INT64)),
		},
	})
}

// checked returns a checks.checked.v1 record at offset o.
func checked(o int64, status int32, n int64) *kgo.Record {
	var data []byte
	data = protowire.AppendTag(data, 1, protowire.VarintType)
	data = protowire.AppendVarint(data, uint64(status))
	data = protowire.AppendTag(data, 2, protowire.VarintType)
	data = protowire.AppendVarint(data, uint64(n))
	r := cekafka.Record("events", &spatev1.Event{Id: fmt.Sprint("e-", o), Source: "/test", Type: "checks.checked.v1",
		Time: timestamppb.Now(), Datacontenttype: schemas.ContentTypeProtobuf, Data: data})
	r.Partition, r.Offset = 0, o
	return r
}

// checkedProjector returns a projector of one projection of
// checks.checked.v1, named table, which creates table with columns (id
// text PRIMARY KEY and column) and inserts each event's :id and :data.field
// into it, in form "on" or "batch".
func checkedProjector(t *testing.T, pool *pgxpool.Pool, reg *schemas.Registry, form, table, column, field string) *projection.Projector {
	t.Helper()
	stmt := fmt.Sprintf("    on:\n      checks.checked.v1:\n        - INSERT INTO %s VALUES (:id, :data.%s)\n", table, field)
	if form == "batch" {
		stmt = fmt.Sprintf("    batch:\n      - type: checks.checked.v1\n        sql: INSERT INTO %s SELECT :id, :data.%s FROM batch\n", table, field)
	}
	projs, err := projection.Load("spate.yaml", fmt.Appendf(nil, `
projections:
  - name: %s
    migrations:
      - CREATE TABLE %s (id text PRIMARY KEY, %s)
%s`, table, table, column, stmt), reg)
	if err != nil {
		t.Fatal(err)
	}
	p := projection.New(pool, reg, projection.Config{Group: table, Projections: projs})
	if err := p.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p
}

// An enum number the schema does not name (a producer's newer schema, say)
// binds as its number, as text: the event is applied, not retried.
func TestUnknownEnumNumberBindsAsText(t *testing.T) {
	ctx := context.Background()
	inEachForm(t, "status", "status text NOT NULL", "status", func(t *testing.T, pool *pgxpool.Pool, p *projection.Projector, table string) {
		if err := p.Apply(ctx, batch([]*kgo.Record{checked(0, 1, 0), checked(1, 7, 0)})); err != nil {
			t.Fatalf("Apply = %v, want both events applied", err)
		}
		var got string
		if err := pool.QueryRow(ctx, fmt.Sprintf("SELECT string_agg(id || '=' || status, ',' ORDER BY id) FROM %s", table)).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := "e-0=STATUS_OK,e-1=7"; got != want {
			t.Fatalf("%s holds %s, want %s", table, got, want)
		}
	})
}

// A value the driver cannot encode for its column (an int64 beyond an
// integer column's range) fails on every try, like a data exception from
// Postgres: the event is poison after PoisonAfter tries, not retried for
// ever. (In the batch form the parameter is a bigint array, which pgx
// encodes; Postgres refuses the value, as it did before.)
func TestValueTheColumnCannotHoldIsPoison(t *testing.T) {
	ctx := context.Background()
	inEachForm(t, "small", "n integer NOT NULL", "n", func(t *testing.T, _ *pgxpool.Pool, p *projection.Projector, table string) {
		recs := []*kgo.Record{checked(0, 1, 5), checked(1, 1, 1<<40), checked(2, 1, 6)}
		for try := 1; ; try++ {
			err := p.Apply(ctx, batch(recs))
			var pe *consumers.PoisonError
			if errors.As(err, &pe) {
				if pe.Record != recs[1] || pe.Sink != table || pe.Class != "data-exception" || try != 3 {
					t.Fatalf("try %d: PoisonError for offset %d, sink %q, class %q; want offset 1, sink %s, data-exception, at try 3",
						try, pe.Record.Offset, pe.Sink, pe.Class, table)
				}
				break
			}
			if err == nil || try == 3 {
				t.Fatalf("try %d: Apply = %v, want an error, and a PoisonError at try 3", try, err)
			}
		}
	})
}

// inEachForm runs test, in parallel, with a projector of checkedProjector
// in each form, "on" and "batch", on a table named name_<form>.
func inEachForm(t *testing.T, name, column, field string, test func(t *testing.T, pool *pgxpool.Pool, p *projection.Projector, table string)) {
	t.Parallel()
	pool := newPool(t, spatetest.Postgres(t))
	reg := checkedRegistry(t)
	for _, form := range []string{"on", "batch"} {
		t.Run(form, func(t *testing.T) {
			table := name + "_" + form
			test(t, pool, checkedProjector(t, pool, reg, form, table, column, field), table)
		})
	}
}

// A re-drive of an event with a value its column cannot hold, in a
// statement after another, is refused as poison of its projection, as the
// projector dead-lettered it.
func TestRedriveOfAValueTheColumnCannotHold(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, spatetest.Postgres(t))
	reg := checkedRegistry(t)
	projs, err := projection.Load("spate.yaml", []byte(`
projections:
  - name: small
    migrations:
      - CREATE TABLE seen (id text PRIMARY KEY)
      - CREATE TABLE small (id text PRIMARY KEY, n integer NOT NULL)
    on:
      checks.checked.v1:
        - INSERT INTO seen VALUES (:id)
        - INSERT INTO small VALUES (:id, :data.n)
`), reg)
	if err != nil {
		t.Fatal(err)
	}
	p := projection.New(pool, reg, projection.Config{Projections: projs})
	if err := p.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Next: 1}); err != nil { // the group moved past it
		t.Fatal(err)
	}
	ok, err := p.Redrive(ctx, asDeadLetter(checked(0, 1, 1<<40), projection.DefaultGroup, "data-exception"))
	var pe *consumers.PoisonError
	if ok || !errors.As(err, &pe) || pe.Sink != "small" || pe.Class != "data-exception" {
		t.Fatalf("Redrive = %v, %v; want a PoisonError of small, class data-exception", ok, err)
	}
	wantRows(t, pool, `SELECT count(*) FROM seen`, "0")
}
