package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/producers"
	"github.com/spate-io/spate/producers/edge"
	"github.com/spate-io/spate/schemas"
)

// kafkaFlags are the flags of every role that talks to Kafka.
type kafkaFlags struct {
	brokers []string
	topic   string
}

func (k *kafkaFlags) register(fs *pflag.FlagSet, defaultBrokers []string) {
	fs.StringSliceVar(&k.brokers, "kafka-brokers", defaultBrokers, "Kafka seed brokers, comma-separated host:port")
	fs.StringVar(&k.topic, "topic", producers.DefaultTopic, "Kafka topic of events; dead letters go to <topic>.dlq")
}

// env is what every role is built from.
type env struct {
	log      *slog.Logger
	kafkaLog *slog.Logger
	reg      *schemas.Registry
	metrics  *prometheus.Registry
	brokers  []string
	topic    string
}

func (e *env) kafkaOpts(clientID string) []kgo.Opt {
	return []kgo.Opt{
		kgo.SeedBrokers(e.brokers...),
		kgo.ClientID(clientID),
		kgo.WithLogger(kslog.New(e.kafkaLog)),
	}
}

// newEdge returns the edge configured by cfg, with the environment's topic,
// logger and metrics, and its Kafka client, which the caller closes.
func (e *env) newEdge(cfg edge.Config) (*edge.Server, *kgo.Client, error) {
	cl, err := kgo.NewClient(append(e.kafkaOpts("spate-edge"), producers.Opts()...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka client: %w", err)
	}
	cfg.Topic, cfg.Logger, cfg.Metrics = e.topic, e.log.With("role", "edge"), e.metrics
	return edge.New(cl, e.reg, cfg), cl, nil
}

// checkTopics fails when Kafka answers that a topic of topics does not
// exist: a role would otherwise wait for it in silence. A Kafka that does
// not answer is only logged: the roles retry until it does.
func (e *env) checkTopics(ctx context.Context, topics ...string) error {
	cl, err := kgo.NewClient(e.kafkaOpts("spate-check")...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tds, err := kadm.NewClient(cl).ListTopics(ctx, topics...)
	if err != nil {
		e.log.Warn("could not check that the topics exist", "topics", topics, "err", err)
		return nil
	}
	var missing []string
	for _, t := range topics {
		if d, ok := tds[t]; !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kafka (%s) has no topic %s: create it, or give --topic", strings.Join(e.brokers, ","), strings.Join(missing, " nor "))
	}
	return nil
}

// edgeCloseTimeout bounds how long a stopping edge waits for Kafka to
// settle the records it handed over, and for their outcomes to be recorded.
const edgeCloseTimeout = 30 * time.Second

// closeEdge ends srv's publishing (see edge.Server.Close); its dedupe
// store's Redis client is closed after.
func (e *env) closeEdge(srv *edge.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), edgeCloseTimeout)
	defer cancel()
	if err := srv.Close(ctx); err != nil {
		e.log.Warn("close edge", "err", err)
	}
}

// newDedupe returns the edge's dedupe store in the Redis at url, and the
// client to close; no url: none.
func newDedupe(url string, window time.Duration) (*edge.Dedupe, *redis.Client, error) {
	if url == "" {
		return nil, nil, nil
	}
	if window <= 0 {
		return nil, nil, fmt.Errorf("--dedupe-window %v: want a positive duration, how long event ids are remembered", window)
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, nil, fmt.Errorf("dedupe redis url: %w", err)
	}
	rdb := redis.NewClient(opts)
	return edge.NewDedupe(rdb, window, ""), rdb, nil
}

// sink is a consumers.Handler that can say whether its store answers.
type sink interface {
	consumers.Handler
	Ping(ctx context.Context) error
}

// newGroup returns a consumer group feeding h.
func (e *env) newGroup(role, group, startAt string, stallAfter time.Duration, h sink) (*consumers.Group, error) {
	return consumers.New(h, consumers.Config{
		Group:      group,
		Topics:     []string{e.topic},
		StartAt:    startAt,
		StallAfter: stallAfter,
		Logger:     e.log.With("role", role),
		Metrics:    e.metrics,
	}, e.kafkaOpts("spate-"+role)...)
}

// spateConfig is what a spate.yaml file configures.
type spateConfig struct {
	projections []projection.Projection // nil: event_log alone
	routes      []fanout.Route          // nil: one stream per type
}

// loadConfig reads a spate.yaml file; no file: fallback, which may be nil.
func (e *env) loadConfig(file string, fallback []byte) (spateConfig, error) {
	data, name := fallback, "schemas/shop/v1/spate.yaml (built in)"
	if file != "" {
		var err error
		if data, err = os.ReadFile(file); err != nil {
			return spateConfig{}, fmt.Errorf("--config: %w", err)
		}
		name = file
	}
	if data == nil {
		return spateConfig{}, nil
	}
	projs, err := projection.Load(name, data, e.reg)
	if err != nil {
		return spateConfig{}, err
	}
	routes, err := fanout.LoadRoutes(name, data)
	if err != nil {
		return spateConfig{}, err
	}
	return spateConfig{projections: projs, routes: routes}, nil
}

// newProjector connects to Postgres, migrates, and returns the projector
// and its pool, which the caller closes.
func (e *env) newProjector(ctx context.Context, url, group string, projs []projection.Projection) (*projection.Projector, *pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: %w", err)
	}
	p := projection.New(pool, e.reg, projection.Config{Group: group, Projections: projs, Logger: e.log.With("role", "project"), Metrics: e.metrics})
	if err := p.Migrate(ctx); err != nil {
		pool.Close()
		return nil, nil, err
	}
	return p, pool, nil
}

// newFanout returns the fan-out writer of cfg, which logs and counts into
// e, and its Redis client, which the caller closes. It refuses a Redis that
// evicts any key (fanout.ErrEvicts); one that does not answer yet is left
// to the writer's retries.
func (e *env) newFanout(ctx context.Context, url string, cfg fanout.Config) (*fanout.Writer, *redis.Client, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, nil, fmt.Errorf("redis url: %w", err)
	}
	rdb := redis.NewClient(opts)
	cfg.Logger, cfg.Metrics = e.log.With("role", "fanout"), e.metrics
	w, err := fanout.New(rdb, e.reg, cfg)
	if err == nil {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err = w.Ping(pctx); !errors.Is(err, fanout.ErrEvicts) {
			err = nil
		}
		cancel()
	}
	if err != nil {
		rdb.Close()
		return nil, nil, err
	}
	return w, rdb, nil
}

// streamFlags are the flags of the fan-out's streams, of spate fanout and
// spate dev.
type streamFlags struct {
	prefix string
	maxLen int64
	maxAge time.Duration
	given  func(name string) bool
}

func (s *streamFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&s.prefix, "stream-prefix", "spate:", "prefix of the offsets hash, and of the stream keys when no routes are configured (<prefix><event type>)")
	fs.Int64Var(&s.maxLen, "stream-maxlen", 0, "without routes: keep at most this many entries a stream (0: no limit); routes set their own")
	fs.DurationVar(&s.maxAge, "stream-maxage", 24*time.Hour, "without routes: keep entries younger than this (0: however old); routes set their own")
	s.given = fs.Changed
}

// config returns the fan-out's configuration: the routes of spate.yaml, or
// without them one stream per type, trimmed to --stream-maxlen and
// --stream-maxage. Trimming is lag-safe: it never deletes what a consumer
// group still needs.
func (s *streamFlags) config(group string, routes []fanout.Route) (fanout.Config, error) {
	cfg := fanout.Config{Group: group, Prefix: s.prefix, Routes: routes}
	if len(routes) == 0 {
		cfg.DefaultRetention = fanout.Route{MaxLen: s.maxLen, MaxAge: s.maxAge}
	} else if s.given("stream-maxlen") || s.given("stream-maxage") {
		return cfg, errors.New("--stream-maxlen and --stream-maxage (or SPATE_STREAM_MAXLEN and SPATE_STREAM_MAXAGE) are the retention of the streams when spate.yaml has no routes; give each route its maxlen or maxage instead")
	}
	return cfg, nil
}
