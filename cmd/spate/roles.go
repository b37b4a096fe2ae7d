package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"runtime/debug"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/producers/edge"
)

// roleFlags are the flags every role shares.
type roleFlags struct {
	logFlags
	kafkaFlags
	adminAddr string
	schemas   string
}

func (r *roleFlags) register(fs *pflag.FlagSet, defaultBrokers []string) {
	r.logFlags.register(fs)
	r.kafkaFlags.register(fs, defaultBrokers)
	fs.StringVar(&r.adminAddr, "admin-addr", "127.0.0.1:9090", "address of the admin server: /metrics, /healthz, /readyz, /debug/pprof/")
	fs.StringVar(&r.schemas, "schemas", "", "a FileDescriptorSet (buf build -o FILE.binpb) with event types besides the compiled-in ones")
}

func (r *roleFlags) env() (*env, error) {
	return newEnv(&r.logFlags, &r.kafkaFlags, r.schemas, os.Stderr)
}

// newEnv returns what a command is built from: its logs, written to w, its
// Kafka and its schemas (the compiled-in ones and those in schemasFile).
func newEnv(lf *logFlags, kf *kafkaFlags, schemasFile string, w io.Writer) (*env, error) {
	log, kafkaLog, err := lf.loggers(w)
	if err != nil {
		return nil, err
	}
	if len(kf.brokers) == 0 {
		return nil, fmt.Errorf("--kafka-brokers is required")
	}
	reg, err := loadRegistry(schemasFile)
	if err != nil {
		return nil, err
	}
	return &env{log: log, kafkaLog: kafkaLog, reg: reg, metrics: newMetrics(), brokers: kf.brokers, topic: kf.topic}, nil
}

func newEdgeCmd() *cobra.Command {
	var f roleFlags
	var addr, keysFile, dedupeURL, tlsCert, tlsKey, tlsClientCA string
	var dedupeWindow time.Duration
	var limits edgeLimits
	cmd := &cobra.Command{
		Use:   "edge",
		Short: "Run the ingestion edge: HTTP and Connect/gRPC in, Kafka out",
		Example: `  SPATE_KAFKA_BROKERS=kafka-1:9092,kafka-2:9092 spate edge --edge-addr :8080 --admin-addr :9090
  spate edge --keys keys.yaml --tls-cert edge.pem --tls-key edge-key.pem --tls-client-ca producers-ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := limits.config()
			if err != nil {
				return err
			}
			e, err := f.env()
			if err != nil {
				return err
			}
			hup, stopHangups := catchHangups()
			defer stopHangups()
			keys, err := loadKeys(keysFile)
			if err != nil {
				return err
			}
			dd, ddb, err := newDedupe(dedupeURL, dedupeWindow)
			if err != nil {
				return err
			}
			if ddb != nil {
				defer ddb.Close()
			}
			tlsFiles, err := edgeTLS(tlsCert, tlsKey, tlsClientCA)
			if err != nil {
				return err
			}
			var tlsCfg *tls.Config
			if tlsFiles != nil {
				tlsCfg = tlsFiles.Config()
			}
			if keys == nil && tlsClientCA == "" {
				e.log.Warn("no --keys and no --tls-client-ca: the edge accepts events from anyone")
			}
			if err := e.checkTopics(cmd.Context(), e.topic); err != nil {
				return err
			}
			cfg.Keys, cfg.Dedupe, cfg.TLS = keys, dd, tlsCfg
			srv, cl, err := e.newEdge(cfg)
			if err != nil {
				return err
			}
			defer e.closeEdge(srv) // before the dedupe store's client closes
			ln, aln, err := listenEdgeAdmin(addr, f.adminAddr)
			if err != nil {
				return err
			}
			e.log.Info("edge listening", "addr", ln.Addr().String(), "admin", aln.Addr().String(), "topic", e.topic,
				"tls", tlsCfg != nil, "mtls", tlsClientCA != "")
			reloads := reloadOnHangup(hup, e.log, keysFile, srv, tlsFiles, nil)
			ctx := cmd.Context()
			g, ctx := errgroup.WithContext(ctx)
			g.Go(func() error { return srv.Serve(ctx, ln) })
			g.Go(func() error {
				return serveHTTP(ctx, aln, adminHandler(e.metrics, []check{{"kafka", cl.Ping}, {"edge", srv.Ready}}), e.log)
			})
			g.Go(func() error { return reloads(ctx) })
			return g.Wait()
		},
	}
	f.register(cmd.Flags(), []string{"127.0.0.1:9092"})
	cmd.Flags().StringVar(&addr, "edge-addr", "127.0.0.1:8080", "address of the ingestion server (HTTP/1.1 and h2c; with --tls-cert, HTTPS and HTTP/2)")
	cmd.Flags().StringVar(&tlsCert, "tls-cert", "", "PEM certificate (chain) to serve HTTPS with (read again on SIGHUP, with the key and client CAs); none: cleartext")
	cmd.Flags().StringVar(&tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	cmd.Flags().StringVar(&tlsClientCA, "tls-client-ca", "", "PEM CA certificates; clients must present a certificate they signed (mTLS), matched to keys file entries by client_cert")
	cmd.Flags().StringVar(&dedupeURL, "dedupe-redis-url", "", "Redis (7.0 or later) that remembers published event ids, so that a retry is not published twice; none: every event is published")
	cmd.Flags().DurationVar(&dedupeWindow, "dedupe-window", 24*time.Hour, "how long event ids are remembered")
	cmd.Flags().StringVar(&keysFile, "keys", "", "file of API keys producers must present (reloaded on SIGHUP, as are the TLS files; make keys with spate keys new); none: anyone may publish")
	limits.register(cmd.Flags())
	annotateEnv(cmd.Flags())
	return cmd
}

// edgeLimits are the edge's caps and its publish timeout, as flags.
type edgeLimits struct {
	maxBody, maxInflightBytes byteSize
	maxEvents                 int
	maxInflightEvents         int64
	publishTimeout            time.Duration
	given                     func(flag string) bool
}

func (l *edgeLimits) register(fs *pflag.FlagSet) {
	l.maxBody, l.maxInflightBytes, l.given = edge.DefaultMaxBodyBytes, edge.DefaultMaxInflightBytes, fs.Changed
	fs.Var(&l.maxBody, "max-body-bytes", "largest request body taken, and what a gzip one may decompress to; larger ones get 413 (e.g. 512KiB, 4MiB; at most --max-inflight-bytes, less 5 bytes, gRPC's envelope of a message, to which the default is lowered)")
	fs.IntVar(&l.maxEvents, "max-events", edge.DefaultMaxEvents, "most events one request may hold; more get 400 (default lowered to --max-inflight-events)")
	fs.Int64Var(&l.maxInflightEvents, "max-inflight-events", edge.DefaultMaxInflightEvents, "events handed to Kafka and not yet acknowledged, at most; a request that would go over gets 503 with Retry-After")
	fs.Var(&l.maxInflightBytes, "max-inflight-bytes", "bytes of the request bodies being handled, at most, and apart from those of the events handed to Kafka and not yet acknowledged; a request that would go over gets 503 with Retry-After")
	fs.DurationVar(&l.publishTimeout, "publish-timeout", edge.DefaultPublishTimeout, "how long a request waits for Kafka to acknowledge its events; past it, 503 and an unknown outcome (retry with the same ids)")
}

// config returns the edge configuration of the flags. It refuses caps that
// are not positive, and request caps given over the in-flight ones: a
// request that full could never be taken. Request caps left to their
// defaults are lowered to fit instead, and a body cap within 5 bytes of
// the in-flight one is lowered to leave room for gRPC's envelope of a
// message (edge.New).
func (l *edgeLimits) config() (edge.Config, error) {
	switch {
	case l.maxBody <= 0, l.maxInflightBytes <= 0:
		return edge.Config{}, errors.New("--max-body-bytes and --max-inflight-bytes: want a positive size")
	case l.maxEvents <= 0, l.maxInflightEvents <= 0:
		return edge.Config{}, errors.New("--max-events and --max-inflight-events: want a positive number")
	case l.publishTimeout <= 0:
		return edge.Config{}, fmt.Errorf("--publish-timeout %v: want a positive duration", l.publishTimeout)
	case l.given("max-body-bytes") && l.maxBody > l.maxInflightBytes:
		return edge.Config{}, fmt.Errorf("--max-body-bytes (%d bytes) is over --max-inflight-bytes (%d bytes): a body that large could never be taken",
			l.maxBody, l.maxInflightBytes)
	case l.given("max-events") && int64(l.maxEvents) > l.maxInflightEvents:
		return edge.Config{}, fmt.Errorf("--max-events %d is over --max-inflight-events %d: a request that full could never be taken", l.maxEvents, l.maxInflightEvents)
	}
	return edge.Config{MaxBodyBytes: int64(l.maxBody), MaxEvents: l.maxEvents, MaxInflightEvents: l.maxInflightEvents,
		MaxInflightBytes: int64(l.maxInflightBytes), PublishTimeout: l.publishTimeout}, nil
}

// byteSize is a flag of bytes, written as a number with or without a unit:
// 4194304, 4MiB, 4MB (4,000,000).
type byteSize int64

func (b *byteSize) String() string { return humanize.IBytes(uint64(*b)) }

func (b *byteSize) Set(s string) error {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return errors.New("want a size in bytes, such as 4194304, 4MiB or 512KiB")
	}
	if n > math.MaxInt64 {
		return errors.New("too large")
	}
	*b = byteSize(n)
	return nil
}

func (b *byteSize) Type() string { return "size" }

// edgeTLS returns the edge's TLS files from its flags; no certificate:
// nil, cleartext.
func edgeTLS(cert, key, clientCA string) (*edge.TLSFiles, error) {
	switch {
	case cert == "" && (key != "" || clientCA != ""):
		return nil, errors.New("--tls-key and --tls-client-ca need --tls-cert")
	case cert == "":
		return nil, nil
	case key == "":
		return nil, errors.New("--tls-cert needs --tls-key")
	}
	return edge.LoadTLSFiles(cert, key, clientCA)
}

// consumerFlags are the flags of the consumer roles.
type consumerFlags struct {
	roleFlags
	group      string
	startAt    string
	config     string
	stallAfter time.Duration
}

func (c *consumerFlags) register(fs *pflag.FlagSet, defaultGroup, configUsage string) {
	c.roleFlags.register(fs, []string{"127.0.0.1:9092"})
	fs.StringVar(&c.group, "group", defaultGroup, "Kafka consumer group; its offsets are kept in the sink")
	fs.StringVar(&c.startAt, "start-at", "earliest", "where a partition with no stored offset starts: earliest or latest")
	fs.StringVar(&c.config, "config", "", configUsage)
	fs.DurationVar(&c.stallAfter, "stall-after", 30*time.Second, "how long a step (a batch, a dead letter) may go on, failing or slow, before /readyz reports the consumer stalled")
}

// prepare checks the flags, the topics and the admin address, and returns
// the environment, the spate.yaml configuration and the admin listener. It
// runs before the sink is opened: a consumer that cannot start changes
// nothing in it (a projector would record its definitions, and stall the
// projectors running the old ones). It sets the garbage collector's target
// to gcPercent.
func (c *consumerFlags) prepare(ctx context.Context, urlFlag, url string) (*env, spateConfig, net.Listener, error) {
	tuneGC()
	if url == "" {
		return nil, spateConfig{}, nil, fmt.Errorf("--%s is required", urlFlag)
	}
	if c.stallAfter <= 0 {
		return nil, spateConfig{}, nil, fmt.Errorf("--stall-after %s: give a positive duration, such as 30s", c.stallAfter)
	}
	if c.startAt != "earliest" && c.startAt != "latest" {
		return nil, spateConfig{}, nil, fmt.Errorf("--start-at %q: want earliest or latest", c.startAt)
	}
	e, err := c.env()
	if err != nil {
		return nil, spateConfig{}, nil, err
	}
	cfg, err := e.loadConfig(c.config, nil)
	if err != nil {
		return nil, spateConfig{}, nil, err
	}
	if err := e.checkTopics(ctx, e.topic, consumers.DLQTopic(e.topic)); err != nil {
		return nil, spateConfig{}, nil, err
	}
	aln, err := listen("admin-addr", c.adminAddr)
	if err != nil {
		return nil, spateConfig{}, nil, err
	}
	return e, cfg, aln, nil
}

// gcPercent is the garbage collector's target (GOGC) in spate project and
// spate fanout, unless the environment sets one. The consumers allocate for
// every record they read: at Go's default of 100, the collector's work was
// a fifth of the projector's CPU, and at 400 the process used about a third
// less CPU for the same events (BenchmarkConsume), which left Postgres
// more of the machine. The price is a heap that may grow to five times
// what is live rather than twice; GOGC, and GOMEMLIMIT under a container's
// memory limit, set it otherwise. The other commands keep Go's default: the
// edge measured no faster at 400, and its live heap under a stalled broker
// is its in-flight cap; spate dev's holds the embedded broker's records.
const gcPercent = 400

// tuneGC sets the collector's target to gcPercent, unless GOGC is set,
// and returns the target it replaced.
func tuneGC() (prev int) {
	prev = debug.SetGCPercent(gcPercent)
	if _, set := os.LookupEnv("GOGC"); set {
		debug.SetGCPercent(prev)
	}
	return prev
}

// runConsumer runs a consumer group into h with an admin server on aln
// (see prepare), and any companion tasks, until ctx ends.
func runConsumer(ctx context.Context, e *env, f *consumerFlags, aln net.Listener, role, sinkName string, h sink, also ...func(context.Context) error) error {
	grp, err := e.newGroup(role, f.group, f.startAt, f.stallAfter, h)
	if err != nil {
		return err
	}
	e.log.Info("consuming", "role", role, "group", f.group, "topic", e.topic, "admin", aln.Addr().String())
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return grp.Run(ctx) })
	g.Go(func() error {
		return serveHTTP(ctx, aln, adminHandler(e.metrics, []check{{"kafka", grp.Ping}, {sinkName, h.Ping}, {role, grp.Stalled}}), e.log)
	})
	for _, run := range also {
		g.Go(func() error { return run(ctx) })
	}
	return g.Wait()
}

func newProjectCmd() *cobra.Command {
	var f consumerFlags
	var url string
	cmd := &cobra.Command{
		Use:     "project",
		Short:   "Run the projector: Kafka in, Postgres projections out, exactly once",
		Example: `  SPATE_POSTGRES_URL=postgres://spate@db/spate SPATE_KAFKA_BROKERS=kafka:9092 spate project`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, cfg, aln, err := f.prepare(cmd.Context(), "postgres-url", url)
			if err != nil {
				return err
			}
			defer aln.Close()
			p, pool, err := e.newProjector(cmd.Context(), url, f.group, cfg.projections)
			if err != nil {
				return err
			}
			defer pool.Close()
			return runConsumer(cmd.Context(), e, &f, aln, "project", "postgres", p)
		},
	}
	f.register(cmd.Flags(), projection.DefaultGroup, "spate.yaml with the projections to apply (default: event_log alone)")
	cmd.Flags().StringVar(&url, "postgres-url", "", "PostgreSQL connection URL (required)")
	annotateEnv(cmd.Flags())
	return cmd
}

func newFanoutCmd() *cobra.Command {
	var f consumerFlags
	var sf streamFlags
	var url string
	var trimEvery time.Duration
	cmd := &cobra.Command{
		Use:     "fanout",
		Short:   "Run the fan-out: Kafka in, Redis Streams out (one per type, or per routes), exactly once",
		Example: `  SPATE_REDIS_URL=redis://redis:6379/0 SPATE_KAFKA_BROKERS=kafka:9092 spate fanout`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, cfg, aln, err := f.prepare(cmd.Context(), "redis-url", url)
			if err != nil {
				return err
			}
			defer aln.Close()
			fcfg, err := sf.config(f.group, cfg.routes)
			if err != nil {
				return err
			}
			w, rdb, err := e.newFanout(cmd.Context(), url, fcfg)
			if err != nil {
				return err
			}
			defer rdb.Close()
			return runConsumer(cmd.Context(), e, &f, aln, "fanout", "redis", w, func(ctx context.Context) error {
				return w.Trim(ctx, trimEvery)
			})
		},
	}
	f.register(cmd.Flags(), fanout.DefaultGroup, "spate.yaml with the routes (default: one stream per event type)")
	cmd.Flags().StringVar(&url, "redis-url", "", "Redis URL, redis://host:port/db (required)")
	sf.register(cmd.Flags())
	cmd.Flags().DurationVar(&trimEvery, "trim-interval", 30*time.Second, "how often streams are trimmed to their routes' retention")
	annotateEnv(cmd.Flags())
	return cmd
}
