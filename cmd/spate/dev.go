package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/consumers/projection"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
	"github.com/spate-io/spate/throwaway"
)

// devFlags are the flags of spate dev.
type devFlags struct {
	roleFlags
	edgeAddr    string
	kafkaPort   int
	partitions  int
	retention   time.Duration
	postgresURL string
	redisURL    string
	streams     streamFlags
	config      string
	keys        string
	edgeOnly    bool
	limits      edgeLimits
	given       func(name string) bool
}

func newDevCmd() *cobra.Command {
	var f devFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole pipeline in one process, on embedded Kafka and throwaway Postgres and Redis",
		Long: `spate dev runs the edge, the projector and the fan-out in one process.

Unless told otherwise it brings its own services: an in-process Kafka-protocol
broker (franz-go's kfake; records kept in memory with time and size retention),
and a throwaway PostgreSQL and redis-server started from the binaries installed
on this machine. Set --kafka-brokers, --postgres-url or --redis-url (or their
SPATE_* variables) to use real ones instead. Ctrl-C, or closing the
terminal (unless started with nohup), stops everything and removes the
throwaway data; a SIGHUP sent while the terminal is open reloads --keys.`,
		Example: `  spate dev
  SPATE_POSTGRES_URL=postgres://localhost/spate spate dev --edge-addr 127.0.0.1:8081`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			err := runDev(cmd.Context(), &f, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil && cmd.Context().Err() != nil {
				// Ctrl-C while starting: a step cut short is no failure.
				fmt.Fprintln(cmd.ErrOrStderr(), "spate dev: stopped while starting")
				return nil
			}
			return err
		},
	}
	fs := cmd.Flags()
	f.roleFlags.register(fs, nil)
	fs.Lookup("kafka-brokers").Usage = "Kafka seed brokers, comma-separated host:port (default: an embedded broker)"
	fs.StringVar(&f.edgeAddr, "edge-addr", "127.0.0.1:8080", "address of the ingestion edge")
	fs.IntVar(&f.kafkaPort, "kafka-port", 9092, "port of the embedded broker on 127.0.0.1 (0: any free port)")
	fs.IntVar(&f.partitions, "partitions", 4, "partitions of the topics spate dev creates on the embedded broker (on --kafka-brokers: the cluster's default unless given)")
	fs.DurationVar(&f.retention, "kafka-retention", 6*time.Hour, "how long the embedded broker keeps records, at most 256 MiB a partition (topics spate dev creates on --kafka-brokers: the cluster's default unless given)")
	fs.StringVar(&f.postgresURL, "postgres-url", "", "PostgreSQL URL (default: a throwaway server)")
	fs.StringVar(&f.redisURL, "redis-url", "", "Redis URL (default: a throwaway redis-server)")
	f.streams.register(fs)
	fs.BoolVar(&f.edgeOnly, "edge-only", false, "run the edge alone (no projector, fan-out or Postgres), e.g. to measure it with spate bench edge")
	fs.StringVar(&f.keys, "keys", "", "file of API keys producers must present (reloaded on SIGHUP); none: anyone may publish")
	fs.StringVar(&f.config, "config", "", "spate.yaml with the projections and routes (default: the shop example, schemas/shop/v1/spate.yaml)")
	f.limits.register(fs)
	f.given = fs.Changed
	annotateEnv(fs)
	return cmd
}

func runDev(ctx context.Context, f *devFlags, stdout, stderr io.Writer) (err error) {
	log, kafkaLog, err := f.loggers(stderr)
	if err != nil {
		return err
	}
	started := time.Now()
	terminalGone := terminalWatch() // before SIGHUP is caught
	hup, stopHangups := catchHangups()
	defer stopHangups()
	// The flags and files first: a mistake in one is told before anything
	// starts.
	edgeCfg, err := f.limits.config()
	if err != nil {
		return err
	}
	reg, err := loadRegistry(f.schemas)
	if err != nil {
		return err
	}
	e := &env{log: log, kafkaLog: kafkaLog, reg: reg, metrics: newMetrics(), topic: f.topic}
	cfg, err := e.loadConfig(f.config, shopv1.ExampleConfig)
	if err != nil {
		return err
	}
	keys, err := loadKeys(f.keys)
	if err != nil {
		return err
	}
	// And the ports: a busy one is told at once, not after servers
	// started and consumers joined their groups for nothing.
	ln, aln, err := listenEdgeAdmin(f.edgeAddr, f.adminAddr)
	if err != nil {
		return err
	}
	defer ln.Close()  // if the start fails before Serve takes it
	defer aln.Close() // the same

	// Services, in order of dependency; closed in reverse by the defers.
	brokers, kafkaNote := f.brokers, "external"
	if len(brokers) == 0 {
		c, err := kfake.NewCluster(
			kfake.NumBrokers(1),
			kfake.Ports(f.kafkaPort),
			kfake.BrokerConfigs(map[string]string{"log.cleaner.backoff.ms": "60000"}),
		)
		if err != nil {
			return fmt.Errorf("embedded kafka on 127.0.0.1:%d: %w (set --kafka-port 0 for any free port)", f.kafkaPort, err)
		}
		defer c.Close()
		brokers, kafkaNote = c.ListenAddrs(), "embedded"
	}
	topics := topicSpec{partitions: int32(f.partitions), replicas: 1, retention: f.retention, maxBytes: 256 << 20}
	if kafkaNote == "external" {
		// A real cluster's topics take its defaults, the dev sizes only
		// where given.
		topics = topicSpec{partitions: -1, replicas: -1}
		if f.given("partitions") {
			topics.partitions = int32(f.partitions)
		}
		if f.given("kafka-retention") {
			topics.retention = f.retention
		}
	}
	if err := createTopics(ctx, brokers, f.topic, topics); err != nil {
		return err
	}

	if f.redisURL != "" {
		// The roles wait for a Redis that is down, logging retries; at a
		// terminal, one given by mistake is better told at once.
		if err := pingRedis(ctx, f.redisURL); err != nil {
			return fmt.Errorf("--redis-url %s: %w", redacted(f.redisURL), err)
		}
	}
	pgURL, pgNote := f.postgresURL, "external"
	if f.edgeOnly {
		pgURL, pgNote = "-", "not started: --edge-only"
	} else if pgURL == "" {
		log.Info("starting a throwaway postgres")
		pg, err := throwaway.StartPostgres(ctx, throwaway.PostgresConfig{})
		if err != nil {
			return err
		}
		defer stopLogged(log, "postgres", pg.Stop)
		pgURL, pgNote = pg.URL(), "throwaway"
	}
	redisURL, redisNote := f.redisURL, "external"
	if redisURL == "" {
		rs, err := throwaway.StartRedis(ctx, throwaway.RedisConfig{})
		if err != nil {
			return err
		}
		defer stopLogged(log, "redis", rs.Stop)
		redisURL, redisNote = rs.URL(), "throwaway"
	}

	e.brokers = brokers
	// Retries within a day are published once, through the same Redis.
	dd, ddb, err := newDedupe(redisURL, 24*time.Hour)
	if err != nil {
		return err
	}
	defer ddb.Close()
	edgeCfg.Keys, edgeCfg.Dedupe = keys, dd
	srv, cl, err := e.newEdge(edgeCfg)
	if err != nil {
		return err
	}
	defer e.closeEdge(srv) // before the dedupe store's client closes
	checks := []check{{"kafka", cl.Ping}, {"edge", srv.Ready}}
	tasks := []func(context.Context) error{reloadOnHangup(hup, log, f.keys, srv, nil, terminalGone)}
	var groups []*consumers.Group
	var sampleStreams []string
	var noStreams string
	if !f.edgeOnly {
		proj, pool, err := e.newProjector(ctx, pgURL, projection.DefaultGroup, cfg.projections)
		if err != nil {
			return err
		}
		defer pool.Close()
		fcfg, err := f.streams.config(fanout.DefaultGroup, cfg.routes)
		if err != nil {
			return err
		}
		fan, rdb, err := e.newFanout(ctx, redisURL, fcfg)
		if err != nil {
			return err
		}
		defer rdb.Close()
		sampleStreams, noStreams = bannerStreams(fan)
		projGroup, err := e.newGroup("project", projection.DefaultGroup, "earliest", 0, proj)
		if err != nil {
			return err
		}
		fanGroup, err := e.newGroup("fanout", fanout.DefaultGroup, "earliest", 0, fan)
		if err != nil {
			return err
		}
		groups = []*consumers.Group{projGroup, fanGroup}
		checks = append(checks, check{"postgres", proj.Ping}, check{"redis", fan.Ping},
			check{"project", projGroup.Stalled}, check{"fanout", fanGroup.Stalled})
		tasks = append(tasks, projGroup.Run, fanGroup.Run, func(ctx context.Context) error { return fan.Trim(ctx, 30*time.Second) })
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(gctx, ln) })
	for _, run := range tasks {
		g.Go(func() error { return run(gctx) })
	}
	g.Go(func() error { return serveHTTP(gctx, aln, adminHandler(e.metrics, checks), log) })
	g.Go(func() error {
		if err := awaitStarted(gctx, groups...); err != nil {
			return nil // stopping
		}
		printBanner(stdout, bannerInfo{
			edge: ln.Addr().String(), admin: aln.Addr().String(),
			kafka: brokers[0], kafkaNote: kafkaNote, topic: f.topic,
			postgres: pgURL, postgresNote: pgNote, redis: redisURL, redisNote: redisNote,
			streams: sampleStreams, noStreams: noStreams, keys: f.keys, edgeOnly: f.edgeOnly, took: time.Since(started),
		})
		return nil
	})
	err = g.Wait()
	log.Info("stopped; removing throwaway data")
	if errors.Is(err, errTerminalClosed) {
		return nil // a stop, as at Ctrl-C
	}
	return err
}

// awaitStarted waits until every group has resumed its partitions.
func awaitStarted(ctx context.Context, groups ...*consumers.Group) error {
	for _, g := range groups {
		select {
		case <-g.Started():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// topicSpec is how createTopics makes a topic: partitions and replicas
// (-1: the cluster's default), retention and maxBytes a partition (0: the
// cluster's default).
type topicSpec struct {
	partitions int32
	replicas   int16
	retention  time.Duration
	maxBytes   int64
}

// createTopics creates the events topic and its dead-letter topic as spec
// says, unless they exist.
func createTopics(ctx context.Context, brokers []string, topic string, spec topicSpec) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return fmt.Errorf("kafka admin client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	cfg := map[string]*string{}
	if spec.retention > 0 {
		cfg["retention.ms"] = kadm.StringPtr(strconv.FormatInt(spec.retention.Milliseconds(), 10))
	}
	if spec.maxBytes > 0 {
		cfg["retention.bytes"] = kadm.StringPtr(strconv.FormatInt(spec.maxBytes, 10))
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resps, err := adm.CreateTopics(ctx, spec.partitions, spec.replicas, cfg, topic, consumers.DLQTopic(topic))
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for _, r := range resps.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", r.Topic, r.Err)
		}
	}
	return nil
}

func stopLogged(log *slog.Logger, what string, stop func() error) {
	if err := stop(); err != nil {
		log.Error("stop "+what, "err", err)
	}
}

type bannerInfo struct {
	hidden                  bool // a password in postgres or redis is shown as xxxxx
	edge, admin             string
	kafka, kafkaNote, topic string
	postgres, postgresNote  string
	redis, redisNote        string
	streams                 []string // where the example event goes
	noStreams               string   // why it goes nowhere, when streams is empty
	keys                    string   // the --keys file; empty: anyone may publish
	edgeOnly                bool
	took                    time.Duration
}

// bannerStreams returns the streams fan sends bannerEvent to, or why none.
func bannerStreams(fan *fanout.Writer) ([]string, string) {
	keys, err := fan.Streams(bannerEvent)
	switch {
	case err != nil:
		return nil, err.Error()
	case len(keys) == 0:
		return nil, "no route of the spate.yaml takes " + bannerEvent.Type + " to a stream"
	}
	return keys, ""
}

// bannerEvent is the banner's example event, as curl sends it.
var bannerEvent = &spatev1.Event{Id: "order-1001-placed", Source: "/shop/checkout", Type: "shop.order.placed.v1", Subject: "order-1001"}

func printBanner(w io.Writer, b bannerInfo) {
	pg, rs := redacted(b.postgres), redacted(b.redis)
	b.hidden = pg != b.postgres || rs != b.redis
	b.postgres, b.redis = pg, rs
	who, auth := "no --keys: anyone may publish", ""
	if b.keys != "" {
		who = "producers present a key of " + b.keys
		auth = "\n    -H 'Authorization: Bearer YOUR_KEY' \\"
	}
	fmt.Fprintf(w, `
Spate dev is ready (%.1fs).

  edge      http://%s   POST /v1/events, Connect spate.v1.IngestService; %s
  admin     http://%s   /metrics /healthz /readyz /debug/pprof/
  kafka     %s (%s), topic %s
  postgres  %s (%s)
  redis     %s (%s)

Send an event:

  curl -i http://%s/v1/events \
    -H 'Content-Type: application/cloudevents+json' \%s
    -d '{"specversion":"1.0","id":"order-1001-placed","source":"/shop/checkout","type":"shop.order.placed.v1","subject":"order-1001","data":{"orderId":"order-1001","customerId":"cust-7","amountCents":4200,"currency":"EUR","items":[{"sku":"tea-1","quantity":2,"priceCents":2100}]}}'

%s
Ctrl-C stops everything and removes the throwaway data.
`, b.took.Seconds(), b.edge, who, b.admin, b.kafka, b.kafkaNote, b.topic, b.postgres, b.postgresNote, b.redis, b.redisNote,
		b.edge, auth, arrival(b))
}

// pingRedis checks that the Redis at url answers within 5 s.
func pingRedis(ctx context.Context, url string) error {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return rdb.Ping(ctx).Err()
}

// redacted returns a Postgres or Redis connection string with its password,
// if any, shown as xxxxx: a banner may end up in a shared terminal or log.
func redacted(conn string) string {
	if u, err := url.Parse(conn); err == nil && u.Scheme != "" { // a Unix socket's has no host
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.Redacted()
	}
	return dsnPassword.ReplaceAllString(conn, "${1}xxxxx") // key=value form
}

// dsnPassword matches the password of a key=value connection string,
// quoted or not.
var dsnPassword = regexp.MustCompile(`(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// arrival tells where to see an event arrive.
func arrival(b bannerInfo) string {
	if b.edgeOnly {
		return fmt.Sprintf(`With --edge-only nothing consumes the topic; any Kafka client reads it:

  kcat -b %s -C -t %s -e
`, b.kafka, b.topic)
	}
	var streams strings.Builder
	for _, key := range b.streams {
		fmt.Fprintf(&streams, "  redis-cli -u '%s' XRANGE '%s' - +\n", b.redis, key)
	}
	if b.noStreams != "" {
		fmt.Fprintf(&streams, "  # %s\n", b.noStreams)
	}
	if b.hidden {
		streams.WriteString("  # a password is shown as xxxxx: put yours in its place\n")
	}
	return fmt.Sprintf(`See it arrive:

  psql '%s' -c 'SELECT id, type, subject, payload FROM event_log ORDER BY time DESC LIMIT 5'
%s`, b.postgres, streams.String())
}
