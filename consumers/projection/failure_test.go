package projection_test

// Exactly once under faults: a projector killed inside its transaction or
// right after committing, Postgres crashing, backends terminated, the
// acknowledgement of a commit lost, members joining and leaving the group.
// Each test publishes the same shop events and ends with the same checks
// (checkExactlyOnce): every event in event_log once, every projection table
// equal to that of a reference database that a projector filled from the
// same events without faults, and no transaction left open.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
	"github.com/spate-io/spate/throwaway"
)

const (
	failureTopic      = "events"
	failurePartitions = 4
	// failureEvents is enough for every fault to land mid-stream.
	failureEvents = 10_000
	// failureTimeout bounds each wait for progress.
	failureTimeout = time.Minute
)

// projectionTables are the tables the example configuration writes,
// compared with the reference.
var projectionTables = []string{"event_log", "spate_latest", "spate_counters", "customer_totals", "orders", "payments"}

// newProducer returns a client that publishes to brokers, closed at cleanup.
func newProducer(t *testing.T, brokers []string) *kgo.Client {
	t.Helper()
	opts := append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, producers.Opts()...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// publish writes evs in order, 500 a request: the same events published
// the same way land at the same offsets.
func publish(ctx context.Context, cl *kgo.Client, evs []*spatev1.Event) error {
	for len(evs) > 0 {
		chunk := evs[:min(500, len(evs))]
		if _, err := producers.Publish(ctx, cl, failureTopic, chunk); err != nil {
			return err
		}
		evs = evs[len(chunk):]
	}
	return nil
}

// newPool returns a pool on the database at dbURL, closed at cleanup.
func newPool(t *testing.T, dbURL string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// newShopProjector returns a migrated projector of config, storing the
// offsets of group.
func newShopProjector(ctx context.Context, pool *pgxpool.Pool, group string, log *slog.Logger, config []byte) (*projection.Projector, error) {
	projs, err := projection.Load("spate.yaml", config, schemas.Builtin())
	if err != nil {
		return nil, err
	}
	p := projection.New(pool, schemas.Builtin(), projection.Config{Group: group, Projections: projs, Logger: log})
	if err := p.Migrate(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// newGroup returns a consumer group of the failure tests: small polls, so
// that a partition's events come in many batches, and quick retries.
func newGroup(h consumers.Handler, group string, brokers []string, log *slog.Logger, opts ...kgo.Opt) (*consumers.Group, error) {
	return consumers.New(h, consumers.Config{
		Group:          group,
		Topics:         []string{failureTopic},
		MaxPollRecords: 500,
		MaxBackoff:     200 * time.Millisecond,
		Logger:         log,
	}, append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
}

// testLogger logs warnings and errors to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// member is a projector and its consumer group, running.
type member struct {
	name   string
	pool   *pgxpool.Pool
	group  *consumers.Group
	cancel context.CancelFunc
	done   chan error // receives Run's result, then is closed
	err    error
	once   sync.Once
}

// startMember starts a projector on its own pool on dbURL, consuming as
// group. The test's cleanup stops it.
func startMember(t *testing.T, name, dbURL, group string, brokers []string, opts ...kgo.Opt) *member {
	t.Helper()
	return startMemberOf(t, shopv1.ExampleConfig, name, dbURL, group, brokers, opts...)
}

// startMemberOf is startMember with the projections of config.
func startMemberOf(t *testing.T, config []byte, name, dbURL, group string, brokers []string, opts ...kgo.Opt) *member {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t).With("member", name)
	p, err := newShopProjector(ctx, pool, group, log, config)
	if err != nil {
		pool.Close()
		t.Fatalf("member %s: %v", name, err)
	}
	g, err := newGroup(p, group, brokers, log, opts...)
	if err != nil {
		pool.Close()
		t.Fatalf("member %s: %v", name, err)
	}
	rctx, cancel := context.WithCancel(ctx)
	m := &member{name: name, pool: pool, group: g, cancel: cancel, done: make(chan error, 1)}
	go func() {
		m.done <- g.Run(rctx)
		close(m.done)
	}()
	t.Cleanup(func() { m.stop(t) })
	return m
}

// stop stops the member, waits for its group to leave, and closes its pool.
func (m *member) stop(t *testing.T) {
	t.Helper()
	m.once.Do(func() {
		m.cancel()
		m.err = <-m.done
		m.pool.Close()
		if m.err != nil {
			t.Errorf("member %s: Run: %v", m.name, m.err)
		}
	})
}

// progress returns how many events group has applied to the database of
// pool: the sum of its stored offsets, as the topic holds nothing else.
func progress(ctx context.Context, pool *pgxpool.Pool, group string) (int64, error) {
	var n int64
	err := pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM spate_offsets WHERE consumer_group = $1`, group).Scan(&n)
	return n, err
}

// waitProgress waits until group has applied at least n events.
func waitProgress(t *testing.T, pool *pgxpool.Pool, group string, n int64) {
	t.Helper()
	spatetest.Eventually(t, failureTimeout, func() string {
		got, err := progress(context.Background(), pool, group)
		switch {
		case err != nil:
			return fmt.Sprintf("progress of %s: %v", group, err)
		case got < n:
			return fmt.Sprintf("%s applied %d events, want at least %d", group, got, n)
		}
		return ""
	})
}

// tableHashes returns an md5 of every row of each projection table, in
// UTC so that servers with other time zones agree.
func tableHashes(t *testing.T, dbURL string) map[string]string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["timezone"] = "UTC"
	ctx := context.Background()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	hashes := map[string]string{}
	for _, table := range projectionTables {
		var h string
		q := fmt.Sprintf(`SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM %s t`, pgx.Identifier{table}.Sanitize())
		if err := conn.QueryRow(ctx, q).Scan(&h); err != nil {
			t.Fatalf("hash %s: %v", table, err)
		}
		hashes[table] = h
	}
	return hashes
}

// checkConsistent fails unless the event_log rows of each partition are
// exactly the offsets below the one group stored for it, and returns how
// many there are: whatever happened, what a transaction wrote and the
// offset it stored are there together or not at all.
func checkConsistent(t *testing.T, pool *pgxpool.Pool, group string) int64 {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT coalesce(o.partition, l.partition), coalesce(o.next_offset, 0), coalesce(l.rows, 0), coalesce(l.next, 0)
		FROM (SELECT partition, next_offset FROM spate_offsets WHERE consumer_group = $1 AND topic = $2) o
		FULL JOIN (SELECT partition, count(*) AS rows, max("offset") + 1 AS next FROM event_log WHERE topic = $2 GROUP BY partition) l
			USING (partition)
		ORDER BY 1`, group, failureTopic)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	var partition int32
	var stored, logged, next int64
	_, err = pgx.ForEachRow(rows, []any{&partition, &stored, &logged, &next}, func() error {
		if logged != stored || next != stored {
			t.Errorf("partition %d: stored offset %d, event_log holds %d rows up to offset %d; want rows for offsets 0..%d, once each",
				partition, stored, logged, next-1, stored-1)
		}
		total += logged
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// checkExactlyOnce checks the database at dbURL, which group filled from
// evs: event_log holds every event once, each projection table equals the
// reference's, and no session of the database is left idle in a
// transaction.
func checkExactlyOnce(t *testing.T, dbURL, group string, evs []*spatev1.Event, want map[string]string) {
	t.Helper()
	ctx := context.Background()
	pool := newPool(t, dbURL)
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.Id
	}
	var rows, coords, distinct, missing int
	err := pool.QueryRow(ctx, `
		SELECT count(*), count(DISTINCT (topic, partition, "offset")), count(DISTINCT id),
		       (SELECT count(*) FROM unnest($1::text[]) AS w(id) WHERE NOT EXISTS (SELECT FROM event_log e WHERE e.id = w.id))
		FROM event_log`, ids).Scan(&rows, &coords, &distinct, &missing)
	if err != nil {
		t.Fatal(err)
	}
	if rows != len(evs) || coords != len(evs) || distinct != len(evs) || missing != 0 {
		t.Errorf("event_log: %d rows, %d distinct (topic, partition, offset), %d distinct ids, %d published ids missing; want %d, %d, %d, 0",
			rows, coords, distinct, missing, len(evs), len(evs), len(evs))
	}
	checkConsistent(t, pool, group)
	if diff := cmp.Diff(want, tableHashes(t, dbURL)); diff != "" {
		t.Errorf("table hashes differ from the reference's, which applied the same events without faults (-want +got):\n%s", diff)
	}
	checkNoOpenTransactions(t, pool)
}

// checkNoOpenTransactions fails if a session of pool's database is idle in
// a transaction.
func checkNoOpenTransactions(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	if open := openTransactions(t, pool); open != "" {
		t.Errorf("sessions idle in transaction: %s, want none", open)
	}
}

// openTransactions describes the sessions of pool's database that are idle
// in a transaction, or returns "" if there are none.
func openTransactions(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var open string
	err := pool.QueryRow(context.Background(), `
		SELECT coalesce(string_agg(format('pid %s (%s): %s', pid, application_name, left(query, 80)), '; '), '')
		FROM pg_stat_activity
		WHERE datname = current_database() AND state LIKE 'idle in transaction%'`).Scan(&open)
	if err != nil {
		t.Fatal(err)
	}
	return open
}

// theReference holds the table hashes of the reference database, built
// once per test binary by the first test that asks. The events are the same
// in every test (spatetest.ShopMix) and published the same way (publish), so each
// lands at the same partition and offset on any fresh topic.
var theReference struct {
	sync.Mutex
	hashes map[string]string
}

// referenceHashes returns the table hashes of a database that a projector
// filled from failureEvents events of spatetest.ShopMix without faults.
func referenceHashes(t *testing.T) map[string]string {
	t.Helper()
	theReference.Lock()
	defer theReference.Unlock()
	if theReference.hashes == nil {
		brokers := spatetest.Kafka(t, failurePartitions, failureTopic)
		if err := publish(context.Background(), newProducer(t, brokers), spatetest.ShopMix(failureEvents, t0)); err != nil {
			t.Fatal(err)
		}
		theReference.hashes = reference(t, brokers, failureEvents)
	}
	return theReference.hashes
}

// reference fills a fresh database from the topic, without faults, and
// returns the hashes of its projection tables.
func reference(t *testing.T, brokers []string, n int) map[string]string {
	t.Helper()
	return referenceOf(t, shopv1.ExampleConfig, brokers, n)
}

// referenceOf is reference with the projections of config.
func referenceOf(t *testing.T, config []byte, brokers []string, n int) map[string]string {
	t.Helper()
	dbURL := spatetest.Postgres(t)
	m := startMemberOf(t, config, "reference", dbURL, "reference", brokers)
	waitProgress(t, m.pool, "reference", int64(n))
	m.stop(t)
	return tableHashes(t, dbURL)
}

// childEnv, when set, makes the test binary a child projector (see
// runChild) configured by the JSON childConfig it holds.
const childEnv = "SPATE_TEST_CHILD"

// childConfig tells a child process what to run.
type childConfig struct {
	Brokers  []string
	Postgres string
	Group    string
	// KillAt is a hook point of Projector ("applied" or "committed") at
	// which the child SIGKILLs itself, the killBatch-th time a batch gets
	// there. Zero: the child runs until its standard input closes.
	KillAt string
	// Rebuild, if set, makes the child rebuild these projections of Config
	// (see childRebuild) instead of running a projector.
	Rebuild []string
	Config  string
	// KillAfter is the number of events after which a rebuilding child
	// SIGKILLs itself.
	KillAfter int64
}

// killBatch is the batch at whose KillAt a child kills itself.
const killBatch = 3

// childGroupOpts let a restarted child take over from a killed one within
// a second, on a cluster of kafkaShortSessions: the dead member holds its
// partitions until its session times out.
var childGroupOpts = []kgo.Opt{kgo.SessionTimeout(time.Second), kgo.HeartbeatInterval(100 * time.Millisecond)}

// kafkaShortSessions is spatetest.Kafka with a cluster that accepts
// sessions as short as childGroupOpts's.
func kafkaShortSessions(t *testing.T) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(failurePartitions, failureTopic), kfake.GroupMinSessionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// runChild runs a child projector and exits if this process is one, and
// returns otherwise. TestMain calls it first.
func runChild() {
	env := os.Getenv(childEnv)
	if env == "" {
		return
	}
	var cfg childConfig
	err := json.Unmarshal([]byte(env), &cfg)
	switch {
	case err == nil && cfg.Rebuild != nil:
		err = childRebuild(cfg)
	case err == nil:
		err = childProjector(cfg)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "child projector: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// childProjector runs a projector of the example configuration until its
// standard input closes (the parent asks it to stop, or died), or until it
// kills itself at cfg.KillAt.
func childProjector(cfg childConfig) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Owned by the process, which exits when Run returns.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pool, err := pgxpool.New(ctx, cfg.Postgres)
	if err != nil {
		return err
	}
	defer pool.Close()
	p, err := newShopProjector(ctx, pool, cfg.Group, log, shopv1.ExampleConfig)
	if err != nil {
		return err
	}
	if cfg.KillAt != "" {
		var n atomic.Int32
		projection.SetHook(p, func(point string) {
			if point == cfg.KillAt && n.Add(1) == killBatch {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // the signal is on its way; write nothing more
			}
		})
	}
	g, err := newGroup(p, cfg.Group, cfg.Brokers, log, childGroupOpts...)
	if err != nil {
		return err
	}
	return g.Run(ctx)
}

// child is a projector in a child process: this test binary, made one by
// childEnv.
type child struct {
	cmd   *exec.Cmd
	stdin io.Closer
	out   bytes.Buffer  // stdout and stderr; read once done is closed
	done  chan struct{} // closed once the process exited and was reaped
	err   error         // cmd.Wait's; read once done is closed
}

// startChild starts a child projector. The test's cleanup stops it.
func startChild(t *testing.T, cfg childConfig) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	env, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// -test.run=^$: were the environment lost, the child would run nothing.
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(env))
	c := &child{cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &c.out, &c.out
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		c.stdin.Close()
		if !c.wait(failureTimeout) {
			cmd.Process.Kill()
			<-c.done
			t.Errorf("child %d: still running %v after it was asked to stop; killed. Output:\n%s", cmd.Process.Pid, failureTimeout, &c.out)
		}
	})
	return c
}

// wait waits up to timeout for the child to exit and reports whether it did.
func (c *child) wait(timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-c.done:
		return true
	case <-timer.C:
		return false
	}
}

// stop asks the child to stop, by closing its standard input, and fails
// the test unless it exits cleanly.
func (c *child) stop(t *testing.T) {
	t.Helper()
	c.stdin.Close()
	if !c.wait(failureTimeout) {
		t.Fatalf("child %d: still running %v after it was asked to stop", c.cmd.Process.Pid, failureTimeout)
	}
	if c.err != nil {
		t.Fatalf("child %d: %v; output:\n%s", c.cmd.Process.Pid, c.err, &c.out)
	}
}

func TestProjectorKilledBetweenApplyAndCommit(t *testing.T) {
	t.Parallel()
	testKilled(t, "applied")
}

func TestProjectorKilledAfterCommit(t *testing.T) {
	t.Parallel()
	testKilled(t, "committed")
}

// testKilled runs a projector in a child process that SIGKILLs itself at
// point of its killBatch-th batch, then another that finishes the job.
func testKilled(t *testing.T, point string) {
	const n, group = failureEvents, "killed"
	brokers := kafkaShortSessions(t)
	evs := spatetest.ShopMix(n, t0)
	if err := publish(context.Background(), newProducer(t, brokers), evs); err != nil {
		t.Fatal(err)
	}
	dbURL := spatetest.Postgres(t)
	pool := newPool(t, dbURL)

	first := startChild(t, childConfig{Brokers: brokers, Postgres: dbURL, Group: group, KillAt: point})
	if !first.wait(failureTimeout) {
		t.Fatalf("child still running %v after it started; want it killed at %q of batch %d", failureTimeout, point, killBatch)
	}
	var ee *exec.ExitError
	if !errors.As(first.err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child exited with %v, want killed by SIGKILL at %q; output:\n%s", first.err, point, &first.out)
	}
	// The server rolls back the transaction of a client that vanished.
	spatetest.Eventually(t, failureTimeout, func() string {
		if open := openTransactions(t, pool); open != "" {
			return "sessions idle in transaction after the child died: " + open
		}
		return ""
	})
	applied := checkConsistent(t, pool, group)
	switch {
	case t.Failed():
		t.FailNow()
	case applied >= n:
		t.Fatalf("the killed child applied all %d events; want it killed mid-stream", applied)
	case point == "committed" && applied == 0:
		t.Fatalf("the child was killed after committing batch %d, yet nothing is applied", killBatch)
	}
	t.Logf("killed at %q of batch %d, with %d of %d events applied", point, killBatch, applied, n)

	second := startChild(t, childConfig{Brokers: brokers, Postgres: dbURL, Group: group})
	waitProgress(t, pool, group, n)
	second.stop(t)
	checkExactlyOnce(t, dbURL, group, evs, referenceHashes(t))
}

func TestPostgresCrashUnderLoad(t *testing.T) {
	t.Parallel()
	const n, group = failureEvents, "crash"
	ctx := context.Background()
	pg, err := throwaway.StartPostgres(ctx, throwaway.PostgresConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Error(err)
		}
	})
	brokers := spatetest.Kafka(t, failurePartitions, failureTopic)
	cl := newProducer(t, brokers)
	evs := spatetest.ShopMix(n, t0)
	pool := newPool(t, pg.URL())
	startMember(t, "crashed", pg.URL(), group, brokers)

	if err := publish(ctx, cl, evs[:n/2]); err != nil {
		t.Fatal(err)
	}
	waitProgress(t, pool, group, n/8)
	before, err := progress(ctx, pool, group)
	if err != nil {
		t.Fatal(err)
	}
	if before >= n/2 {
		t.Fatalf("the projector applied all %d events published before the crash; want it mid-stream", before)
	}
	if err := pg.Crash(); err != nil {
		t.Fatal(err)
	}
	// More events arrive while Postgres is down.
	if err := publish(ctx, cl, evs[n/2:]); err != nil {
		t.Fatal(err)
	}
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("crashed Postgres with %d of %d events applied", before, n)
	waitProgress(t, pool, group, n)
	checkExactlyOnce(t, pg.URL(), group, evs, referenceHashes(t))
}

func TestBackendsTerminatedUnderLoad(t *testing.T) {
	t.Parallel()
	const n, group = failureEvents, "terminated"
	ctx := context.Background()
	brokers := spatetest.Kafka(t, failurePartitions, failureTopic)
	cl := newProducer(t, brokers)
	evs := spatetest.ShopMix(n, t0)
	dbURL := spatetest.Postgres(t)
	pool := newPool(t, dbURL)

	// The projector's sessions go by a name of their own, the killer's not.
	app := "spate-" + strings.TrimSuffix(spatetest.KeyPrefix(t), ":")
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()

	m := startMember(t, "terminated", u.String(), group, brokers) // migrated
	var terminated atomic.Int64
	stop, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- terminateEvery(ctx, pool, app, 500*time.Millisecond, stop, &terminated) }()
	var once sync.Once
	stopKiller := func() {
		once.Do(func() {
			close(stop)
			if err := <-done; err != nil {
				t.Errorf("terminating backends: %v", err)
			}
		})
	}
	t.Cleanup(stopKiller)

	if err := publish(ctx, cl, evs[:n/2]); err != nil {
		t.Fatal(err)
	}
	// The rest once a tick has terminated a session of the projector, so
	// that it still has events to apply after that.
	spatetest.Eventually(t, failureTimeout, func() string {
		if terminated.Load() == 0 {
			return "no backend of the projector terminated"
		}
		return ""
	})
	if err := publish(ctx, cl, evs[n/2:]); err != nil {
		t.Fatal(err)
	}
	waitProgress(t, pool, group, n)
	stopKiller()
	m.stop(t)
	t.Logf("terminated %d backends", terminated.Load())
	checkExactlyOnce(t, dbURL, group, evs, referenceHashes(t))
}

// terminateEvery terminates the sessions named app every interval, until
// stop is closed (or failureTimeout has passed), counting them in
// terminated.
func terminateEvery(ctx context.Context, pool *pgxpool.Pool, app string, interval time.Duration, stop <-chan struct{}, terminated *atomic.Int64) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for range int(failureTimeout / interval) {
		select {
		case <-stop:
			return nil
		case <-tick.C:
		}
		var n int64
		err := pool.QueryRow(ctx, `
			SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
			FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()`, app).Scan(&n)
		if err != nil {
			return err
		}
		terminated.Add(n)
	}
	<-stop
	return nil
}

func TestThreeProjectorsJoinAndLeave(t *testing.T) {
	t.Parallel()
	const n, group = failureEvents, "trio"
	ctx := context.Background()
	brokers := spatetest.Kafka(t, failurePartitions, failureTopic)
	cl := newProducer(t, brokers)
	evs := spatetest.ShopMix(n, t0)
	dbURL := spatetest.Postgres(t)
	pool := newPool(t, dbURL)

	members := map[string]*member{}
	join := func(name string) func() {
		return func() {
			// Heartbeats every 100 ms: members learn of a rebalance quickly.
			m := startMember(t, name, dbURL, group, brokers, kgo.HeartbeatInterval(100*time.Millisecond))
			members[name] = m
			timer := time.NewTimer(failureTimeout)
			defer timer.Stop()
			select {
			case <-m.group.Started():
			case <-timer.C:
				t.Fatalf("member %s: no partitions %v after joining", name, failureTimeout)
			}
		}
	}
	leave := func(name string) func() { return func() { members[name].stop(t) } }
	schedule := []struct {
		what string
		do   func()
	}{
		{"b joins", join("b")},
		{"c joins", join("c")},
		{"a leaves", leave("a")},
		{"a joins again", join("a2")},
		{"b leaves", leave("b")},
		{"c leaves", leave("c")},
	}
	// The events come in one slice more than there are changes: each
	// change is made halfway through applying a slice, and the next slice
	// is published after it.
	bound := func(i int) int { return i * n / (len(schedule) + 1) }
	join("a")()
	if err := publish(ctx, cl, evs[:bound(1)]); err != nil {
		t.Fatal(err)
	}
	for i, step := range schedule {
		waitProgress(t, pool, group, int64(bound(i)+bound(1)/2))
		step.do()
		t.Logf("%s", step.what)
		if err := publish(ctx, cl, evs[bound(i+1):bound(i+2)]); err != nil {
			t.Fatal(err)
		}
	}
	waitProgress(t, pool, group, n)
	for _, m := range members {
		m.stop(t)
	}
	checkExactlyOnce(t, dbURL, group, evs, referenceHashes(t))
}

func TestCommitAcknowledgementLost(t *testing.T) {
	t.Parallel()
	const n, group = failureEvents, "unacknowledged"
	ctx := context.Background()
	brokers := spatetest.Kafka(t, failurePartitions, failureTopic)
	cl := newProducer(t, brokers)
	evs := spatetest.ShopMix(n, t0)
	dbURL := spatetest.Postgres(t)
	pool := newPool(t, dbURL)

	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cutter := startCommitCutter(t, u.Host, 5)
	u.Host = cutter.ln.Addr().String()
	q := u.Query()
	q.Set("sslmode", "disable") // the cutter reads the protocol in the clear
	u.RawQuery = q.Encode()
	m := startMember(t, "unacknowledged", u.String(), group, brokers)
	cutter.armed.Store(true) // migrated

	if err := publish(ctx, cl, evs); err != nil {
		t.Fatal(err)
	}
	waitProgress(t, pool, group, n)
	m.stop(t)
	cuts := cutter.cuts.Load()
	if cuts == 0 {
		t.Fatalf("no commit acknowledgement lost (%d commits), want every 5th", cutter.commits.Load())
	}
	t.Logf("lost the acknowledgements of %d of %d commits", cuts, cutter.commits.Load())
	checkExactlyOnce(t, dbURL, group, evs, referenceHashes(t))
}

// commitCutter is a TCP proxy in front of Postgres that, once armed, loses
// the acknowledgement of every nth commit: it closes the client's
// connection instead of passing on the server's CommandComplete COMMIT.
// The transaction committed, but the client cannot know it, and retries.
type commitCutter struct {
	ln     net.Listener
	server string // host:port of Postgres
	every  int64
	armed  atomic.Bool
	// commits counts the commits acknowledged by the server once armed,
	// cuts those whose acknowledgement was lost.
	commits, cuts atomic.Int64

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// startCommitCutter starts a commitCutter in front of the Postgres server
// at server (host:port), stopped at cleanup.
func startCommitCutter(t *testing.T, server string, every int64) *commitCutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &commitCutter{ln: ln, server: server, every: every, conns: map[net.Conn]bool{}}
	c.wg.Go(c.accept)
	t.Cleanup(c.close)
	return c
}

func (c *commitCutter) accept() {
	for {
		client, err := c.ln.Accept()
		if err != nil {
			return // closed
		}
		c.wg.Go(func() { c.serve(client) })
	}
}

// serve relays between client and a new connection to the server until
// either side closes or a commit is cut.
func (c *commitCutter) serve(client net.Conn) {
	if !c.track(client) {
		return
	}
	defer c.untrack(client)
	server, err := net.Dial("tcp", c.server)
	if err != nil || !c.track(server) {
		return
	}
	defer c.untrack(server)
	up := make(chan struct{})
	go func() {
		defer close(up)
		_, _ = io.Copy(server, client)
		server.Close()
	}()
	c.relay(client, server)
	client.Close()
	server.Close()
	<-up
}

// relay passes the server's messages on to the client, message by message,
// and returns without passing it on at a commit to cut.
func (c *commitCutter) relay(client io.Writer, server io.Reader) {
	r, w := bufio.NewReader(server), bufio.NewWriter(client)
	head := make([]byte, 5) // type, then length including itself
	var body []byte
	for {
		if r.Buffered() == 0 && w.Flush() != nil {
			return
		}
		if _, err := io.ReadFull(r, head); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(head[1:])) - 4
		if n < 0 {
			return
		}
		body = slices.Grow(body[:0], n)[:n]
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		if head[0] == 'C' && string(body) == "COMMIT\x00" && c.armed.Load() && c.commits.Add(1)%c.every == 0 {
			c.cuts.Add(1)
			return
		}
		w.Write(head)
		w.Write(body)
	}
}

// track registers conn for close, or closes it if the cutter is closed.
func (c *commitCutter) track(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		conn.Close()
		return false
	}
	c.conns[conn] = true
	return true
}

func (c *commitCutter) untrack(conn net.Conn) {
	conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.conns, conn)
}

// close stops accepting, closes every connection and waits for the
// goroutines that served them.
func (c *commitCutter) close() {
	c.ln.Close()
	c.mu.Lock()
	c.closed = true
	for conn := range c.conns {
		conn.Close()
	}
	c.mu.Unlock()
	c.wg.Wait()
}
