// Package edge is Spate's ingestion server. On one port it takes CloudEvents
// over HTTP (POST /v1/events as application/cloudevents+json,
// application/cloudevents-batch+json or a protobuf PublishRequest) and the
// Connect/gRPC/gRPC-Web IngestService, over HTTP/1.1 and cleartext HTTP/2,
// or over TLS (HTTP/1.1 and HTTP/2), optionally requiring client
// certificates (mTLS; see Config.TLS).
//
// Guarantees: every event of a request is validated against its registered
// schema before any of it is published, so a request with one bad event is
// refused whole and nothing of it reaches Kafka; a 202 (or a Connect success)
// is sent only after Kafka acknowledged every event of the request.
package edge

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/proto/spate/v1/spatev1connect"
	"github.com/spate-io/spate/schemas"
)

// grpcEnvelope is the bytes gRPC puts before each message: a flag and
// the length.
const grpcEnvelope = 5

// The caps and the timeout of a Config left zero.
const (
	DefaultMaxBodyBytes      = 4 << 20
	DefaultMaxEvents         = 1000
	DefaultPublishTimeout    = 10 * time.Second
	DefaultMaxInflightEvents = 10000
	DefaultMaxInflightBytes  = 64 << 20
)

// Config tunes a Server. Its zero value works.
type Config struct {
	// Topic events are published to. Zero: producers.DefaultTopic.
	Topic string
	// MaxBodyBytes caps a request body, or the message of a gRPC one;
	// larger ones get 413. Zero: DefaultMaxBodyBytes. It is lowered to
	// MaxInflightBytes less gRPC's 5-byte envelope of a message if over
	// it: a body larger could never be taken, and would be refused 503
	// (retry) for ever.
	MaxBodyBytes int64
	// MaxEvents caps the events of one request; more get 400. Zero:
	// DefaultMaxEvents. It is lowered to MaxInflightEvents if over it,
	// likewise.
	MaxEvents int
	// PublishTimeout bounds the wait for Kafka's acknowledgement; past it
	// the request gets 503 with Retry-After. Zero: DefaultPublishTimeout.
	// A request's events are published for this long whatever becomes of
	// the request: a client that hangs up still gets its events written,
	// and its retry gets their receipts from the dedupe store.
	PublishTimeout time.Duration
	// Logger receives request failures. Zero: no logging.
	Logger *slog.Logger
	// Metrics registers the edge's metrics. Zero: not registered.
	Metrics prometheus.Registerer
	// MaxInflightEvents caps the events handed to Kafka and not yet
	// acknowledged (or failed), timed-out requests' included; a request
	// that would go over is answered 503 with Retry-After at once. Zero:
	// DefaultMaxInflightEvents.
	MaxInflightEvents int64
	// MaxInflightBytes caps the bytes of the request bodies being handled,
	// likewise; and, apart from those, the bytes of the events handed to
	// Kafka and not yet acknowledged, timed-out requests' included. Zero:
	// DefaultMaxInflightBytes.
	MaxInflightBytes int64
	// Dedupe, when set, makes publishing idempotent: an event sent again
	// (same source and id) within its window gets its first receipt back
	// and is not published twice. Zero: every event is published.
	Dedupe *Dedupe
	// Keys, when set, are the API keys and client certificates the edge
	// requires, with what each may publish and how fast. Zero: no
	// authentication (for development), unless TLS requires client
	// certificates. Server.SetKeys replaces them while serving.
	Keys *Keys
	// TLS, when set, makes Serve serve HTTPS (HTTP/1.1 and HTTP/2) with it.
	// When it also requires and verifies client certificates (mTLS; see
	// TLSConfig), a client without a certificate of a trusted CA cannot
	// connect, and a request is authenticated by its certificate unless it
	// presents an API key. Zero: cleartext HTTP/1.1 and h2c.
	TLS *tls.Config
}

// TLSConfig returns the TLS configuration of an edge that serves with the
// certificate and key in the PEM files certFile and keyFile. With
// clientCAFile, a PEM file of CA certificates, clients must present a
// certificate one of them signed: mTLS. TLSFiles does the same and can read
// the files again.
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if clientCAFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(clientCAFile)
	if err != nil {
		return nil, fmt.Errorf("tls: client CAs: %w", err)
	}
	cfg.ClientCAs = x509.NewCertPool()
	if !cfg.ClientCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls: client CAs: %s holds no PEM certificate", clientCAFile)
	}
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	return cfg, nil
}

// TLSFiles is an edge's TLS configuration read from files, as TLSConfig
// reads them, that Reload reads again: certificates rotate without a
// restart. Connections made before a reload keep what they were made with.
type TLSFiles struct {
	certFile, keyFile, clientCAFile string
	cur                             atomic.Pointer[tls.Config]
}

// LoadTLSFiles reads the files; see TLSConfig.
func LoadTLSFiles(certFile, keyFile, clientCAFile string) (*TLSFiles, error) {
	f := &TLSFiles{certFile: certFile, keyFile: keyFile, clientCAFile: clientCAFile}
	return f, f.Reload()
}

// Reload reads the files again. If they do not load, the configuration
// stays as it was.
func (f *TLSFiles) Reload() error {
	cfg, err := TLSConfig(f.certFile, f.keyFile, f.clientCAFile)
	if err != nil {
		return err
	}
	f.cur.Store(cfg)
	return nil
}

// Config returns the configuration to serve with (Config.TLS): each new
// connection gets the files as last loaded.
func (f *TLSFiles) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return f.cur.Load(), nil
		},
	}
}

// Server is the ingestion edge. Create it with New.
type Server struct {
	cl      *kgo.Client
	reg     *schemas.Registry
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	handler http.Handler
	keys    atomic.Pointer[Keys]

	inflightEvents, inflightBytes atomic.Int64
	inflightRecordBytes           atomic.Int64 // the bytes of the events in inflightEvents
	lastFailure                   atomic.Int64 // unix nanoseconds of the last publish Kafka did not acknowledge
	lastShed                      atomic.Int64 // unix nanoseconds of the last request turned away at an in-flight cap

	// settling counts the publishes whose outcomes are not yet recorded.
	// Close waits for it only once no publish can start (closing).
	settling sync.WaitGroup
	// closeMu is held, shared, by each publish from its check of closing
	// until its records are settled or its wait for them ends; Close takes
	// it to set closing, so no record is handed to a client it closes.
	closeMu sync.RWMutex
	closing bool
}

// New returns an edge that validates with reg and publishes with cl.
func New(cl *kgo.Client, reg *schemas.Registry, cfg Config) *Server {
	if cfg.Topic == "" {
		cfg.Topic = producers.DefaultTopic
	}
	cfg.MaxBodyBytes = cmp.Or(cfg.MaxBodyBytes, DefaultMaxBodyBytes)
	cfg.MaxEvents = cmp.Or(cfg.MaxEvents, DefaultMaxEvents)
	cfg.PublishTimeout = cmp.Or(cfg.PublishTimeout, DefaultPublishTimeout)
	cfg.MaxInflightEvents = cmp.Or(cfg.MaxInflightEvents, DefaultMaxInflightEvents)
	cfg.MaxInflightBytes = cmp.Or(cfg.MaxInflightBytes, DefaultMaxInflightBytes)
	cfg.MaxBodyBytes = max(1, min(cfg.MaxBodyBytes, cfg.MaxInflightBytes-grpcEnvelope))
	cfg.MaxEvents = int(min(int64(cfg.MaxEvents), cfg.MaxInflightEvents))
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cl: cl, reg: reg, cfg: cfg, log: log}
	s.metrics = newMetrics(cfg.Metrics, s)
	s.keys.Store(cfg.Keys)

	mux := http.NewServeMux()
	mux.Handle("POST /v1/events", s.metrics.instrument("http", http.HandlerFunc(s.serveEvents)))
	path, h := spatev1connect.NewIngestServiceHandler(ingest{s},
		append(connectCodecs(cfg.MaxEvents), connect.WithReadMaxBytes(int(cfg.MaxBodyBytes)))...)
	mux.Handle(path, s.metrics.instrument("connect", s.authenticateConnect(h)))
	s.handler = withClientCert(mux)
	return s
}

// SetKeys replaces the API keys, e.g. after the keys file changed. Keys that
// stay the same keep the state of their rate limits. Nil turns
// authentication off.
func (s *Server) SetKeys(ks *Keys) {
	if ks != nil {
		ks.carryLimiters(s.keys.Load())
	}
	s.keys.Store(ks)
}

// Ready reports whether the edge should get traffic: not while its
// in-flight caps are full, nor for a second after it turned a request
// away at one (a cap is seldom full to the byte: a request is refused for
// what it would add), nor for 10 s after Kafka failed to acknowledge a
// publish. It is meant for a readiness probe, so that a load balancer sends
// producers elsewhere while this edge sheds load.
func (s *Server) Ready(context.Context) error {
	switch {
	case time.Since(time.Unix(0, s.lastShed.Load())) < time.Second:
		return errors.New("a request was turned away at an in-flight cap in the last second: kafka is slow")
	case s.inflightEvents.Load() >= s.cfg.MaxInflightEvents:
		return errors.New("in-flight events at their cap: kafka is slow")
	case s.inflightBytes.Load() >= s.cfg.MaxInflightBytes:
		return errors.New("in-flight bytes at their cap")
	case s.inflightRecordBytes.Load() >= s.cfg.MaxInflightBytes:
		return errors.New("bytes of in-flight events at their cap: kafka is slow")
	case time.Since(time.Unix(0, s.lastFailure.Load())) < 10*time.Second:
		return errors.New("kafka did not acknowledge a publish in the last 10 s")
	}
	return nil
}

// take adds n to an in-flight count unless that would exceed limit, and
// then notes the time (see Ready) when note: what is in flight turned it
// away. n over the limit alone, which would never fit, is refused without
// a note. What does not fit is never added, even for a moment, which could
// turn away another that fits.
func (s *Server) take(c *atomic.Int64, n, limit int64, note bool) bool {
	if n > limit {
		return false
	}
	for {
		held := c.Load()
		if held+n > limit {
			if note {
				s.lastShed.Store(time.Now().UnixNano())
			}
			return false
		}
		if c.CompareAndSwap(held, held+n) {
			return true
		}
	}
}

// overloaded is the refusal of a request over an in-flight cap.
func overloaded(what string) *refusal {
	return &refusal{status: http.StatusServiceUnavailable, kind: "overloaded", title: "Overloaded",
		detail: what + " waiting for Kafka are at their cap; nothing was published: retry later", retryAfter: time.Second}
}

// Handler returns the edge's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve serves the edge on ln until ctx ends, then shuts down gracefully:
// requests in flight get up to 15 s to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	if s.cfg.TLS != nil {
		protos.SetHTTP2(true)
	} else {
		protos.SetUnencryptedHTTP2(true)
	}
	srv := &http.Server{
		TLSConfig:         s.cfg.TLS,
		Handler:           s.handler,
		Protocols:         protos,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      s.cfg.PublishTimeout + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() {
		if s.cfg.TLS != nil {
			errc <- srv.ServeTLS(ln, "", "")
			return
		}
		errc <- srv.Serve(ln)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve edge on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	if err != nil {
		return fmt.Errorf("shut down edge: %w", err)
	}
	return nil
}

// Close ends the edge's publishing once Serve has returned. It waits, up to
// ctx, for Kafka to settle the records the edge handed to the client; then
// it closes the client, and waits until the dedupe store has recorded
// every outcome (up to ctx, or 5 s more once ctx has ended). A record
// still unsettled when the client closes may be written all the same: its
// event's claim is kept for the dedupe window, so a retry is answered 409
// rather than written twice. Close the dedupe store's Redis client only
// after Close.
func (s *Server) Close(ctx context.Context) error {
	s.closeMu.Lock() // publishes still running end first (PublishTimeout at most)
	s.closing = true
	s.closeMu.Unlock()
	ferr := s.cl.Flush(ctx)
	s.cl.Close()
	if ferr != nil {
		s.log.Warn("closing with records Kafka had not settled: their events' ids stay claimed for the dedupe window", "err", ferr)
	}
	if ctx.Err() != nil { // a little longer, for what the close settled
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
	}
	settled := make(chan struct{})
	go func() {
		s.settling.Wait()
		close(settled)
	}()
	select {
	case <-settled:
		return ferr
	case <-ctx.Done():
		return fmt.Errorf("close edge: outcomes not recorded in the dedupe store: %w", ctx.Err())
	}
}

// validate checks one event and rewrites its payload to the canonical
// protobuf encoding, and its time to now when absent.
func (s *Server) validate(i int, ev *spatev1.Event, now *timestamppb.Timestamp) []FieldError {
	var errs []FieldError
	bad := func(field, detail string) {
		errs = append(errs, FieldError{Index: i, Field: field, Detail: detail})
	}
	for _, e := range cekafka.CheckAttributes(ev) {
		bad(e.Attribute, e.Detail)
	}
	switch {
	case ev.Type == "":
		bad(attrType, "is required")
	default:
		data, err := s.reg.Canonical(ev.Type, ev.Datacontenttype, ev.Data)
		verr, violated := errors.AsType[*schemas.ViolationsError](err)
		switch {
		case violated:
			for _, v := range verr.Violations {
				field, detail := attrData, v.Detail
				if v.Field != "" {
					field += "." + v.Field
				}
				if v.Rule != "" {
					detail = strings.TrimSpace(detail + " (" + v.Rule + ")")
				}
				bad(field, detail)
			}
		case errors.Is(err, schemas.ErrUnknownType):
			bad(attrType, fmt.Sprintf("%q is not a registered event type", ev.Type))
		case errors.Is(err, schemas.ErrContentType):
			bad(attrDataContentType, err.Error())
		case err != nil:
			bad(attrData, fmt.Sprintf("does not match %s: %v", ev.Type, err))
		default:
			ev.Data = data
			ev.Datacontenttype = schemas.ContentTypeProtobuf
		}
	}
	if ev.Time == nil {
		ev.Time = now
	}
	if len(errs) == 0 {
		if n := proto.Size(ev); n > MaxEventBytes {
			bad("", fmt.Sprintf("the event is %d bytes encoded; at most %d fit a Kafka record", n, MaxEventBytes))
		}
	}
	return errs
}

// MaxEventBytes caps an event's encoded size (cekafka's cap): a larger
// event is refused as invalid.
const MaxEventBytes = cekafka.MaxEventBytes

// MaxExtensions caps an event's extension attributes (cekafka's cap). Each
// becomes a Kafka header, and a few bytes of input decode to a map entry of
// a hundred: a request with more is refused before it is decoded.
const MaxExtensions = cekafka.MaxExtensions

// errTooManyExtensions says that an event has more than MaxExtensions.
var errTooManyExtensions = cekafka.ErrTooManyExtensions

// outcomeUnknown reports whether a failed publish may have been written
// all the same: Kafka did not answer in time, or the client gave the
// records up as it closed.
func outcomeUnknown(err error) bool {
	return errors.Is(err, producers.ErrUnknownOutcome) || errors.Is(err, kgo.ErrClientClosed)
}

// publishErr is what a client is told of a failed publish: no broker detail.
func publishErr(err error) error {
	if outcomeUnknown(err) {
		return errors.New("kafka did not acknowledge in time; the events may have been written: retry with the same ids")
	}
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return errors.New("kafka has no such topic; nothing was published: the edge's topic must be created")
	}
	return errors.New("kafka refused or is unavailable; nothing was acknowledged: retry later")
}

// summary joins field errors into one message.
func summary(errs []FieldError) string {
	msg := fmt.Sprintf("%d invalid: ", len(errs))
	for i, e := range errs {
		if i > 0 {
			msg += "; "
		}
		msg += e.Error()
	}
	return msg
}
