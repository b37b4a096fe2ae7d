package throwaway

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

const installPostgres = "apt-get install postgresql"

// PostgresConfig says where and how to run a PostgreSQL server. The zero
// value runs the newest installed PostgreSQL on a free port in a temporary
// directory.
type PostgresConfig struct {
	// BinDir holds initdb and postgres. Zero: the directory of postgres on
	// PATH, else the newest /usr/lib/postgresql/*/bin.
	BinDir string
	// Dir holds the data directory (Dir/data), the server log
	// (Dir/postgres.log) and the Unix socket. A data directory already in
	// Dir is used as it is. Zero: a new temporary directory, removed by Stop.
	Dir string
	// Port to listen on, 127.0.0.1 only. Zero: a free port.
	Port int
}

// Postgres is a PostgreSQL server run by this process. Its only role is
// postgres, a superuser that needs no password; it trades durability
// against an operating system crash for speed (fsync=off), but a commit
// acknowledged to a client survives Crash.
//
// When this process runs as root, the server runs as the OS user postgres,
// because PostgreSQL refuses to run as root; that user must be able to reach
// Dir.
type Postgres struct {
	server                     // dir holds data/, postgres.log and the socket
	bin    string              // directory of initdb and postgres
	cred   *syscall.Credential // user the server runs as; nil: ours
}

// StartPostgres creates a database cluster (unless Dir already has one),
// starts a server on it, and returns once the server accepts connections,
// or an error with the end of the server log. It waits at most a minute,
// less if ctx ends sooner.
func StartPostgres(ctx context.Context, cfg PostgresConfig) (*Postgres, error) {
	bin, err := postgresBinDir(cfg.BinDir)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	cred, err := postgresCredential()
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	p := &Postgres{bin: bin, cred: cred}
	p.server = server{name: "postgres", dir: cfg.Dir, port: cfg.Port, start: p.launch}
	if err := p.makeDir(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	if err := p.initdb(ctx); err != nil {
		p.removeTemp()
		return nil, fmt.Errorf("start postgres in %s: %w", p.dir, err)
	}
	if err := p.boot(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// URL returns the server's connection URL, for user postgres and database
// postgres.
func (p *Postgres) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.port)
}

// Stop shuts the server down (fast shutdown: SIGINT), waits for it to exit,
// and removes the directory StartPostgres created, if it created one.
// A server that does not exit within a minute is killed.
func (p *Postgres) Stop() error { return p.stop(syscall.SIGINT) }

// Crash shuts the server down the way a crash would (immediate shutdown:
// SIGQUIT to the postmaster, as pg_ctl stop -m immediate does) and waits for
// it to exit. The data stays; Restart recovers it.
func (p *Postgres) Crash() error { return p.halt(syscall.SIGQUIT, "crash") }

// Restart starts the server again, after Crash or after it exited on its
// own, on the same port and data, and returns once it accepts connections.
func (p *Postgres) Restart(ctx context.Context) error { return p.restart(ctx) }

func (p *Postgres) dataDir() string { return filepath.Join(p.dir, "data") }
func (p *Postgres) logPath() string { return filepath.Join(p.dir, "postgres.log") }

// socketDir returns the directory for the server's Unix socket, or "" (no
// Unix socket) if a socket path in dir would be too long for the kernel.
func (p *Postgres) socketDir() string {
	if len(filepath.Join(p.dir, ".s.PGSQL.65535.lock")) > 100 {
		return ""
	}
	return p.dir
}

// initdb creates the database cluster, unless there is one already.
func (p *Postgres) initdb(ctx context.Context) error {
	if p.cred != nil {
		if err := os.Chown(p.dir, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			return err
		}
		if err := searchable(p.dir, p.cred); err != nil {
			return err
		}
	}
	data := p.dataDir()
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err == nil {
		return nil
	}
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, "initdb"),
		"-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
	cmd.Dir = p.dir
	cmd.SysProcAttr = sysProcAttr(p.cred, syscall.SIGKILL)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	return fmt.Errorf("initdb %s: %w:\n%s", data, err, bytes.TrimSpace(out))
}

// searchable checks that every directory above dir lets the user cred
// search it, so that a server running as that user can reach dir.
// It ignores supplementary groups, which the server does not get.
func searchable(dir string, cred *syscall.Credential) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		mode := fi.Mode().Perm()
		st, ok := fi.Sys().(*syscall.Stat_t)
		ok = !ok || mode&0o001 != 0 ||
			st.Uid == cred.Uid && mode&0o100 != 0 ||
			st.Gid == cred.Gid && mode&0o010 != 0
		if !ok {
			return fmt.Errorf("running as root, so PostgreSQL runs as uid %d, which cannot search %s (mode %s): chmod o+x it or use another Dir",
				cred.Uid, d, fi.Mode())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// launch runs the server and returns its process once it accepts connections.
func (p *Postgres) launch(ctx context.Context) (*proc, error) {
	cfg, err := pgx.ParseConfig(p.URL())
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = 2 * time.Second
	// No synchronous_commit=off: with it, an immediate shutdown loses
	// commits already acknowledged to clients, and Crash exists to test
	// recovery. With fsync=off a synchronous commit costs a write(2), and
	// full_page_writes=off and fsync=off lose data only if the OS crashes.
	cmd := exec.Command(filepath.Join(p.bin, "postgres"),
		"-D", p.dataDir(),
		"-p", strconv.Itoa(p.port),
		"-k", p.socketDir(),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=300",
	)
	cmd.Dir = p.dir
	cmd.SysProcAttr = sysProcAttr(p.cred, syscall.SIGQUIT)
	return startReady(ctx, cmd, p.logPath(), syscall.SIGQUIT, "connection", func(ctx context.Context) error {
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
}

// postgresBinDir returns dir, or if it is empty the directory holding the
// PostgreSQL server binaries, after checking that they are there.
func postgresBinDir(dir string) (string, error) {
	if dir == "" {
		dir = findPostgresBinDir()
		if dir == "" {
			return "", fmt.Errorf("no PostgreSQL server: postgres is neither on PATH nor in /usr/lib/postgresql/*/bin (install it: %s)", installPostgres)
		}
	}
	for _, name := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return "", fmt.Errorf("no PostgreSQL %s (install it: %s): %w", name, installPostgres, err)
		}
	}
	return dir, nil
}

// findPostgresBinDir returns the directory of postgres and initdb on PATH
// (following a symlink to postgres if initdb is not beside it), else the
// newest /usr/lib/postgresql/*/bin, else "".
func findPostgresBinDir() string {
	if path, err := exec.LookPath("postgres"); err == nil {
		if hasInitdb(filepath.Dir(path)) {
			return filepath.Dir(path)
		}
		if real, err := filepath.EvalSymlinks(path); err == nil && hasInitdb(filepath.Dir(real)) {
			return filepath.Dir(real)
		}
	}
	paths, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	var dirs []string
	for _, path := range paths {
		if hasInitdb(filepath.Dir(path)) {
			dirs = append(dirs, filepath.Dir(path))
		}
	}
	if len(dirs) == 0 {
		return ""
	}
	// Newest by version number: /usr/lib/postgresql/15 over /usr/lib/postgresql/9.6.
	return slices.MaxFunc(dirs, func(a, b string) int {
		return compareVersions(filepath.Base(filepath.Dir(a)), filepath.Base(filepath.Dir(b)))
	})
}

func hasInitdb(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "initdb"))
	return err == nil
}

// compareVersions compares dotted version numbers such as "9.6" and "15".
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		an, _ := strconv.Atoi(as[i])
		bn, _ := strconv.Atoi(bs[i])
		if an != bn {
			return an - bn
		}
	}
	return len(as) - len(bs)
}

// postgresCredential returns the user to run PostgreSQL as: nil (this
// process's user) unless this process runs as root, which PostgreSQL
// refuses; then the OS user postgres.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, which PostgreSQL refuses, and no OS user postgres to run it as (%s creates one): %w", installPostgres, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user postgres gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}
