package spatetest_test

import (
	"context"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spate-io/spate/spatetest"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestMain(m *testing.M) { spatetest.Main(m) }

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func databaseName(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var name string
	if err := conn.QueryRow(t.Context(), "select current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestPostgresGivesEachTestItsOwnEmptyDatabase(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		urls = map[string]string{} // subtest: URL
	)
	t.Run("group", func(t *testing.T) {
		for _, name := range []string{
			"a",
			"b",
			`Weird Name/With-Ünïcode "quotes"; drop`,
			strings.Repeat("long", 30),
		} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				u := spatetest.Postgres(t)
				mu.Lock()
				urls[name] = u
				mu.Unlock()

				conn := connect(t, u)
				var tables int
				err := conn.QueryRow(t.Context(),
					"select count(*) from pg_tables where schemaname not in ('pg_catalog', 'information_schema')").Scan(&tables)
				if err != nil {
					t.Fatal(err)
				}
				if tables != 0 {
					t.Errorf("user tables in new database: got %d, want 0", tables)
				}
				// Left behind on purpose: the next test's database must
				// not have it, and the drop must not mind it.
				if _, err := conn.Exec(t.Context(), "create table mine (n int)"); err != nil {
					t.Fatal(err)
				}
				if got := databaseName(t, conn); len(got) > 63 {
					t.Errorf("database name %q: got %d bytes, want at most 63", got, len(got))
				}
			})
		}
	})
	if t.Failed() {
		return
	}

	// The subtests are done, so their databases must be gone.
	seen := map[string]bool{}
	for name, u := range urls {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		db := strings.TrimPrefix(pu.Path, "/")
		if seen[db] {
			t.Errorf("database %s given to two tests", db)
		}
		seen[db] = true

		pu.Path = "/postgres"
		conn := connect(t, pu.String())
		var exists bool
		if err := conn.QueryRow(t.Context(), "select exists (select from pg_database where datname = $1)", db).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists {
			t.Errorf("database %s of test %q: still there after its cleanup", db, name)
		}
	}
}

func TestRedis(t *testing.T) {
	t.Parallel()
	c := spatetest.RedisClient(t)
	ctx := t.Context()

	p1, p2 := spatetest.KeyPrefix(t), spatetest.KeyPrefix(t)
	if p1 == p2 {
		t.Fatalf("two KeyPrefix calls: got %q twice, want different prefixes", p1)
	}
	if err := c.Set(ctx, p1+"k", "one", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, p2+"k", "two", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for prefix, want := range map[string]string{p1: "one", p2: "two"} {
		got, err := c.Get(ctx, prefix+"k").Result()
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("get %sk: got %q, want %q", prefix, got, want)
		}
	}
}

func TestRedisIsShared(t *testing.T) {
	t.Parallel()
	if a, b := spatetest.Redis(t), spatetest.Redis(t); a != b {
		t.Errorf("two Redis calls: got %q and %q, want one server", a, b)
	}
}

func TestKafka(t *testing.T) {
	t.Parallel()
	const topic = "events"
	seeds := spatetest.Kafka(t, 3, topic)
	if len(seeds) != 1 {
		t.Fatalf("seeds: got %v, want one broker", seeds)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	want := &kgo.Record{Topic: topic, Key: []byte("k"), Value: []byte("hello")}
	if err := cl.ProduceSync(ctx, want).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consume %s: %v", topic, err)
		}
		for _, e := range fs.Errors() {
			t.Fatalf("fetch %s/%d: %v", e.Topic, e.Partition, e.Err)
		}
		if recs := fs.Records(); len(recs) > 0 {
			if got := string(recs[0].Value); got != "hello" {
				t.Errorf("value: got %q, want %q", got, "hello")
			}
			if recs[0].Partition != want.Partition || recs[0].Offset != 0 {
				t.Errorf("record at %d@%d, want %d@0", recs[0].Partition, recs[0].Offset, want.Partition)
			}
			return
		}
	}
}
