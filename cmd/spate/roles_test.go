package main

import (
	"context"
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
