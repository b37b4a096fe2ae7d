package projection_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/projection"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/spatetest"
)

// changedConfig is the example configuration with a projection change
// that needs a rebuild: an order's first status is "open", not "placed".
var changedConfig = []byte(strings.ReplaceAll(string(shopv1.ExampleConfig), "'placed'", "'open'"))

// rebuildNames are the projections the change touches: orders, which
// keeps customer_totals too.
var rebuildNames = []string{"orders"}

// newRebuild returns a rebuild of names of config, catching up with the
// live group "live" in the database of pool, in batches of 500 events.
func newRebuild(t *testing.T, pool *pgxpool.Pool, brokers []string, config []byte, log *slog.Logger, progress func(done, total int64), names ...string) *projection.Rebuild {
	t.Helper()
	rb, err := makeRebuild(pool, brokers, config, testRebuildConfig(log, progress), manyPolls, names...)
	if err != nil {
		t.Fatal(err)
	}
	return rb
}

// testRebuildConfig is the configuration of the tests' rebuilds: batches
// of 500 events.
func testRebuildConfig(log *slog.Logger, progress func(done, total int64)) projection.RebuildConfig {
	return projection.RebuildConfig{BatchSize: 500, Logger: log, Progress: progress}
}

// manyPolls makes the tests' rebuilds fetch one record batch a partition at
// a time, so that a partition's history takes many polls (publish writes
// batches of about 125 records a partition).
var manyPolls = []kgo.Opt{kgo.FetchMaxBytes(1), kgo.FetchMaxPartitionBytes(1)}

// makeRebuild is newRebuild with the options in opts and the Kafka client
// options in kopts, for use outside tests.
func makeRebuild(pool *pgxpool.Pool, brokers []string, config []byte, opts projection.RebuildConfig, kopts []kgo.Opt, names ...string) (*projection.Rebuild, error) {
	projs, err := projection.Load("spate.yaml", config, schemas.Builtin())
	if err != nil {
		return nil, err
	}
	if opts.Projections, err = projection.Select(projs, names...); err != nil {
		return nil, err
	}
	opts.Topic, opts.Group = failureTopic, "live"
	return projection.NewRebuild(pool, schemas.Builtin(), opts, append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, kopts...)...)
}

func TestRebuildAfterChangeEqualsFreshBuild(t *testing.T) {
	t.Parallel()
	const n = 4000
	brokers := spatetest.Kafka(t, failurePartitions, failureTopic)
	evs := spatetest.ShopMix(n, t0)
	prod := newProducer(t, brokers)
	ctx := context.Background()
	if err := publish(ctx, prod, evs[:n/2]); err != nil {
		t.Fatal(err)
	}
	dbURL := spatetest.Postgres(t)
	pool := newPool(t, dbURL)
	old := startMember(t, "old", dbURL, "live", brokers)
	waitProgress(t, pool, "live", n/2)

	// The rest arrives while the rebuild runs, and the live projector
	// applies it to the live tables.
	published := make(chan error, 1)
	go func() { published <- publish(ctx, prod, evs[n/2:]) }()
	res, err := newRebuild(t, pool, brokers, changedConfig, testLogger(t), nil, rebuildNames...).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"customer_totals", "orders"}, res.Tables); diff != "" {
		t.Errorf("tables swapped in (-want +got):\n%s", diff)
	}
	t.Logf("swapped in at %v after applying %d events", res.Offsets, res.Applied)

	// The old projector must not apply its definition to the new tables
	// (TestDefinitionChangeStopsProjector): it stops until it is restarted
	// with the new one.
	more := spatetest.ShopMix(n+500, t0)
	if err := publish(ctx, prod, more[n:]); err != nil {
		t.Fatal(err)
	}
	old.stop(t)
	startMemberOf(t, changedConfig, "new", dbURL, "live", brokers)
	waitProgress(t, pool, "live", n+500)
	if diff := cmp.Diff(referenceOf(t, changedConfig, brokers, n+500), tableHashes(t, dbURL)); diff != "" {
		t.Fatalf("tables after the rebuild differ from a fresh build of the new definition (-fresh +rebuilt):\n%s", diff)
	}
	checkNoOpenTransactions(t, pool)
}

// caughtUp publishes n events of the shop mix and starts the live
// projector (group "live") of the example configuration on a fresh
// database, and returns once it has applied them all.
func caughtUp(t *testing.T, n int) (brokers []string, dbURL string, pool *pgxpool.Pool, live *member) {
	t.Helper()
	brokers = spatetest.Kafka(t, failurePartitions, failureTopic)
	if err := publish(context.Background(), newProducer(t, brokers), spatetest.ShopMix(n, t0)); err != nil {
		t.Fatal(err)
	}
	dbURL = spatetest.Postgres(t)
	pool = newPool(t, dbURL)
	live = startMember(t, "live", dbURL, "live", brokers)
	waitProgress(t, pool, "live", int64(n))
	return brokers, dbURL, pool, live
}

func TestRebuildUnchangedEqualsLive(t *testing.T) {
	t.Parallel()
	const n = 2000
	brokers, dbURL, pool, live := caughtUp(t, n)
	before := tableHashes(t, dbURL)

	all := []string{"event_log", "latest", "counters", "orders", "payments"}
	res, err := newRebuild(t, pool, brokers, shopv1.ExampleConfig, testLogger(t), nil, all...).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Applied != n || res.Skipped != 0 {
		t.Errorf("rebuild applied %d and skipped %d events, want %d and 0", res.Applied, res.Skipped, n)
	}
	if diff := cmp.Diff(before, tableHashes(t, dbURL)); diff != "" {
		t.Fatalf("rebuilt tables differ from the live ones they replaced (-live +rebuilt):\n%s", diff)
	}
	// The live projector, whose definitions are the rebuilt ones, goes on.
	if err := publish(context.Background(), newProducer(t, brokers), spatetest.ShopMix(n+100, t0)[n:]); err != nil {
		t.Fatal(err)
	}
	waitProgress(t, pool, "live", n+100)
	live.stop(t)
	var retired int
	err = pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_tables WHERE schemaname = $1`, res.Retired).Scan(&retired)
	if err != nil || retired != len(projectionTables) {
		t.Errorf("schema %s holds %d tables (%v), want the %d replaced ones", res.Retired, retired, err, len(projectionTables))
	}
}

// childRebuild rebuilds cfg.Rebuild in a child process, and SIGKILLs
// itself once it applied cfg.KillAfter events.
func childRebuild(cfg childConfig) error {
	pool, err := pgxpool.New(context.Background(), cfg.Postgres)
	if err != nil {
		return err
	}
	defer pool.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	kill := func(done, _ int64) {
		if done >= cfg.KillAfter {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
	rb, err := makeRebuild(pool, cfg.Brokers, []byte(cfg.Config), testRebuildConfig(log, kill), manyPolls, cfg.Rebuild...)
	if err != nil {
		return err
	}
	if _, err = rb.Run(context.Background()); err == nil {
		err = errors.New("the rebuild finished before it was killed")
	}
	return err
}

func TestRebuildKilledHalfWayResumes(t *testing.T) {
	t.Parallel()
	const n = 4000
	brokers, dbURL, pool, m := caughtUp(t, n)
	m.stop(t)

	c := startChild(t, childConfig{Brokers: brokers, Postgres: dbURL, Rebuild: rebuildNames, Config: string(changedConfig), KillAfter: n / 2})
	if !c.wait(failureTimeout) {
		t.Fatalf("rebuilding child still running %v after it started", failureTimeout)
	}
	var ee *exec.ExitError
	if !errors.As(c.err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("rebuilding child exited with %v, want killed by SIGKILL; output:\n%s", c.err, &c.out)
	}
	// The killed child's session holds the rebuild's lock until Postgres
	// notices the connection closed, which takes a moment.
	spatetest.Eventually(t, failureTimeout, func() string {
		var held int
		err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&held)
		if err != nil || held > 0 {
			return fmt.Sprintf("%d advisory locks still held (%v)", held, err)
		}
		return ""
	})
	var shadowed int64
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM spate_rebuild_orders.orders`).Scan(&shadowed); err != nil || shadowed == 0 {
		t.Fatalf("shadow orders after the kill: %d rows (%v), want some", shadowed, err)
	}
	// The live tables are untouched: still the old definition's.
	var open int64
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM orders WHERE status = 'open'`).Scan(&open); err != nil || open != 0 {
		t.Fatalf("live orders hold %d rows of the new definition (%v) before the swap, want none", open, err)
	}

	res, err := newRebuild(t, pool, brokers, changedConfig, testLogger(t), nil, rebuildNames...).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.Applied >= n {
		t.Errorf("second run: resumed %v after applying %d of %d events, want it to resume and apply the rest", res.Resumed, res.Applied, n)
	}
	want := referenceOf(t, changedConfig, brokers, n)
	got := tableHashes(t, dbURL)
	for _, table := range []string{"orders", "customer_totals"} {
		if got[table] != want[table] {
			t.Errorf("%s after a killed and resumed rebuild differs from a fresh build", table)
		}
	}
	checkNoOpenTransactions(t, pool)
}

func TestRebuildSwapUnderConcurrentReaders(t *testing.T) {
	t.Parallel()
	const n, readers = 2000, 6
	brokers, dbURL, pool, m := caughtUp(t, n)
	m.stop(t)
	before := tableHashes(t, dbURL)
	after := referenceOf(t, changedConfig, brokers, n)

	// Readers read orders and customer_totals, each whole, in one
	// statement, until the swap is over; each result must be the table as
	// it was or as it is after the swap, never an error or a mix.
	hashes := `SELECT (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM orders t),
	                  (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM customer_totals t)`
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["timezone"] = "UTC"
	readPool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer readPool.Close()
	var (
		swapped            atomic.Bool
		reads, sawNew      atomic.Int64
		wg                 sync.WaitGroup
		mu                 sync.Mutex
		problems           []string
		ctx, stopReading   = context.WithCancel(context.Background())
		readsAfterSwapDone = make(chan struct{})
		afterCount         atomic.Int64
	)
	defer stopReading()
	for range readers {
		wg.Go(func() {
			for ctx.Err() == nil {
				var orders, totals string
				err := readPool.QueryRow(ctx, hashes).Scan(&orders, &totals)
				if ctx.Err() != nil {
					return
				}
				reads.Add(1)
				got := fmt.Sprintf("orders %s, customer_totals %s", orders, totals)
				oldOK := orders == before["orders"] && totals == before["customer_totals"]
				newOK := orders == after["orders"] && totals == after["customer_totals"]
				if newOK {
					sawNew.Add(1)
				}
				if err != nil || !oldOK && !newOK {
					mu.Lock()
					problems = append(problems, fmt.Sprintf("%s (err %v)", got, err))
					mu.Unlock()
				}
				if swapped.Load() && afterCount.Add(1) == readers*3 {
					close(readsAfterSwapDone)
				}
			}
		})
	}
	res, err := newRebuild(t, pool, brokers, changedConfig, testLogger(t), nil, rebuildNames...).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	swapped.Store(true)
	<-readsAfterSwapDone
	stopReading()
	wg.Wait()
	if len(problems) > 0 {
		t.Fatalf("%d of %d reads during the rebuild got neither the old nor the new tables; first: %s", len(problems), reads.Load(), problems[0])
	}
	if sawNew.Load() == 0 {
		t.Fatal("no reader saw the new tables after the swap")
	}
	t.Logf("%d reads during a rebuild of %d events swapped in at %v", reads.Load(), res.Applied, res.Offsets)
}

// Rebuilds of the same projections exclude each other.
func TestRebuildRefusesASecondOfTheSame(t *testing.T) {
	t.Parallel()
	dbURL := spatetest.Postgres(t)
	pool := newPool(t, dbURL)
	brokers := spatetest.Kafka(t, 1, failureTopic)
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `SELECT pg_advisory_lock(hashtextextended('spate_rebuild:spate_rebuild_orders', 0))`); err != nil {
		t.Fatal(err)
	}
	_, err = newRebuild(t, pool, brokers, shopv1.ExampleConfig, testLogger(t), nil, "orders").Run(context.Background())
	if !errors.Is(err, projection.ErrRebuildRunning) {
		t.Fatalf("Run while another holds the rebuild's lock = %v, want ErrRebuildRunning", err)
	}
}

func TestDefinitionChangeStopsProjector(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, spatetest.Postgres(t))
	old, err := newShopProjector(ctx, pool, "g", nil, shopv1.ExampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	recs := records(t, 0, 20)
	if err := old.Apply(ctx, batch(recs[:10])); err != nil {
		t.Fatal(err)
	}
	// Another projector starts with a changed statement of payments.
	changed := strings.Replace(string(shopv1.ExampleConfig), "DO NOTHING", "DO NOTHING -- v2", 1)
	if _, err := newShopProjector(ctx, pool, "g", nil, []byte(changed)); err != nil {
		t.Fatal(err)
	}
	err = old.Apply(ctx, batch(recs[10:]))
	if !errors.Is(err, projection.ErrDefinitionChanged) || !strings.Contains(err.Error(), "payments") {
		t.Fatalf("Apply by the projector of the old definition = %v, want ErrDefinitionChanged naming payments", err)
	}
	if got := eventLog(t, pool); len(got) != 10 {
		t.Fatalf("event_log holds %d events, want the 10 applied before the change", len(got))
	}
}

// TestRebuildSwapHoldsAPartitionsFirstBatch: the live projector's first
// batch of a partition it holds no offset row of commits while the swap
// waits for its table lock. The swap's FOR UPDATE did not lock the row
// (it did not exist), so the swap goes on with the offsets it read: the
// batch lands in the retired table, the live offset is past it.
func TestRebuildSwapHoldsAPartitionsFirstBatch(t *testing.T) {
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 2, "events")
	live, pool := newProjector(t)
	p0 := produceTo(t, brokers, 0, records(t, 0, 10))
	recs1 := records(t, 100, 103)
	p1 := produceTo(t, brokers, 1, recs1)
	if err := live.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Records: p0, Next: 10}); err != nil {
		t.Fatal(err)
	}
	inTx, release := make(chan struct{}), make(chan struct{})
	projection.SetHook(live, func(point string) {
		if point == "applied" {
			close(inTx)
			<-release
		}
	})
	applied := make(chan error, 1)
	go func() {
		applied <- live.Apply(ctx, consumers.Batch{Topic: "events", Partition: 1, Records: p1, Next: p1[len(p1)-1].Offset + 1})
	}()
	<-inTx
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), projection.RebuildConfig{
		Projections: []projection.Projection{projection.EventLog()}, Topic: "events"}, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		res *projection.RebuildResult
		err error
	}
	rebuilt := make(chan result, 1)
	go func() { r, err := rb.Run(ctx); rebuilt <- result{r, err} }()
	// Release the live batch once the swap waits for event_log's lock.
	spatetest.Eventually(t, time.Minute, func() string {
		var waiting bool
		pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock' AND relation = 'public.event_log'::regclass)`).Scan(&waiting)
		if !waiting {
			return "the swap does not wait for event_log yet"
		}
		return ""
	})
	close(release)
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	r := <-rebuilt
	if r.err != nil {
		t.Fatal(r.err)
	}
	wantRows(t, pool, `SELECT partition, next_offset FROM spate_offsets WHERE consumer_group = 'spate-project' ORDER BY 1`, "0|10", "1|3")
	wantRows(t, pool, `SELECT count(*) FROM event_log`, fmt.Sprint(13))
}

// TestRebuildOfAPartitionAddedMidRun: a partition added to the topic while
// a rebuild runs, and applied by the live projector, is not read by the
// rebuild. Swapped in, its tables would lack that partition's events; the
// rebuild fails instead, and run again it takes the partition in.
func TestRebuildOfAPartitionAddedMidRun(t *testing.T) {
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 1, "events")
	live, pool := newProjector(t) // group spate-project, event_log
	p0 := produceTo(t, brokers, 0, records(t, 0, 10))
	if err := live.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Records: p0, Next: p0[len(p0)-1].Offset + 1}); err != nil {
		t.Fatal(err)
	}
	added := false
	progress := func(done, total int64) {
		if added {
			return
		}
		added = true
		acl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
		if err != nil {
			t.Fatal(err)
		}
		defer acl.Close()
		if _, err := kadm.NewClient(acl).CreatePartitions(ctx, 1, "events"); err != nil {
			t.Fatal(err)
		}
		recs := records(t, 100, 105)
		for _, r := range recs {
			r.Offset = 0
		}
		p1 := produceTo(t, brokers, 1, recs)
		if err := live.Apply(ctx, consumers.Batch{Topic: "events", Partition: 1, Records: p1, Next: p1[len(p1)-1].Offset + 1}); err != nil {
			t.Fatal(err)
		}
	}
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), projection.RebuildConfig{
		Projections: []projection.Projection{projection.EventLog()}, Topic: "events", Progress: progress}, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rb.Run(ctx); err == nil || !strings.Contains(err.Error(), "partition 1 of events was added after the rebuild started") {
		t.Fatalf("rebuild with a partition added meanwhile = %v, want an error saying so", err)
	}
	rb, err = projection.NewRebuild(pool, schemas.Builtin(), projection.RebuildConfig{
		Projections: []projection.Projection{projection.EventLog()}, Topic: "events"}, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rb.Run(ctx); err != nil {
		t.Fatalf("rebuild run again: %v", err)
	}
	wantRows(t, pool, `SELECT partition, next_offset FROM spate_offsets WHERE consumer_group = 'spate-project' ORDER BY 1`, "0|10", "1|5")
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "15")
}

// produceTo writes recs to partition part of their topic and returns them
// as written.
func produceTo(t *testing.T, brokers []string, part int32, recs []*kgo.Record) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, r := range recs {
		r.Partition = part
	}
	res := cl.ProduceSync(context.Background(), recs...)
	if err := res.FirstErr(); err != nil {
		t.Fatal(err)
	}
	out := make([]*kgo.Record, len(res))
	for i, pr := range res {
		out[i] = pr.Record
	}
	return out
}

// deleteRecordsBelow makes Kafka's history of partition 0 of topic start
// at offset o, as retention does.
func deleteRecordsBelow(t *testing.T, brokers []string, topic string, o int64) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	offs := kadm.Offsets{}
	offs.AddOffset(topic, 0, o, -1)
	deleted, err := kadm.NewClient(cl).DeleteRecords(context.Background(), offs)
	if err == nil {
		err = deleted.Error()
	}
	if err != nil {
		t.Fatalf("delete records of %s below %d: %v", topic, o, err)
	}
}

// TestRebuildOfHistoryKafkaNoLongerHas: retention deleted the oldest
// events. A rebuild would swap in tables that lack them, so it is refused,
// saying so, unless PartialHistory allows it; then it rebuilds what Kafka
// keeps.
func TestRebuildOfHistoryKafkaNoLongerHas(t *testing.T) {
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 1, "events")
	live, pool := newProjector(t)
	p0 := produceTo(t, brokers, 0, records(t, 0, 10))
	if err := live.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Records: p0, Next: 10}); err != nil {
		t.Fatal(err)
	}
	deleteRecordsBelow(t, brokers, "events", 4)
	cfg := projection.RebuildConfig{Projections: []projection.Projection{projection.EventLog()}, Topic: "events"}
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), cfg, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	_, err = rb.Run(ctx)
	if !errors.Is(err, projection.ErrHistoryGone) || !strings.Contains(err.Error(), "partition 0 starts at offset 4, not 0") {
		t.Fatalf("rebuild of history Kafka deleted = %v, want ErrHistoryGone naming partition 0's start", err)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "10")
	wantRows(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname = '`+rb.Schema()+`'`, "0")

	cfg.PartialHistory = true
	if rb, err = projection.NewRebuild(pool, schemas.Builtin(), cfg, kgo.SeedBrokers(brokers...)); err != nil {
		t.Fatal(err)
	}
	if res, err := rb.Run(ctx); err != nil || res.Resumed {
		t.Fatalf("rebuild with PartialHistory = %+v, %v; want a fresh run", res, err)
	}
	wantRows(t, pool, `SELECT min("offset"), count(*) FROM event_log`, "4|6")
}

// TestRebuildFromFurtherBackStartsOver: a rebuild from offset 5 is
// interrupted; run again from the start, it does not resume tables that
// lack events 0 to 4, but starts over.
func TestRebuildFromFurtherBackStartsOver(t *testing.T) {
	t.Parallel()
	brokers := spatetest.Kafka(t, 1, "events")
	live, pool := newProjector(t)
	p0 := produceTo(t, brokers, 0, records(t, 0, 10))
	if err := live.Apply(t.Context(), consumers.Batch{Topic: "events", Partition: 0, Records: p0, Next: 10}); err != nil {
		t.Fatal(err)
	}
	ctx, interrupt := context.WithCancel(t.Context())
	cfg := projection.RebuildConfig{Projections: []projection.Projection{projection.EventLog()}, Topic: "events", From: map[int32]int64{0: 5},
		Progress: func(done, total int64) { interrupt() }}
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), cfg, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rb.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted rebuild: %v, want context.Canceled", err)
	}
	cfg.From, cfg.Progress = nil, nil
	if rb, err = projection.NewRebuild(pool, schemas.Builtin(), cfg, kgo.SeedBrokers(brokers...)); err != nil {
		t.Fatal(err)
	}
	res, err := rb.Run(t.Context())
	if err != nil || res.Resumed || res.Applied != 10 {
		t.Fatalf("rebuild from the start = %+v, %v; want a fresh run of 10 events", res, err)
	}
	wantRows(t, pool, `SELECT min("offset"), count(*) FROM event_log`, "0|10")
}

// TestRebuildWithTheLiveOffsetBelowKafkasHistory: the live projector had
// not applied the events retention deleted, and the partition is idle, so
// its offset stays below Kafka's log start: it would move only with new
// events. The rebuild takes the log start as where it is, and swaps in.
func TestRebuildWithTheLiveOffsetBelowKafkasHistory(t *testing.T) {
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 1, "events")
	live, pool := newProjector(t)
	p0 := produceTo(t, brokers, 0, records(t, 0, 10))
	if err := live.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Records: p0[:4], Next: 4}); err != nil {
		t.Fatal(err)
	}
	deleteRecordsBelow(t, brokers, "events", 10)
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), projection.RebuildConfig{
		Projections: []projection.Projection{projection.EventLog()}, Topic: "events", PartialHistory: true}, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	// Without the log start as its target, the rebuild waits for ever.
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	res, err := rb.Run(rctx)
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if diff := cmp.Diff(map[int32]int64{0: 4}, res.Offsets); diff != "" {
		t.Errorf("swapped in at the live offsets (-want +got):\n%s", diff)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "0")
}

// produceEach writes recs to partition 0 of their topic, a record batch
// each, so that Kafka can delete records below any of them.
func produceEach(t *testing.T, brokers []string, recs []*kgo.Record) []*kgo.Record {
	t.Helper()
	var out []*kgo.Record
	for _, r := range recs {
		out = append(out, produceTo(t, brokers, 0, []*kgo.Record{r})...)
	}
	return out
}

// TestRebuildWhileRetentionDeletesItsHistory: retention deletes events the
// rebuild has not read yet. The run fails, rather than swap in tables that
// lack them and say they hold them; run again, it refuses to resume across
// the gap, and with PartialHistory it starts over from what Kafka keeps.
// A dead letter among the deleted events is then re-driven into event_log.
func TestRebuildWhileRetentionDeletesItsHistory(t *testing.T) {
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 1, "events")
	live, pool := newProjector(t)
	p0 := produceEach(t, brokers, records(t, 0, 20))
	// The live projector dead-lettered the event at offset 5.
	for _, b := range []consumers.Batch{{Records: p0[:5], Next: 5}, {Records: p0[6:], Next: 20}} {
		b.Topic = "events"
		if err := live.Apply(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	deleted := false
	cfg := projection.RebuildConfig{Projections: []projection.Projection{projection.EventLog()}, Topic: "events", BatchSize: 2,
		Progress: func(done, total int64) {
			if !deleted {
				deleted = true
				deleteRecordsBelow(t, brokers, "events", 10)
			}
		}}
	kopts := append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, manyPolls...)
	rebuild := func(cfg projection.RebuildConfig) (*projection.RebuildResult, error) {
		t.Helper()
		rb, err := projection.NewRebuild(pool, schemas.Builtin(), cfg, kopts...)
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		return rb.Run(rctx)
	}
	if _, err := rebuild(cfg); !errors.Is(err, projection.ErrHistoryGone) {
		t.Fatalf("rebuild while retention deleted its history = %v, want ErrHistoryGone", err)
	}
	cfg.Progress = nil
	if _, err := rebuild(cfg); !errors.Is(err, projection.ErrHistoryGone) || !strings.Contains(err.Error(), "(where the interrupted rebuild stopped)") {
		t.Fatalf("resumed across the gap = %v, want ErrHistoryGone saying where it stopped", err)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "19") // the live table, untouched
	cfg.PartialHistory = true
	if res, err := rebuild(cfg); err != nil || res.Resumed {
		t.Fatalf("rebuild with PartialHistory = %+v, %v; want a run started over", res, err)
	}
	wantRows(t, pool, `SELECT min("offset"), count(*) FROM event_log`, "10|10")
	wantRows(t, pool, `SELECT from_offset, to_offset FROM spate_rebuilt`, "10|20")
	if ok, err := live.Redrive(ctx, asDeadLetter(p0[5], projection.DefaultGroup, "data-exception")); !ok || err != nil {
		t.Fatalf("Redrive of the event at 5 = %v, %v; want true, nil", ok, err)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log WHERE "offset" = 5`, "1")
}

// TestRebuildOfAShadowFromAnOlderRelease: the shadow schema of an
// interrupted rebuild does not say where it started or what it skipped.
// The rebuild starts over rather than resume it.
func TestRebuildOfAShadowFromAnOlderRelease(t *testing.T) {
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 1, "events")
	live, pool := newProjector(t)
	p0 := produceEach(t, brokers, records(t, 0, 20))
	if err := live.Apply(ctx, consumers.Batch{Topic: "events", Partition: 0, Records: p0, Next: 20}); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := projection.RebuildConfig{Projections: []projection.Projection{projection.EventLog()}, Topic: "events", BatchSize: 2,
		Progress: func(done, total int64) {
			if done >= 4 {
				cancel()
			}
		}}
	kopts := append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, manyPolls...)
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), cfg, kopts...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rb.Run(rctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted rebuild = %v, want context.Canceled", err)
	}
	if _, err := pool.Exec(ctx, `DROP TABLE `+rb.Schema()+`.spate_rebuild_partitions`); err != nil {
		t.Fatal(err)
	}
	cfg.Progress = nil
	if rb, err = projection.NewRebuild(pool, schemas.Builtin(), cfg, kopts...); err != nil {
		t.Fatal(err)
	}
	if res, err := rb.Run(ctx); err != nil || res.Resumed {
		t.Fatalf("rebuild over an older release's shadow = %+v, %v; want a run started over", res, err)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "20")
	wantRows(t, pool, `SELECT from_offset, to_offset, cardinality(skipped) FROM spate_rebuilt`, "0|20|0")
}

// TestRebuildRefusesMigrationsThatMakeMoreThanTables: the rebuild runs the
// migrations in its shadow schema and swaps in the tables alone; a type
// the migrations make there would be dropped with the shadow schema, and
// the column of the new table that uses it with it. So such a rebuild is
// refused before it starts, naming the type, and the live table is left
// as it was.
func TestRebuildRefusesMigrationsThatMakeMoreThanTables(t *testing.T) {
	t.Parallel()
	const config = `
projections:
  - name: pay_kinds
    migrations:
      - CREATE TYPE pay_kind AS ENUM ('small', 'big')
      - CREATE TABLE pay_kinds (payment_id text PRIMARY KEY, kind pay_kind NOT NULL)
    on:
      shop.payment.captured.v1: |
        INSERT INTO pay_kinds VALUES (:data.payment_id, 'small')
`
	rb, pool := configuredRebuild(t, config)
	if _, err := rb.Run(context.Background()); !errors.Is(err, projection.ErrShadowHoldsMore) || !strings.Contains(err.Error(), "type pay_kind") {
		t.Fatalf("Run: %v, want ErrShadowHoldsMore naming type pay_kind", err)
	}
	wantRows(t, pool, `SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'pay_kinds'::regclass AND attnum > 0 AND NOT attisdropped`,
		"payment_id,kind")
	wantRows(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'spate_rebuild%'`, "0")
}

// configuredRebuild returns a rebuild of the projections of config, which
// a projector has migrated, over an empty topic events whose end it
// stored, and the pool.
func configuredRebuild(t *testing.T, config string) (*projection.Rebuild, *pgxpool.Pool) {
	t.Helper()
	brokers := spatetest.Kafka(t, 1, "events", consumers.DLQTopic("events"))
	_, pool := newConfigured(t, []byte(config))
	if _, err := projection.SetOffsets(t.Context(), pool, projection.DefaultGroup, "events", map[int32]int64{0: 0}); err != nil {
		t.Fatal(err)
	}
	projs, err := projection.Load("spate.yaml", []byte(config), schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), projection.RebuildConfig{Projections: projs, Topic: "events"}, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	return rb, pool
}

// TestRebuildRefusesAGroupWithoutOffsets: a rebuild for a group that
// stored no offset of the topic (a wrong group or topic) would have
// nothing to catch up with and swap empty tables in: it is refused, and
// the live table keeps its rows.
func TestRebuildRefusesAGroupWithoutOffsets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 1, "events", consumers.DLQTopic("events"))
	p, pool := newProjector(t)
	recs := records(t, 0, 5)
	produceManually(t, brokers, recs...)
	if err := p.Apply(ctx, batch(recs)); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []projection.RebuildConfig{{Group: "spate-fanout", Topic: "events"}, {Topic: "evnets"}} {
		cfg.Projections = []projection.Projection{projection.EventLog()}
		rb, err := projection.NewRebuild(pool, schemas.Builtin(), cfg, kgo.SeedBrokers(brokers...))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rb.Run(ctx); !errors.Is(err, projection.ErrNoLiveOffsets) {
			t.Errorf("rebuild for group %q, topic %q: %v, want ErrNoLiveOffsets", cfg.Group, cfg.Topic, err)
		}
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "5")
	wantRows(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'spate_rebuild%'`, "0")
}

// TestRebuildReachesALiveOffsetPastATransactionMarker: events written in a
// transaction (spate replay stream --to-topic) end their partition with
// the transaction's marker, and a live offset set to the end (spate
// offsets reset --to latest) lies past it. The rebuild gets there all the
// same, and swaps.
func TestRebuildReachesALiveOffsetPastATransactionMarker(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a rebuild that never gets there ends then
	defer cancel()
	brokers := spatetest.Kafka(t, 1, "events", consumers.DLQTopic("events"))
	p, pool := newProjector(t)
	tx, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.TransactionalID(t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	recs := records(t, 0, 5)
	if err := tx.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := tx.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := tx.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, batch(recs)); err != nil {
		t.Fatal(err)
	}
	if _, err := projection.SetOffsets(ctx, pool, projection.DefaultGroup, "events", map[int32]int64{0: 6}); err != nil { // past the marker at 5
		t.Fatal(err)
	}
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), projection.RebuildConfig{Projections: []projection.Projection{projection.EventLog()}, Topic: "events"},
		kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	res, err := rb.Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.Offsets[0] != 6 || res.Applied != 5 {
		t.Errorf("swapped in at %v with %d events applied, want at 6 with 5", res.Offsets, res.Applied)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "5")
}

// TestRebuildTakesTablesWithTheirOwnSequences: what tables own (a serial
// column's sequence, an identity's, an index) moves with them, and does
// not stop a rebuild.
func TestRebuildTakesTablesWithTheirOwnSequences(t *testing.T) {
	t.Parallel()
	const config = `
projections:
  - name: pay_log
    migrations:
      - CREATE TABLE pay_log (n bigserial PRIMARY KEY, m bigint GENERATED ALWAYS AS IDENTITY, payment_id text NOT NULL)
      - CREATE INDEX pay_log_payment_id ON pay_log (payment_id)
    on:
      shop.payment.captured.v1: |
        INSERT INTO pay_log (payment_id) VALUES (:data.payment_id)
`
	rb, pool := configuredRebuild(t, config)
	if _, err := rb.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	wantRows(t, pool, `SELECT count(*) FROM pg_class WHERE relname IN ('pay_log_n_seq', 'pay_log_m_seq', 'pay_log_payment_id') AND relnamespace = current_schema()::regnamespace`, "3")
}

// TestSwapGapWithAnEventABuiltinRejects: the live projector moves past
// an event event_log cannot store (U+0000 in jsonb; dead-lettered) just as
// the rebuild is about to swap. The swap's gap holds that event: the
// rebuild skips it, as it would anywhere else, rather than fail.
func TestSwapGapWithAnEventABuiltinRejects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	brokers := spatetest.Kafka(t, 1, "events", consumers.DLQTopic("events"))
	p, pool := newConfigured(t, []byte("projections:\n  - name: event_log\n    builtin: event_log\n"))
	recs := records(t, 0, 10)
	data, err := proto.Marshal(&shopv1.OrderPlaced{OrderId: "o-\x00", CustomerId: "c-1", Currency: "EUR"})
	if err != nil {
		t.Fatal(err)
	}
	recs[5] = cekafka.Record("events", &spatev1.Event{Id: "e-5", Source: "/test", Type: "shop.order.placed.v1",
		Subject: "o-5", Time: timestamppb.Now(), Datacontenttype: schemas.ContentTypeProtobuf, Data: data})
	recs[5].Offset = 5
	produceManually(t, brokers, recs...)
	if err := p.Apply(ctx, batch(recs[:5])); err != nil {
		t.Fatal(err)
	}
	// The live projector gets past offset 5 as a group would: three tries,
	// then the dead letter's offset-only batch, then the rest.
	liveOn := func() {
		var pe *consumers.PoisonError
		var err error
		for try := 0; try < 3 && !errors.As(err, &pe); try++ {
			err = p.Apply(ctx, batch(recs[5:]))
		}
		if !errors.As(err, &pe) {
			t.Errorf("live Apply = %v, want poison", err)
			return
		}
		if err := p.Apply(ctx, consumers.Batch{Topic: "events", Next: 6, DeadLettered: pe}); err != nil {
			t.Error(err)
		}
		if err := p.Apply(ctx, batch(recs[6:])); err != nil {
			t.Error(err)
		}
	}
	var once sync.Once
	rb, err := projection.NewRebuild(pool, schemas.Builtin(), projection.RebuildConfig{
		Projections: []projection.Projection{projection.EventLog()}, Topic: "events",
		Progress: func(done, _ int64) {
			if done >= 5 {
				once.Do(liveOn)
			}
		},
	}, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	res, err := rb.Run(ctx)
	if err != nil {
		t.Fatalf("rebuild = %v; want it to skip the event the live projector dead-lettered", err)
	}
	if res.Skipped != 1 {
		t.Errorf("rebuild = %+v, want 1 skipped", res)
	}
	wantRows(t, pool, `SELECT count(*) FROM event_log`, "9")
}

// Rebuilds of different sets of projections never share their schemas:
// names joined would make {a_b} and {a, b} one.
func TestRebuildSchemasAreTheSetsOwn(t *testing.T) {
	projs, err := projection.Load("spate.yaml", []byte(`
projections:
  - name: a_b
    batch:
      - {type: shop.order.placed.v1, sql: "SELECT :id FROM batch"}
  - name: a
    batch:
      - {type: shop.order.placed.v1, sql: "SELECT :id FROM batch"}
  - name: b
    batch:
      - {type: shop.order.placed.v1, sql: "SELECT :id FROM batch"}
  - name: Mixed-Case
    batch:
      - {type: shop.order.placed.v1, sql: "SELECT :id FROM batch"}
`), schemas.Builtin())
	if err != nil {
		t.Fatal(err)
	}
	schema := func(ps ...projection.Projection) string {
		rb, err := projection.NewRebuild(nil, schemas.Builtin(), projection.RebuildConfig{Projections: ps})
		if err != nil {
			t.Fatal(err)
		}
		return rb.Schema()
	}
	ab, aAndB, mixed := schema(projs[0]), schema(projs[1], projs[2]), schema(projs[3])
	if ab != "spate_rebuild_a_b" {
		t.Errorf("schema of a_b: %s, want spate_rebuild_a_b", ab)
	}
	if aAndB == ab || !regexp.MustCompile(`^spate_rebuild_[0-9a-f]{16}$`).MatchString(aAndB) {
		t.Errorf("schema of a and b: %s, want one of their own (a hash), not a_b's %s", aAndB, ab)
	}
	if again := schema(projs[2], projs[1]); again != aAndB {
		t.Errorf("schema of b and a: %s, want a and b's %s", again, aAndB)
	}
	if !regexp.MustCompile(`^spate_rebuild_[0-9a-f]{16}$`).MatchString(mixed) {
		t.Errorf("schema of Mixed-Case: %s, want a hash", mixed)
	}
}

// A rebuild warns of the schema an earlier release's rebuild of the same
// projections left under the old name, which it neither resumes nor
// replaces; not of the schema of a projection that bears that name.
func TestRebuildWarnsOfAnEarlierReleasesSchema(t *testing.T) {
	t.Parallel()
	brokers, _, pool, live := caughtUp(t, 200)
	live.stop(t)
	if _, err := pool.Exec(context.Background(), `CREATE SCHEMA spate_rebuild_orders_payments`); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if _, err := newRebuild(t, pool, brokers, shopv1.ExampleConfig, log, nil, "orders", "payments").Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "schema=spate_rebuild_orders_payments") {
		t.Fatalf("the rebuild's log does not name the schema left under the old name:\n%s", logs.String())
	}

	// Unless a projection of that name is recorded: the schema is then
	// its own rebuild's.
	if _, err := pool.Exec(context.Background(), `INSERT INTO spate_projections (projection, checksum) VALUES ('orders_payments', 'x')`); err != nil {
		t.Fatal(err)
	}
	var again syncBuffer
	log = slog.New(slog.NewTextHandler(&again, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if _, err := newRebuild(t, pool, brokers, shopv1.ExampleConfig, log, nil, "orders", "payments").Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(again.String(), "spate_rebuild_orders_payments") {
		t.Fatalf("the rebuild warned of the schema of projection orders_payments:\n%s", again.String())
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
