package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"

	"github.com/spate-io/spate/spatetest"
	"github.com/spate-io/spate/throwaway"
)

// spate edge refuses TLS flags that do not go together, unreadable
// certificates, a dedupe window that is not positive and caps that are
// not, or that no request could fit, before it serves anything.
func TestEdgeRefusesBadFlags(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-key", "k.pem"}, "--tls-key and --tls-client-ca need --tls-cert"},
		{[]string{"--tls-client-ca", "ca.pem"}, "--tls-key and --tls-client-ca need --tls-cert"},
		{[]string{"--tls-cert", "c.pem"}, "--tls-cert needs --tls-key"},
		{[]string{"--tls-cert", missing, "--tls-key", missing}, "no such file"},
		{[]string{"--dedupe-redis-url", "redis://127.0.0.1:1/0", "--dedupe-window", "0s"}, "--dedupe-window 0s: want a positive duration"},
		{[]string{"--max-body-bytes", "4 fathoms"}, "want a size in bytes"},
		{[]string{"--max-body-bytes", "0"}, "want a positive size"},
		{[]string{"--max-inflight-events", "-1"}, "want a positive number"},
		{[]string{"--publish-timeout", "0s"}, "--publish-timeout 0s: want a positive duration"},
		{[]string{"--max-body-bytes", "8MiB", "--max-inflight-bytes", "4MiB"}, "--max-body-bytes (8388608 bytes) is over --max-inflight-bytes (4194304 bytes)"},
		{[]string{"--max-body-bytes", "1000001", "--max-inflight-bytes", "1000000"}, "--max-body-bytes (1000001 bytes) is over --max-inflight-bytes (1000000 bytes)"},
		{[]string{"--max-events", "2000", "--max-inflight-events", "1000"}, "--max-events 2000 is over --max-inflight-events 1000"},
	} {
		wantRefused(t, append([]string{"edge", "--edge-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, tc.args...), tc.want)
	}
}

// spate edge takes its caps from its flags: a request of more events than
// --max-events gets 400, a body over --max-body-bytes 413, and a request
// within both 202.
func TestEdgeLimitFlags(t *testing.T) {
	t.Parallel()
	brokers := strings.Join(spatetest.Kafka(t, 1, "spate.events"), ",")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := runSpate(ctx, "edge", "--kafka-brokers", brokers, "--edge-addr", addr, "--admin-addr", "127.0.0.1:0",
			"--max-events", "2", "--max-body-bytes", "2KiB")
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("spate edge: %v", err)
		}
	})
	post := func(n int, pad int) (int, string) {
		var evs []string
		for i := range n {
			evs = append(evs, fmt.Sprintf(`{"specversion":"1.0","id":"o-%d-%d","source":"/t","type":"shop.order.placed.v1","subject":"c","pad":%q,`+
				`"data":{"orderId":"o","customerId":"c","amountCents":"1","currency":"EUR"}}`, n, i, strings.Repeat("x", pad)))
		}
		resp, err := http.Post("http://"+addr+"/v1/events", "application/cloudevents-batch+json", strings.NewReader("["+strings.Join(evs, ",")+"]"))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	spatetest.Eventually(t, 30*time.Second, func() string {
		if code, body := post(2, 0); code != http.StatusAccepted {
			return fmt.Sprintf("2 events: %d %s, want 202", code, body)
		}
		return ""
	})
	if code, body := post(3, 0); code != http.StatusBadRequest || !strings.Contains(body, "at most 2 are taken") {
		t.Errorf("3 events under --max-events 2: %d %s, want 400", code, body)
	}
	if code, body := post(1, 3<<10); code != http.StatusRequestEntityTooLarge {
		t.Errorf("3 KiB under --max-body-bytes 2KiB: %d %s, want 413", code, body)
	}
}

// In-flight caps under the request caps' defaults are taken: the request
// caps left to their defaults are lowered to fit them, and a body cap
// given equal to the in-flight one, to leave room for gRPC's envelope of a
// message (edge.New).
func TestEdgeLimitsDefaultsGiveWay(t *testing.T) {
	for _, args := range [][]string{
		{"--max-inflight-bytes", "1MiB"},
		{"--max-inflight-events", "500"},
		{"--max-inflight-bytes", "64KiB", "--max-inflight-events", "1"},
		{"--max-body-bytes", "64MiB"}, // the in-flight cap's default: lowered for gRPC's envelope
		{"--max-body-bytes", "1MiB", "--max-inflight-bytes", "1MiB"},
	} {
		fs := pflag.NewFlagSet("edge", pflag.ContinueOnError)
		var l edgeLimits
		l.register(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if _, err := l.config(); err != nil {
			t.Errorf("%v: %v, want taken", args, err)
		}
	}
}

// spate fanout refuses the default streams' retention when spate.yaml has
// routes, and a negative one, before it consumes anything.
func TestFanoutStreamRetentionFlags(t *testing.T) {
	routed := filepath.Join(t.TempDir(), "spate.yaml")
	if err := os.WriteFile(routed, []byte("routes:\n  - types: [\"*\"]\n    stream: \"s:{type}\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", routed, "--stream-maxage", "1h"}, "give each route its maxlen or maxage instead"},
		{[]string{"--config", routed, "--stream-maxlen", "10"}, "give each route its maxlen or maxage instead"},
		{[]string{"--stream-maxlen", "-1"}, "want 0 (no limit) or more"},
	} {
		wantRefused(t, append([]string{"fanout", "--redis-url", "redis://127.0.0.1:1/0", "--kafka-brokers", "127.0.0.1:1", "--admin-addr", "127.0.0.1:0"}, tc.args...), tc.want)
	}
}

// The consumers refuse a --stall-after that would report them stalled at
// once, before they connect to anything.
func TestConsumerStallAfterFlag(t *testing.T) {
	for _, args := range [][]string{
		{"project", "--postgres-url", "postgres://127.0.0.1:1/spate", "--stall-after", "0s"},
		{"fanout", "--redis-url", "redis://127.0.0.1:1/0", "--stall-after", "-1s"},
	} {
		wantRefused(t, append(args, "--kafka-brokers", "127.0.0.1:1", "--admin-addr", "127.0.0.1:0"), "--stall-after")
	}
}

// The edge and the consumers refuse to start on a topic Kafka lacks (the
// consumers also need its dead-letter topic), rather than wait for it in
// silence.
func TestRolesRefuseATopicKafkaLacks(t *testing.T) {
	brokers := strings.Join(spatetest.Kafka(t, 1, "only"), ",")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"edge", "--edge-addr", "127.0.0.1:0", "--topic", "nosuch"}, "has no topic nosuch"},
		{[]string{"project", "--postgres-url", spatetest.Postgres(t), "--topic", "nosuch"}, "has no topic nosuch nor nosuch.dlq"},
		{[]string{"fanout", "--redis-url", spatetest.Redis(t), "--topic", "only"}, "has no topic only.dlq"},
	} {
		wantRefused(t, append(tc.args, "--kafka-brokers", brokers, "--admin-addr", "127.0.0.1:0"), tc.want)
	}
}

// The fan-out refuses to start on a Redis that would evict any key: it
// could evict the offsets hash, and events would be added twice.
func TestFanoutRefusesARedisThatEvictsAnyKey(t *testing.T) {
	ctx := context.Background()
	srv := spatetest.OwnRedis(t, throwaway.RedisConfig{}) // its own: the test changes its configuration
	rdb := spatetest.RedisClientOf(t, srv.URL())
	if err := rdb.ConfigSet(ctx, "maxmemory", "512mb").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	brokers := strings.Join(spatetest.Kafka(t, 1, "spate.events", "spate.events.dlq"), ",")
	wantRefused(t, []string{"fanout", "--redis-url", srv.URL(), "--kafka-brokers", brokers, "--admin-addr", "127.0.0.1:0"},
		"maxmemory-policy allkeys-lru")
}

// wantRefused runs spate with args and fails t unless it stops with an
// error containing want.
func wantRefused(t *testing.T, args []string, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // should it run instead of failing
	defer cancel()
	if _, _, err := runSpate(ctx, args...); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("spate %s: error %v, want one containing %q", strings.Join(args, " "), err, want)
	}
}

// A projector that cannot start (its admin address is taken, its
// --start-at is wrong) leaves the database as it was: recording its
// definitions first would stall the projectors running the old ones.
func TestProjectThatCannotStartChangesNothing(t *testing.T) {
	brokers := strings.Join(spatetest.Kafka(t, 1, "spate.events", "spate.events.dlq"), ",")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	url := spatetest.Postgres(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--admin-addr", busy.Addr().String()}, "--admin-addr"},
		{[]string{"--admin-addr", "127.0.0.1:0", "--start-at", "newest"}, "--start-at"},
	} {
		wantRefused(t, append([]string{"project", "--postgres-url", url, "--kafka-brokers", brokers}, tc.args...), tc.want)
	}
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var tables []string
	rows, err := conn.Query(context.Background(), `SELECT tablename FROM pg_tables WHERE schemaname = current_schema()`)
	if err != nil {
		t.Fatal(err)
	}
	if tables, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(tables) > 0 {
		t.Fatalf("after two projectors failed to start, the database holds tables %v, want none", tables)
	}
}
