// Package spatetest gives tests real servers: PostgreSQL and Redis shared by a test binary, and an in-process Kafka-protocol broker per test.
//
// PostgreSQL and Redis come from SPATE_TEST_POSTGRES_URL and
// SPATE_TEST_REDIS_URL when set, else from servers started on first use
// (package throwaway) and stopped by Main. A server that cannot be had
// fails the test that asks for it; spatetest never skips.
package spatetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	goredis "github.com/redis/go-redis/v9"
	"github.com/spate-io/spate/throwaway"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

const (
	postgresEnv = "SPATE_TEST_POSTGRES_URL"
	redisEnv    = "SPATE_TEST_REDIS_URL"
	// startTimeout bounds the start of a shared server.
	startTimeout = 2 * time.Minute
	// cleanupTimeout bounds dropping a test's database.
	cleanupTimeout = time.Minute
)

var (
	// mainRan reports that Main is running the tests, and so will stop
	// the servers started here.
	mainRan atomic.Bool

	postgres = server{env: postgresEnv, start: startPostgres}
	redis    = server{env: redisEnv, start: startRedis}
)

// server is a server shared by the tests of a test binary.
type server struct {
	env   string
	start func(ctx context.Context) (url string, stop func() error, err error)

	mu   sync.Mutex
	done bool         // url or err is set
	url  string       // the server's URL
	err  error        // why there is no server; every caller gets it
	stop func() error // nil unless started here
}

// get returns the server's URL, starting the server on first use unless
// its environment variable names one.
func (s *server) get() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return s.url, s.err
	}
	s.done = true
	if s.url = os.Getenv(s.env); s.url != "" {
		return s.url, nil
	}
	if !mainRan.Load() {
		s.err = errors.New("no " + s.env + ", and starting a server needs TestMain to call spatetest.Main(m), which stops it")
		return "", s.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s.url, s.stop, s.err = s.start(ctx)
	if s.err != nil {
		s.err = fmt.Errorf("%w (or set %s)", s.err, s.env)
	}
	return s.url, s.err
}

// shutdown stops the server if it was started here.
func (s *server) shutdown() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop == nil {
		return nil
	}
	err := s.stop()
	s.stop = nil
	return err
}

func startPostgres(ctx context.Context) (string, func() error, error) {
	p, err := throwaway.StartPostgres(ctx, throwaway.PostgresConfig{})
	if err != nil {
		return "", nil, err
	}
	return p.URL(), p.Stop, nil
}

func startRedis(ctx context.Context) (string, func() error, error) {
	r, err := throwaway.StartRedis(ctx, throwaway.RedisConfig{})
	if err != nil {
		return "", nil, err
	}
	return r.URL(), r.Stop, nil
}

// Main runs the tests and stops the servers this package started.
// Use: func TestMain(m *testing.M) { spatetest.Main(m) }
func Main(m *testing.M) {
	mainRan.Store(true)
	code := m.Run()
	if err := errors.Join(postgres.shutdown(), redis.shutdown()); err != nil {
		fmt.Fprintf(os.Stderr, "spatetest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// Postgres returns the URL of a new, empty database for this test, dropped
// at cleanup (DROP DATABASE ... WITH (FORCE)). The server is
// SPATE_TEST_POSTGRES_URL if set, else one throwaway server started once
// per test binary.
func Postgres(t testing.TB) string {
	t.Helper()
	server, err := postgres.get()
	if err != nil {
		t.Fatalf("spatetest.Postgres: %v", err)
	}
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("spatetest.Postgres: %s must be a postgres:// URL", postgresEnv)
	}
	name := databaseName(t.Name())
	ident := pgx.Identifier{name}.Sanitize()
	if err := run(t.Context(), server, "CREATE DATABASE "+ident+" TEMPLATE template0"); err != nil {
		t.Fatalf("spatetest.Postgres: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := run(ctx, server, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			t.Errorf("spatetest.Postgres: drop database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	u.RawPath = ""
	return u.String()
}

// run runs one statement on a connection of its own to the server at
// serverURL.
func run(ctx context.Context, serverURL, sql string) error {
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// databaseName returns a valid PostgreSQL database name, unique to this
// call, that shows which test it belongs to: t_<test name>_<random hex>,
// the test name lower case with anything but [a-z0-9] replaced by _ and
// cut to 40 bytes, so the whole stays under PostgreSQL's 63.
func databaseName(test string) string {
	var b strings.Builder
	b.WriteString("t_")
	for _, c := range strings.ToLower(test) {
		if b.Len() == 2+40 {
			break
		}
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	b.WriteByte('_')
	b.WriteString(randomHex(4))
	return b.String()
}

// Redis returns the URL of a Redis server: SPATE_TEST_REDIS_URL if set, else
// one throwaway server started once per test binary. Tests isolate
// themselves by key prefix (give them KeyPrefix(t)).
func Redis(t testing.TB) string {
	t.Helper()
	u, err := redis.get()
	if err != nil {
		t.Fatalf("spatetest.Redis: %v", err)
	}
	return u
}

// RedisClient returns a client of the Redis server of Redis(t), closed when
// the test ends.
func RedisClient(t testing.TB) *goredis.Client {
	t.Helper()
	return RedisClientOf(t, Redis(t))
}

// RedisClientOf returns a client of the Redis server at url, closed when
// the test ends.
func RedisClientOf(t testing.TB, url string) *goredis.Client {
	t.Helper()
	opts, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatalf("spatetest.RedisClientOf: %v", err)
	}
	c := goredis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// OwnRedis starts a redis-server of the test's own, for a test that
// changes its configuration or stops it, and stops it when the test ends.
func OwnRedis(t testing.TB, cfg throwaway.RedisConfig) *throwaway.Redis {
	t.Helper()
	srv, err := throwaway.StartRedis(context.Background(), cfg)
	if err != nil {
		t.Fatalf("spatetest.OwnRedis: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	return srv
}

// KeyPrefix returns a Redis key prefix unique to this call, such as
// "t3f9a0c2b7d41e865:".
func KeyPrefix(t testing.TB) string {
	t.Helper()
	return "t" + randomHex(8) + ":"
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// Kafka starts an in-process Kafka-protocol cluster of one broker (kfake)
// with the given topics, each of the given partitions, closes it at cleanup,
// and returns its seed addresses.
func Kafka(t testing.TB, partitions int32, topics ...string) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topics...))
	if err != nil {
		t.Fatalf("spatetest.Kafka: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// StalledKafka starts a cluster like Kafka's, of one topic, whose produce
// requests wait until unstall is called (at the latest, at cleanup): a
// client sees a slow broker, which answers everything else.
func StalledKafka(t testing.TB, topic string, partitions int32) (c *kfake.Cluster, unstall func()) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatalf("spatetest.StalledKafka: %v", err)
	}
	release := make(chan struct{})
	var once sync.Once
	unstall = func() { once.Do(func() { close(release) }) }
	t.Cleanup(func() {
		unstall()
		c.Close()
	})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		select {
		case <-release:
			c.DropControl()
		default:
			c.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	return c, unstall
}
