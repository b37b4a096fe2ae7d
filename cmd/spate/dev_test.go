package main

import (
	"strings"
	"testing"
)

// The banner says who may publish, and with --keys its curl presents one.
func TestBannerSaysWhoMayPublish(t *testing.T) {
	for _, tc := range []struct {
		keys string
		want []string
	}{
		{"", []string{"no --keys: anyone may publish", "-H 'Content-Type: application/cloudevents+json' \\\n    -d '"}},
		{"keys.yaml", []string{"producers present a key of keys.yaml", "-H 'Authorization: Bearer YOUR_KEY' \\\n    -d '"}},
	} {
		var b strings.Builder
		printBanner(&b, bannerInfo{edge: "127.0.0.1:8080", keys: tc.keys})
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("banner with keys %q lacks %q:\n%s", tc.keys, w, b.String())
			}
		}
	}
}
