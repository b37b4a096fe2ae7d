package throwaway

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

func startPostgres(t *testing.T, cfg PostgresConfig) *Postgres {
	t.Helper()
	start := time.Now()
	p, err := StartPostgres(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("postgres on %s started in %s", p.URL(), time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func count(t *testing.T, conn *pgx.Conn, query string) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(t.Context(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func TestPostgresCrashRestart(t *testing.T) {
	t.Parallel()
	p := startPostgres(t, PostgresConfig{})
	ctx := t.Context()

	conn := connect(t, p.URL())
	if got := count(t, conn, "select 1"); got != 1 {
		t.Fatalf("select 1: got %d, want 1", got)
	}
	if _, err := conn.Exec(ctx, "create table t (n int)"); err != nil {
		t.Fatal(err)
	}
	// Each insert is its own transaction; every acknowledged commit must
	// survive the crash.
	const n = 200
	for i := range n {
		if _, err := conn.Exec(ctx, "insert into t values ($1)", i); err != nil {
			t.Fatal(err)
		}
	}

	if err := p.Crash(); err != nil {
		t.Fatal(err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("ping after Crash: got no error")
	}
	if err := p.Crash(); err == nil {
		t.Error("second Crash: got no error, want not running")
	}

	start := time.Now()
	if err := p.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted with crash recovery in %s", time.Since(start).Round(time.Millisecond))
	if err := p.Restart(ctx); err == nil {
		t.Error("Restart while running: got no error")
	}
	conn = connect(t, p.URL())
	if got := count(t, conn, "select count(*) from t"); got != n {
		t.Errorf("rows after crash: got %d, want %d", got, n)
	}
}

func TestPostgresStopRemovesTempDir(t *testing.T) {
	t.Parallel()
	p, err := StartPostgres(t.Context(), PostgresConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat %s after Stop: got %v, want not exist", p.dir, err)
	}
	if err := p.Restart(t.Context()); err == nil {
		t.Error("Restart after Stop: got no error")
	}
	if err := p.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// reachableTempDir returns a new directory that the OS user postgres can
// reach when the tests run as root (t.TempDir's parent is private to root).
func reachableTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "pg")
}

func TestPostgresDirKeepsData(t *testing.T) {
	t.Parallel()
	dir := reachableTempDir(t)

	p := startPostgres(t, PostgresConfig{Dir: dir})
	conn := connect(t, p.URL())
	if _, err := conn.Exec(t.Context(), "create table kept (n int); insert into kept values (42)"); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "PG_VERSION")); err != nil {
		t.Fatalf("data after Stop: %v", err)
	}

	p = startPostgres(t, PostgresConfig{Dir: dir})
	conn = connect(t, p.URL())
	if got := count(t, conn, "select n from kept"); got != 42 {
		t.Errorf("kept row: got %d, want 42", got)
	}
}

func TestStartPostgresPortInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	p, err := StartPostgres(t.Context(), PostgresConfig{Port: port})
	if err == nil {
		p.Stop()
		t.Fatalf("start on busy port %d: got no error", port)
	}
	if !errors.Is(err, errAddrInUse) {
		t.Errorf("start on busy port %d: got %v, want errAddrInUse", port, err)
	}
	t.Logf("error: %v", err)
}

func TestStartPostgresUnreachableDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Log("not root: PostgreSQL runs as this user, who can reach any directory it can create")
		return
	}
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pg") // t.TempDir's parent is private to root
	_, err := StartPostgres(t.Context(), PostgresConfig{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "chmod o+x") {
		t.Errorf("start in %s: got %v, want an error saying how to make it reachable", dir, err)
	}
	t.Logf("error: %v", err)
}

func TestStartPostgresNoBinaries(t *testing.T) {
	t.Parallel()
	_, err := StartPostgres(t.Context(), PostgresConfig{BinDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Errorf("start without binaries: got %v, want an error saying what to install", err)
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int // sign
	}{
		{"15", "9.6", 1},
		{"9.6", "10", -1},
		{"16", "16", 0},
		{"9.6", "9.5", 1},
	} {
		got := compareVersions(tt.a, tt.b)
		if (got > 0) != (tt.want > 0) || (got < 0) != (tt.want < 0) {
			t.Errorf("compareVersions(%q, %q): got %d, want sign %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func startRedis(t *testing.T, cfg RedisConfig) *Redis {
	t.Helper()
	start := time.Now()
	r, err := StartRedis(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("redis on %s started in %s", r.URL(), time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	return r
}

func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRedisSetGet(t *testing.T) {
	t.Parallel()
	r := startRedis(t, RedisConfig{})
	c := redisClient(t, r.URL())
	ctx := t.Context()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, "k").Result()
	if err != nil {
		t.Fatal(err)
	}
	if got != "v" {
		t.Errorf("get k: got %q, want %q", got, "v")
	}
	if want := "127.0.0.1:"; !strings.HasPrefix(r.Addr(), want) {
		t.Errorf("Addr: got %q, want prefix %q", r.Addr(), want)
	}

	dir := r.dir
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat %s after Stop: got %v, want not exist", dir, err)
	}
}

func TestRedisKillRestartAppendOnly(t *testing.T) {
	t.Parallel()
	r := startRedis(t, RedisConfig{AppendOnly: true})
	c := redisClient(t, r.URL())
	ctx := t.Context()
	if err := c.Set(ctx, "k", "survives", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Incr(ctx, "n").Err(); err != nil {
		t.Fatal(err)
	}

	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if conn, err := net.Dial("tcp", r.Addr()); err == nil {
		conn.Close()
		t.Fatal("dial after Kill: got no error")
	}
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}

	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "survives" {
		t.Errorf("get k after restart: got %q, %v, want %q", got, err, "survives")
	}
	if got, err := c.Get(ctx, "n").Int(); err != nil || got != 1 {
		t.Errorf("get n after restart: got %d, %v, want 1", got, err)
	}
}

func TestRedisPauseResume(t *testing.T) {
	t.Parallel()
	r := startRedis(t, RedisConfig{})
	ctx := t.Context()

	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	// A paused server never answers, so the read must time out, however
	// short the timeout.
	paused := redis.NewClient(&redis.Options{Addr: r.Addr(), ReadTimeout: 100 * time.Millisecond, MaxRetries: -1})
	defer paused.Close()
	err := paused.Ping(ctx).Err()
	var nerr net.Error
	if !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Fatalf("ping while paused: got %v, want a timeout", err)
	}

	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	c := redisClient(t, r.URL())
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("ping after Resume: %v", err)
	}
}

func TestRedisStopWhilePaused(t *testing.T) {
	t.Parallel()
	r, err := StartRedis(t.Context(), RedisConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := r.Resume(); err == nil {
		t.Error("Resume after Stop: got no error")
	}
}

func TestStartRedisNoBinary(t *testing.T) {
	t.Parallel()
	_, err := StartRedis(t.Context(), RedisConfig{BinPath: filepath.Join(t.TempDir(), "redis-server")})
	if err == nil || !strings.Contains(err.Error(), "apt-get install redis-server") {
		t.Errorf("start without binary: got %v, want an error saying what to install", err)
	}
}

// TestAbandonedDirsAreRemoved: the temporary directory of a server whose
// owner process is gone (killed before it could stop it) is removed when
// the next server of that kind starts; one whose owner runs, or that notes
// no owner, is left be.
func TestAbandonedDirsAreRemoved(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	mk := func(name, owner string) string {
		d := filepath.Join(tmp, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if owner != "" {
			if err := os.WriteFile(filepath.Join(d, ownerFile), []byte(owner), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	abandoned := mk("throwaway-redis-1", strconv.Itoa(gone.Process.Pid))
	running := mk("throwaway-redis-2", strconv.Itoa(os.Getpid()))
	unknown := mk("throwaway-redis-3", "")
	otherKind := mk("throwaway-postgres-1", strconv.Itoa(gone.Process.Pid))
	s := &server{name: "redis"}
	if err := s.makeDir(); err != nil {
		t.Fatal(err)
	}
	defer s.removeTemp()
	for d, want := range map[string]bool{abandoned: false, running: true, unknown: true, otherKind: true, s.dir: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", d, err == nil, want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(s.dir, ownerFile)); err != nil || string(b) != strconv.Itoa(os.Getpid()) {
		t.Errorf("the new directory notes owner %q (%v), want this process", b, err)
	}
}
