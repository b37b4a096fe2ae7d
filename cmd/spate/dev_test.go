package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
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

// The banner shows where its example event goes, as the routes of the
// spate.yaml send it, and says so when it goes nowhere.
func TestBannerShowsTheStreamsOfItsEvent(t *testing.T) {
	var curl strings.Builder
	printBanner(&curl, bannerInfo{edge: "127.0.0.1:8080"})
	for _, attr := range []string{`"id":"` + bannerEvent.Id, `"source":"` + bannerEvent.Source, `"type":"` + bannerEvent.Type, `"subject":"` + bannerEvent.Subject} {
		if !strings.Contains(curl.String(), attr) {
			t.Fatalf("the banner's curl lacks %s of bannerEvent:\n%s", attr, curl.String())
		}
	}
	for _, tc := range []struct {
		name   string
		routes []fanout.Route
		want   []string
	}{
		{"no routes", nil, []string{"XRANGE 'spate:shop.order.placed.v1' - +"}},
		{"routes", []fanout.Route{{Types: []string{"shop.order.*"}, Stream: "orders"}, {Types: []string{"*"}, Stream: "by-source:{source}"}},
			[]string{"XRANGE 'orders' - +", "XRANGE 'by-source:/shop/checkout' - +"}},
		{"a route that needs an extension", []fanout.Route{{Types: []string{"*"}, Stream: "tenant:{ext.tenant}"}},
			[]string{`# stream "tenant:{ext.tenant}": the event has no {ext.tenant}`}},
		{"no route takes it", []fanout.Route{{Types: []string{"shop.payment.*"}, Stream: "payments"}},
			[]string{"# no route of the spate.yaml takes shop.order.placed.v1"}},
	} {
		w, err := fanout.New(nil, schemas.Builtin(), fanout.Config{Routes: tc.routes})
		if err != nil {
			t.Fatal(err)
		}
		streams, none := bannerStreams(w)
		var b strings.Builder
		printBanner(&b, bannerInfo{edge: "127.0.0.1:8080", redis: "redis://r", streams: streams, noStreams: none})
		for _, want := range tc.want {
			if !strings.Contains(b.String(), want) {
				t.Errorf("%s: the banner lacks %q:\n%s", tc.name, want, b.String())
			}
		}
	}
}

// spate dev reads its files, and takes its ports, before it starts
// anything: a mistake is told at once, without a throwaway server started
// and stopped for it.
func TestDevChecksFilesAndPortsFirst(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	same := free.Addr().String() // for both servers: free, then taken by the edge
	free.Close()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--keys", "/nonexistent/file", "--edge-addr", "127.0.0.1:0"}, "/nonexistent/file"},
		{[]string{"--schemas", "/nonexistent/file", "--edge-addr", "127.0.0.1:0"}, "/nonexistent/file"},
		{[]string{"--config", "/nonexistent/file", "--edge-addr", "127.0.0.1:0"}, "/nonexistent/file"},
		{[]string{"--edge-addr", busy.Addr().String()}, "address already in use"},
		{[]string{"--edge-addr", same, "--admin-addr", same}, "give the admin server a port of its own"},
		{[]string{"--edge-addr", "127.0.0.1:0", "--redis-url", "redis://:s3cret@127.0.0.1:1/0"}, "--redis-url redis://:xxxxx@127.0.0.1:1/0: dial tcp 127.0.0.1:1"},
	} {
		_, stderr, err := runSpate(t.Context(), append([]string{"dev", "--kafka-port", "0", "--admin-addr", "127.0.0.1:0"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("dev %v: %v, want an error containing %q", tc.args, err, tc.want)
		}
		if strings.Contains(stderr, "throwaway") {
			t.Errorf("dev %v started a throwaway server first:\n%s", tc.args, stderr)
		}
	}
}

// Ctrl-C while spate dev starts stops it cleanly: a start step cut short
// is not an error.
func TestDevStoppedWhileStartingIsNoError(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // before it starts anything
	_, stderr, err := runSpate(ctx, "dev", "--kafka-port", "0", "--edge-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0")
	if err != nil || !strings.Contains(stderr, "stopped while starting") {
		t.Fatalf("spate dev interrupted while starting: %v\n%s\nwant a clean stop", err, stderr)
	}
}

// The banner shows external servers without their passwords, in URL and
// key=value form alike.
func TestBannerHidesPasswords(t *testing.T) {
	for _, tc := range []struct{ postgres, redis, want string }{
		{"postgres://app:s3cret@db:5432/app", "redis://:s3cret@cache:6379/0", "postgres://app:xxxxx@db:5432/app"},
		{"postgres://app@db/app?password=s3cret&sslmode=require", "redis://default:s3cret@cache:6379/0", "password=xxxxx"},
		{"host=db user=app password='s3 cret' dbname=app", "rediss://u:s3cret@cache:6380", "password=xxxxx dbname=app"},
		{"host=db password=s3cret", "redis://cache:6379/0", "host=db password=xxxxx"},
		{"postgres://app:s3cret@/app?host=/var/run/postgresql", "unix://u:s3cret@/tmp/redis.sock", "postgres://app:xxxxx@/app?host="},
	} {
		var b strings.Builder
		printBanner(&b, bannerInfo{edge: "127.0.0.1:8080", postgres: tc.postgres, redis: tc.redis, streams: []string{"s"}})
		if strings.Contains(b.String(), "s3") || !strings.Contains(b.String(), tc.want) || !strings.Contains(b.String(), "put yours in its place") {
			t.Errorf("banner of %s and %s: want %q, no password, and a word on xxxxx:\n%s", tc.postgres, tc.redis, tc.want, b.String())
		}
	}
}

// On a cluster of its users' (--kafka-brokers), spate dev creates the
// topics it lacks with the cluster's defaults: the sizes of the embedded
// broker (4 partitions, one replica, 6 h and 256 MiB of retention) only
// where given.
func TestDevTopicsOnAnExternalClusterTakeItsDefaults(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		retention string // "": not set on the topic
	}{
		{"defaults", nil, ""},
		{"given", []string{"--partitions", "3", "--kafka-retention", "1h"}, "3600000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(7))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() {
				_, _, err := runSpate(ctx, append([]string{"dev", "--edge-only", "--kafka-brokers", strings.Join(c.ListenAddrs(), ","),
					"--redis-url", spatetest.Redis(t), "--edge-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--topic", "orders"}, tc.args...)...)
				done <- err
			}()
			cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.MetadataMinAge(10*time.Millisecond)) // not a cached answer from before the topics
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			adm := kadm.NewClient(cl)
			var details kadm.TopicDetails
			spatetest.Eventually(t, 30*time.Second, func() string {
				if details, err = adm.ListTopics(t.Context(), "orders", "orders.dlq"); err != nil {
					return err.Error()
				}
				if len(details.TopicsSet()) != 2 {
					return fmt.Sprintf("topics %v, want orders and orders.dlq", details.Names())
				}
				return ""
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("spate dev: %v", err)
			}
			want := 7
			if tc.args != nil {
				want = 3
			}
			for _, d := range details {
				if len(d.Partitions) != want {
					t.Errorf("%s: %d partitions, want %d", d.Topic, len(d.Partitions), want)
				}
			}
			cfgs, err := adm.DescribeTopicConfigs(t.Context(), "orders", "orders.dlq")
			if err != nil {
				t.Fatal(err)
			}
			for _, rc := range cfgs {
				for _, cv := range rc.Configs {
					if cv.Source != kmsg.ConfigSourceDynamicTopicConfig {
						continue
					}
					switch {
					case cv.Key == "retention.ms" && cv.MaybeValue() == tc.retention:
					default:
						t.Errorf("%s: %s=%s set on the topic, want only retention.ms=%q", rc.Name, cv.Key, cv.MaybeValue(), tc.retention)
					}
				}
			}
		})
	}
}
