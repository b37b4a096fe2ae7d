package edge_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/spate-io/spate/producers/edge"
	"github.com/spate-io/spate/proto/spate/v1/spatev1connect"
)

// Hostile sizes are refused cheaply, without the edge allocating what the
// input claims, and nothing reaches Kafka.
func TestHostileSizesAreRefused(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{}) // the default 4 MiB body cap
	before := f.highWatermark(t)

	// A protobuf PublishRequest whose events field claims 2 GiB.
	claim := protowire.AppendTag(nil, 1, protowire.BytesType)
	claim = protowire.AppendVarint(claim, 2<<30)
	claim = append(claim, "short"...)
	items := "[" + strings.TrimSuffix(strings.Repeat(`{"sku":"s","quantity":1},`, 1_000_000), ",") + "]"

	for _, tc := range []struct {
		name, ct string
		body     []byte
		want     int
	}{
		{"10 MB string", "application/cloudevents+json",
			[]byte(strings.Replace(orderJSON("x", "s"), `"currency":"EUR"`, `"currency":"`+strings.Repeat("E", 10<<20)+`"`, 1)), 413},
		{"1M-element array", "application/cloudevents+json",
			[]byte(strings.Replace(orderJSON("x", "s"), `"currency":"EUR"`, `"currency":"EUR","items":`+items, 1)), 413},
		{"100k-deep nesting in data", "application/cloudevents+json",
			[]byte(strings.Replace(orderJSON("x", "s"), `"currency":"EUR"`, `"currency":`+strings.Repeat("[", 100_000)+strings.Repeat("]", 100_000), 1)), 400},
		{"protobuf length prefix claiming 2 GiB", "application/x-protobuf", claim, 400},
		{"a batch of a million empty events", "application/cloudevents-batch+json",
			[]byte("[" + strings.TrimSuffix(strings.Repeat("{},", 1_000_000), ",") + "]"), 400},
	} {
		code, body := f.post(t, tc.ct, tc.body)
		if code != tc.want {
			t.Errorf("%s: status %d (%.200s), want %d", tc.name, code, body, tc.want)
		}
	}

	// Connect: an envelope whose length prefix claims 2 GiB.
	var env bytes.Buffer
	env.WriteByte(0) // not compressed
	binary.Write(&env, binary.BigEndian, uint32(2<<30))
	env.WriteString("short")
	req, err := http.NewRequest(http.MethodPost, f.url+spatev1connect.IngestServicePublishProcedure, &env)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc-web+proto")
	resp, _ := roundTrip(t, req)
	if status := resp.Header.Get("Grpc-Status"); status == "" || status == "0" {
		t.Errorf("gRPC-Web envelope claiming 2 GiB: grpc-status %q, want an error", status)
	}
	c := spatev1connect.NewIngestServiceClient(http.DefaultClient, f.url)
	huge := protobufRequest(t, "h")
	huge.Events[0].Data = bytes.Repeat([]byte{0}, 5<<20)
	if _, err := c.Publish(context.Background(), connect.NewRequest(huge)); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("Connect request over the cap: %v, want ResourceExhausted", err)
	}

	if after := f.highWatermark(t); after != before {
		t.Fatalf("high watermark moved from %d to %d", before, after)
	}
}

// postAllocating posts body and returns the answer's status and body, and
// the bytes the process allocated meanwhile.
func postAllocating(t *testing.T, url, ct string, body []byte) (int, []byte, uint64) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	resp, err := http.Post(url, ct, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	runtime.ReadMemStats(&after)
	return resp.StatusCode, msg, after.TotalAlloc - before.TotalAlloc
}

// TestTinyEventsAreCountedBeforeDecoding: a body of a million or more empty
// events (two bytes each in protobuf and in a JSON batch, three in Connect
// JSON; each decodes to a few hundred) is refused by counting, before it is decoded, on every path. Not
// parallel: it measures what the process allocates meanwhile.
func TestTinyEventsAreCountedBeforeDecoding(t *testing.T) {
	f := start(t, edge.Config{})
	tinyProto := bytes.Repeat([]byte{0x0a, 0x00}, 2<<20-1)
	tinyJSON := []byte(`{"events":[` + strings.TrimSuffix(strings.Repeat("{},", 1<<20), ",") + `]}`)
	// protojson takes an unknown member twice: so must the count.
	tinyJSONDuplicates := append([]byte(`{"x":0,"x":0,`), tinyJSON[1:]...)
	for _, tc := range []struct {
		name, path, ct string
		body           []byte
	}{
		{"HTTP protobuf", "/v1/events", "application/x-protobuf", tinyProto},
		{"HTTP JSON batch", "/v1/events", "application/cloudevents-batch+json", []byte("[" + strings.TrimSuffix(strings.Repeat("0,", 2<<20-1), ",") + "]")},
		{"Connect proto", spatev1connect.IngestServicePublishProcedure, "application/proto", tinyProto},
		{"Connect JSON", spatev1connect.IngestServicePublishProcedure, "application/json", tinyJSON},
		{"Connect JSON, a member twice", spatev1connect.IngestServicePublishProcedure, "application/json", tinyJSONDuplicates},
	} {
		code, msg, alloc := postAllocating(t, f.url+tc.path, tc.ct, tc.body)
		if code != 400 || !strings.Contains(string(msg), "at most 1000") {
			t.Errorf("%s: %d %.200s, want 400 saying at most 1000 events are taken", tc.name, code, msg)
		}
		// The body is 4 MiB; decoding it would allocate hundreds.
		if alloc > 64<<20 {
			t.Errorf("%s: %d MiB allocated while refusing it, want under 64 MiB: the events were decoded", tc.name, alloc>>20)
		}
	}
}

// TestOversizedEventIsInvalid: an event too large for a Kafka record (here
// by a 1.5 MB extension, within the body cap) is refused as invalid. Sent
// to Kafka it would fail every time, and the edge would answer 503 (retry)
// and turn unready for all producers.
func TestOversizedEventIsInvalid(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{})
	before := f.highWatermark(t)
	big := strings.Replace(orderJSON("big", "s"), `"tenant":"acme"`, `"tenant":"`+strings.Repeat("a", 1_500_000)+`"`, 1)
	code, _, p := f.postAs(t, "", "application/cloudevents+json", big)
	if code != 400 || len(p.Errors) != 1 || !strings.Contains(p.Errors[0].Detail, "at most 900000") {
		t.Errorf("1.5 MB event: %d %+v, want 400 saying at most 900000 bytes fit", code, p)
	}
	if err := f.srv.Ready(context.Background()); err != nil {
		t.Errorf("Ready = %v after an oversized event, want nil", err)
	}
	if after := f.highWatermark(t); after != before {
		t.Fatalf("high watermark moved from %d to %d", before, after)
	}
}

// TestManyExtensionsAreRefusedBeforeDecoding: an event with more than
// MaxExtensions extension attributes is invalid, and one with hundreds of
// thousands (a few bytes each, a map entry of a hundred once decoded) is
// refused on every path before they are decoded. Not parallel: it measures
// what the process allocates meanwhile.
func TestManyExtensionsAreRefusedBeforeDecoding(t *testing.T) {
	f := start(t, edge.Config{})
	before := f.highWatermark(t)
	names := func(n int) []string {
		s := make([]string, n)
		for i := range s {
			s[i] = "x" + strconv.FormatInt(int64(i), 36)
		}
		return s
	}
	jsonEvent := func(n int) string {
		var b strings.Builder
		for _, name := range names(n) {
			b.WriteString(`"` + name + `":"",`)
		}
		return strings.Replace(orderJSON("x", "s"), `"tenant":"acme",`, b.String(), 1)
	}
	protoRequest := func(n int) []byte {
		req := protobufRequest(t, "x")
		req.Events[0].Extensions = map[string]string{}
		for _, name := range names(n) {
			req.Events[0].Extensions[name] = ""
		}
		b, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	const many = 300_000
	manyJSON, manyProto := jsonEvent(many), protoRequest(many)
	for _, tc := range []struct {
		name, path, ct string
		body           []byte
	}{
		{"HTTP JSON, one event", "/v1/events", "application/cloudevents+json", []byte(manyJSON)},
		{"HTTP JSON, a batch", "/v1/events", "application/cloudevents-batch+json", []byte("[" + manyJSON + "]")},
		{"HTTP protobuf", "/v1/events", "application/x-protobuf", manyProto},
		{"Connect proto", spatev1connect.IngestServicePublishProcedure, "application/proto", manyProto},
		{"Connect JSON", spatev1connect.IngestServicePublishProcedure, "application/json",
			[]byte(`{"events":[{"id":"x","extensions":{"` + strings.Join(names(many), `":"","`) + `":""}}]}`)},
	} {
		code, msg, alloc := postAllocating(t, f.url+tc.path, tc.ct, tc.body)
		if code != 400 || !strings.Contains(string(msg), "at most 64 extension attributes") {
			t.Errorf("%s: %d %.300s, want 400 saying at most 64 extension attributes", tc.name, code, msg)
		}
		// Decoding the extensions allocated 66 to 186 MiB.
		if alloc > 32<<20 {
			t.Errorf("%s: %d MiB allocated while refusing it, want under 32 MiB: the extensions were decoded", tc.name, alloc>>20)
		}
	}
	if after := f.highWatermark(t); after != before {
		t.Fatalf("high watermark moved from %d to %d", before, after)
	}

	// The limit itself: 64 are taken, 65 are not.
	if code, body := f.post(t, "application/cloudevents+json", []byte(jsonEvent(edge.MaxExtensions))); code != 202 {
		t.Errorf("%d extensions: %d %.300s, want 202", edge.MaxExtensions, code, body)
	}
	if code, body := f.post(t, "application/x-protobuf", protoRequest(edge.MaxExtensions+1)); code != 400 || !strings.Contains(string(body), "at most 64 extension attributes") {
		t.Errorf("%d extensions: %d %.300s, want 400", edge.MaxExtensions+1, code, body)
	}
}
