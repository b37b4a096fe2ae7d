package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// spate edge refuses TLS flags that do not go together, and unreadable
// certificates, before it serves anything.
func TestEdgeTLSFlags(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-key", "k.pem"}, "--tls-key and --tls-client-ca need --tls-cert"},
		{[]string{"--tls-client-ca", "ca.pem"}, "--tls-key and --tls-client-ca need --tls-cert"},
		{[]string{"--tls-cert", "c.pem"}, "--tls-cert needs --tls-key"},
		{[]string{"--tls-cert", missing, "--tls-key", missing}, "no such file"},
	} {
		args := append([]string{"edge", "--edge-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, tc.args...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // should it serve instead of failing
		_, _, err := runSpate(ctx, args...)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spate %s: error %v, want one containing %q", strings.Join(args, " "), err, tc.want)
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
		args := append([]string{"fanout", "--redis-url", "redis://127.0.0.1:1/0", "--kafka-brokers", "127.0.0.1:1", "--admin-addr", "127.0.0.1:0"}, tc.args...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // should it run instead of failing
		_, _, err := runSpate(ctx, args...)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spate %s: error %v, want one containing %q", strings.Join(args, " "), err, tc.want)
		}
	}
}

// The consumers refuse a --stall-after that would report them stalled at
// once, before they connect to anything.
func TestConsumerStallAfterFlag(t *testing.T) {
	for _, args := range [][]string{
		{"project", "--postgres-url", "postgres://127.0.0.1:1/spate", "--stall-after", "0s"},
		{"fanout", "--redis-url", "redis://127.0.0.1:1/0", "--stall-after", "-1s"},
	} {
		args = append(args, "--kafka-brokers", "127.0.0.1:1", "--admin-addr", "127.0.0.1:0")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // should it run instead of failing
		_, _, err := runSpate(ctx, args...)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "--stall-after") {
			t.Errorf("spate %s: error %v, want one about --stall-after", strings.Join(args, " "), err)
		}
	}
}
