package edge_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/spate-io/spate/producers/edge"
	"github.com/spate-io/spate/proto/spate/v1/spatev1connect"
)

const (
	checkoutKey = "spk_checkout_0123456789"
	paymentsKey = "spk_payments_0123456789"
)

// keysFile allows checkout to publish orders from /shop/*, without limit,
// and payments to publish payments, 5 at once and then one per 100 s.
func keysFile(t *testing.T, withCheckout bool) *edge.Keys {
	t.Helper()
	y := fmt.Sprintf(`
keys:
  - name: payments
    sha256: %s
    types: ["shop.payment.*"]
    rate: 0.01
    burst: 5
`, edge.HashKey(paymentsKey))
	if withCheckout {
		y += fmt.Sprintf(`
  - name: checkout
    sha256: %s
    types: ["shop.order.*"]
    sources: ["/shop/*"]
`, edge.HashKey(checkoutKey))
	}
	ks, err := edge.LoadKeys("keys.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func (f *fixture) postAs(t *testing.T, key, ct, body string) (int, http.Header, edge.Problem) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.url+"/v1/events", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := f.httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p edge.Problem
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(buf.Bytes(), &p); err != nil {
			t.Fatalf("status %d with a body that is no problem: %q", resp.StatusCode, buf.String())
		}
	}
	return resp.StatusCode, resp.Header, p
}

func paymentJSON(id string) string {
	return fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"/pay","type":"shop.payment.captured.v1","subject":"o-1",`+
		`"data":{"paymentId":%q,"orderId":"o-1","amountCents":1,"currency":"EUR"}}`, id, id)
}

func orderFrom(id, source string) string {
	return strings.Replace(orderJSON(id, "o-1"), `"source":"/test"`, fmt.Sprintf(`"source":%q`, source), 1)
}

func TestAPIKeysAuthenticateAndAuthorize(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{Keys: keysFile(t, true)})
	const one, batch = "application/cloudevents+json", "application/cloudevents-batch+json"
	before := f.highWatermark(t)

	code, h, p := f.postAs(t, "", one, orderFrom("a", "/shop/web"))
	if code != 401 || h.Get("WWW-Authenticate") == "" || !strings.Contains(p.Detail, "API key is required") {
		t.Errorf("no key: %d %v %q, want 401 with WWW-Authenticate", code, h.Get("WWW-Authenticate"), p.Detail)
	}
	if code, _, p := f.postAs(t, "spk_guess", one, orderFrom("a", "/shop/web")); code != 401 || !strings.Contains(p.Detail, "not valid") {
		t.Errorf("wrong key: %d %q, want 401", code, p.Detail)
	}
	if code, _, p := f.postAs(t, checkoutKey, one, paymentJSON("p")); code != 403 || !hasField(p.Errors, "type") {
		t.Errorf("type not allowed: %d %+v, want 403 naming the type", code, p)
	}
	if code, _, p := f.postAs(t, checkoutKey, one, orderFrom("a", "/elsewhere")); code != 403 || !hasField(p.Errors, "source") {
		t.Errorf("source not allowed: %d %+v, want 403 naming the source", code, p)
	}
	code, _, p = f.postAs(t, checkoutKey, batch, "["+orderFrom("ok", "/shop/web")+","+paymentJSON("no")+"]")
	if code != 403 || len(p.Errors) == 0 || !strings.HasPrefix(p.Detail, "1 of 2 events") {
		t.Errorf("one forbidden event in a batch: %d %+v, want 403 about 1 of 2 events", code, p)
	}
	for _, e := range p.Errors {
		if e.Index != 1 {
			t.Errorf("error %+v is about event %d; only event 1 is forbidden", e, e.Index)
		}
	}
	if after := f.highWatermark(t); after != before {
		t.Fatalf("high watermark moved from %d to %d: unauthorized events reached Kafka", before, after)
	}
	if code, _, p := f.postAs(t, checkoutKey, one, orderFrom("ok", "/shop/web")); code != 202 {
		t.Fatalf("allowed event: %d %+v, want 202", code, p)
	}

	c := spatev1connect.NewIngestServiceClient(http.DefaultClient, f.url)
	req := connect.NewRequest(protobufRequest(t, "c-1"))
	if _, err := c.Publish(context.Background(), req); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("connect without key: %v, want Unauthenticated", err)
	}
	// Authentication comes before Connect reads the body: a body that does
	// not decode, without a key, is Unauthenticated too.
	garbled, err := http.NewRequest(http.MethodPost, f.url+spatev1connect.IngestServicePublishProcedure, strings.NewReader("\xff\xff\xff"))
	if err != nil {
		t.Fatal(err)
	}
	garbled.Header.Set("Content-Type", "application/proto")
	if resp, err := http.DefaultClient.Do(garbled); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("connect without key, body that does not decode: %v %v, want 401 (unauthenticated)", resp, err)
	} else {
		resp.Body.Close()
	}
	req.Header().Set("Authorization", "Bearer "+checkoutKey)
	if _, err := c.Publish(context.Background(), req); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("connect, payment with the checkout key: %v, want PermissionDenied", err)
	}
	req.Header().Set("X-API-Key", paymentsKey)
	req.Header().Del("Authorization")
	if _, err := c.Publish(context.Background(), req); err != nil {
		t.Errorf("connect, payment with the payments key in X-API-Key: %v", err)
	}
}

// The scheme of Authorization is case-insensitive (RFC 9110 11.1).
func TestBearerSchemeInAnyCase(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{Keys: keysFile(t, true)})
	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		req, err := http.NewRequest(http.MethodPost, f.url+"/v1/events", strings.NewReader(orderFrom("b-"+scheme, "/shop/web")))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/cloudevents+json")
		req.Header.Set("Authorization", scheme+" "+checkoutKey)
		resp, err := f.httpClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 202 {
			t.Errorf("Authorization: %s <key>: %d %s (%v), want 202", scheme, resp.StatusCode, body, err)
		}
	}
}

func TestRateLimitIsPerKey(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{Keys: keysFile(t, true)})
	const one, batch = "application/cloudevents+json", "application/cloudevents-batch+json"
	var six []string
	for i := range 6 {
		six = append(six, paymentJSON(fmt.Sprint("six-", i)))
	}
	if code, _, p := f.postAs(t, paymentsKey, batch, "["+strings.Join(six, ",")+"]"); code != 413 {
		t.Errorf("6 events over a burst of 5: %d %+v, want 413", code, p)
	}
	for i := range 4 { // the payments key has one of its 5 tokens left after that
		if code, _, p := f.postAs(t, paymentsKey, one, paymentJSON(fmt.Sprint("p-", i))); code != 202 {
			t.Fatalf("payment %d within the burst: %d %+v, want 202", i, code, p)
		}
	}
	if code, _, p := f.postAs(t, paymentsKey, batch, "["+paymentJSON("p-4")+","+paymentJSON("p-5")+"]"); code != 429 {
		t.Fatalf("2 events with 1 token left: %d %+v, want 429", code, p)
	}
	code, _, p := f.postAs(t, paymentsKey, one, paymentJSON("p-4"))
	if code != 202 {
		t.Fatalf("the last token: %d %+v, want 202 (a refused request must not spend tokens)", code, p)
	}
	code, h, p := f.postAs(t, paymentsKey, one, paymentJSON("p-6"))
	if code != 429 || h.Get("Retry-After") == "" || p.Status != 429 {
		t.Fatalf("over the rate: %d Retry-After %q %+v, want 429 with Retry-After", code, h.Get("Retry-After"), p)
	}
	if code, _, p := f.postAs(t, checkoutKey, one, orderFrom("o", "/shop/web")); code != 202 {
		t.Fatalf("another key while payments is limited: %d %+v, want 202", code, p)
	}
}

// A request refused after its key's tokens were taken, with nothing handed
// to Kafka (409 for an event in flight, 503 at an in-flight cap), gives
// them back.
func TestRefusedRequestsSpendNoTokens(t *testing.T) {
	t.Parallel()
	const one, batch = "application/cloudevents+json", "application/cloudevents-batch+json"
	limited := func(t *testing.T, burst int) *edge.Keys {
		ks, err := edge.LoadKeys("keys.yaml", []byte(fmt.Sprintf(`
keys:
  - name: payments
    sha256: %s
    rate: 0.001
    burst: %d
  - name: checkout
    sha256: %s
`, edge.HashKey(paymentsKey), burst, edge.HashKey(checkoutKey))))
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	stalled := func(t *testing.T, cfg edge.Config) *fixture {
		cl, _ := stalledProducer(t, 1)
		cfg.PublishTimeout = 100 * time.Millisecond
		_, url := serveEdge(t, cl, cfg)
		return &fixture{url: url}
	}
	t.Run("conflict", func(t *testing.T) {
		t.Parallel()
		f := stalled(t, edge.Config{Keys: limited(t, 3), Dedupe: newDedupe(t)})
		if code, _, p := f.postAs(t, paymentsKey, one, paymentJSON("held")); code != 503 {
			t.Fatalf("publish to a stalled broker: %d %+v, want 503", code, p)
		}
		for i := range 3 {
			if code, _, p := f.postAs(t, paymentsKey, one, paymentJSON("held")); code != 409 {
				t.Fatalf("retry %d while held is in flight: %d %+v, want 409", i, code, p)
			}
		}
		// Two of three tokens are left: the batch is admitted, and fails
		// on the stalled broker.
		if code, _, p := f.postAs(t, paymentsKey, batch, "["+paymentJSON("p-1")+","+paymentJSON("p-2")+"]"); code != 503 {
			t.Fatalf("2 events after three 409s: %d %+v, want 503 from Kafka, not 429", code, p)
		}
	})
	t.Run("overloaded", func(t *testing.T) {
		t.Parallel()
		f := stalled(t, edge.Config{Keys: limited(t, 3), MaxInflightEvents: 1})
		if code, _, p := f.postAs(t, checkoutKey, one, orderFrom("o-1", "/shop/web")); code != 503 {
			t.Fatalf("publish to a stalled broker: %d %+v, want 503", code, p)
		}
		for i := range 4 {
			if code, _, p := f.postAs(t, paymentsKey, one, paymentJSON(fmt.Sprint("p-", i))); code != 503 || p.Type != "urn:spate:problem:overloaded" {
				t.Fatalf("payment %d while the in-flight cap is full: %d %+v, want 503 overloaded, not 429", i, code, p)
			}
		}
	})
}

func TestSetKeysReloads(t *testing.T) {
	t.Parallel()
	ks := keysFile(t, true)
	f := start(t, edge.Config{Keys: ks})
	srv := f.srv
	for i := range 5 {
		if code, _, _ := f.postAs(t, paymentsKey, "application/cloudevents+json", paymentJSON(fmt.Sprint("p-", i))); code != 202 {
			t.Fatalf("payment %d: %d, want 202", i, code)
		}
	}
	srv.SetKeys(keysFile(t, false)) // checkout revoked; payments unchanged
	if code, _, _ := f.postAs(t, checkoutKey, "application/cloudevents+json", orderFrom("o", "/shop/web")); code != 401 {
		t.Errorf("revoked key: %d, want 401", code)
	}
	if code, _, _ := f.postAs(t, paymentsKey, "application/cloudevents+json", paymentJSON("p-5")); code != 429 {
		t.Errorf("payments after a reload: %d, want 429: a reload must not refill the bucket", code)
	}
	srv.SetKeys(nil)
	if code, _, _ := f.postAs(t, "", "application/cloudevents+json", orderFrom("o", "/x")); code != 202 {
		t.Errorf("keys off: %d, want 202", code)
	}
}

func TestLoadKeysErrors(t *testing.T) {
	h := edge.HashKey("k")
	for _, tc := range []struct{ yaml, want string }{
		{"keys:\n  - sha256: " + h + "\n", "keys.yaml:2: key : name is required"},
		{"keys:\n  - name: a\n    sha256: abc\n", "keys.yaml:2: key a: sha256 must be 64 hex digits"},
		{"keys:\n  - name: a\n    sha256: " + h + "\n  - name: a\n    sha256: " + h + "\n", "keys.yaml:4: key a: declared twice"},
		{"keys:\n  - name: a\n    sha256: " + h + "\n    rate: -1\n", "must not be negative"},
		{"keys:\n  - name: a\n    sha256: " + h + "\n    secret: x\n", "keys.yaml:4: unknown key \"secret\""},
		{"keys:\n  - name: a\n    types: [\"*\"]\n", "keys.yaml:2: key a: give sha256 (the hash of an API key), client_cert (the name of a client certificate), or both"},
		{"keys:\n  - name: a\n    client_cert: x\n  - name: b\n    client_cert: x\n", "keys.yaml:4: key b: client_cert \"x\" is another key's too"},
		{"keys:\n  - name: a\n    sha256: " + h + "\n  - name: b\n    sha256: sha256:" + h + "\n", "keys.yaml:4: key b: sha256 is another key's too"},
		{"keys:\n  - name: a\n    sha256: " + h + "\n    types: []\n", "keys.yaml:2: key a: types and sources may not be empty lists"},
		{"keys:\n  - name: a\n    sha256: " + h + "\n    sources: []\n", "keys.yaml:2: key a: types and sources may not be empty lists"},
	} {
		if _, err := edge.LoadKeys("keys.yaml", []byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LoadKeys(%q) = %v, want an error containing %q", tc.yaml, err, tc.want)
		}
	}
}

func TestKeyPatternsCrossSlashes(t *testing.T) {
	t.Parallel()
	ks, err := edge.LoadKeys("keys.yaml", []byte(fmt.Sprintf(`
keys:
  - name: any
    sha256: %s
    types: ["*"]
    sources: ["*"]
  - name: shop
    sha256: %s
    types: ["shop.*.v1"]
    sources: ["/shop/*/web"]
`, edge.HashKey(checkoutKey), edge.HashKey(paymentsKey))))
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, edge.Config{Keys: ks})
	for _, tc := range []struct {
		key, source string
		want        int
	}{
		{checkoutKey, "/shop/checkout/web", 202},
		{checkoutKey, "urn:x", 202},
		{paymentsKey, "/shop/eu/checkout/web", 202},
		{paymentsKey, "/shop/web", 403},
		{paymentsKey, "/shop/eu/web/x", 403},
	} {
		if code, _, p := f.postAs(t, tc.key, "application/cloudevents+json", orderFrom("e", tc.source)); code != tc.want {
			t.Errorf("source %q: %d %+v, want %d", tc.source, code, p, tc.want)
		}
	}
}

// TestRefusalsReadTheBody: a request refused before its body is read (401,
// 415) has the body read and dropped, up to the body cap, before the
// answer, as other refusals do: the connection stays open for the client's
// next request, and a client still sending does not meet a reset instead
// of the answer. net/http alone reads at most 256 KiB of it. A client that
// waits for 100 Continue before sending the body is not asked for it: it
// gets the answer at once.
func TestRefusalsReadTheBody(t *testing.T) {
	t.Parallel()
	f := start(t, edge.Config{Keys: keysFile(t, true)})
	body := strings.Repeat("x", 600<<10)
	for _, tc := range []struct {
		name, path, key, ct string
		want                int
	}{
		{"no key", "/v1/events", "", "application/cloudevents+json", http.StatusUnauthorized},
		{"a wrong key", "/v1/events", "spk_nobody_0123456789", "application/cloudevents+json", http.StatusUnauthorized},
		{"an unsupported media type", "/v1/events", checkoutKey, "text/plain", http.StatusUnsupportedMediaType},
		{"no key, over Connect", spatev1connect.IngestServicePublishProcedure, "", "application/proto", http.StatusUnauthorized},
	} {
		req, err := http.NewRequest(http.MethodPost, f.url+tc.path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", tc.ct)
		if tc.key != "" {
			req.Header.Set("Authorization", "Bearer "+tc.key)
		}
		resp, err := f.httpClient().Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want || resp.Close {
			t.Errorf("%s: %d, closing the connection %v; want %d on a connection kept open", tc.name, resp.StatusCode, resp.Close, tc.want)
		}

		c, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		head := "POST " + tc.path + " HTTP/1.1\r\nHost: edge\r\nContent-Type: " + tc.ct + "\r\nContent-Length: 3000000\r\nExpect: 100-continue\r\n"
		if tc.key != "" {
			head += "Authorization: Bearer " + tc.key + "\r\n"
		}
		if _, err := io.WriteString(c, head+"\r\n"); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Minute)) // the answer comes at once; a body asked for never comes
		line, err := bufio.NewReader(c).ReadString('\n')
		if want := fmt.Sprintf("HTTP/1.1 %d ", tc.want); !strings.HasPrefix(line, want) {
			t.Errorf("%s, waiting for 100 Continue: the first line is %q (%v), want %s at once", tc.name, line, err, want)
		}
	}
}
