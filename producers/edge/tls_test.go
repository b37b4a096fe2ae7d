package edge_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/spate-io/spate/producers/edge"
	"github.com/spate-io/spate/proto/spate/v1/spatev1connect"
	"github.com/spate-io/spate/spatetest"
)

// clientWith returns an HTTP/2 client that trusts ca and presents cert
// (none when it is zero).
func clientWith(ca *spatetest.Authority, cert tls.Certificate) *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if cert.Certificate != nil {
		cfg.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}, Timeout: 30 * time.Second}
}

// An edge with mTLS: clients need a certificate of the trusted CA, and are
// authorized by the keys file entry that names it, or by an API key.
func TestMutualTLS(t *testing.T) {
	t.Parallel()
	serverCA, clientCA, strangerCA := spatetest.NewAuthority(t, "server CA"), spatetest.NewAuthority(t, "client CA"), spatetest.NewAuthority(t, "stranger CA")
	server := serverCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "edge"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	serverKey, err := x509.MarshalPKCS8PrivateKey(server.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := edge.TLSConfig(spatetest.WritePEM(t, "edge.pem", "CERTIFICATE", server.Certificate[0]),
		spatetest.WritePEM(t, "edge-key.pem", "PRIVATE KEY", serverKey), spatetest.WritePEM(t, "clients.pem", "CERTIFICATE", clientCA.Cert.Raw))
	if err != nil {
		t.Fatal(err)
	}
	spiffe, _ := url.Parse("spiffe://shop/billing")
	clientAuth := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	billing := clientCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "billing-7f3a"}, URIs: []*url.URL{spiffe}, ExtKeyUsage: clientAuth})
	stranger := clientCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "stranger"}, ExtKeyUsage: clientAuth})
	forged := strangerCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "billing-7f3a"}, URIs: []*url.URL{spiffe}, ExtKeyUsage: clientAuth})

	ks, err := edge.LoadKeys("keys.yaml", fmt.Appendf(nil, `
keys:
  - name: billing
    client_cert: spiffe://shop/billing
    types: ["shop.payment.*"]
  - name: checkout
    sha256: %s
    types: ["shop.order.*"]
  - name: warehouse
    client_cert: warehouse.internal
  - name: depot
    client_cert: depot.internal
  - name: by-common-name
    client_cert: legacy-client
`, edge.HashKey(checkoutKey)))
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, edge.Config{TLS: tlsCfg, Keys: ks})
	as := func(c *http.Client) *fixture { g := *f; g.client = c; return &g }
	const one = "application/cloudevents+json"

	asBilling := as(clientWith(serverCA, billing))
	if code, _, p := asBilling.postAs(t, "", one, paymentJSON("pay-1")); code != 202 {
		t.Fatalf("billing's certificate, a payment: %d %+v, want 202", code, p)
	}
	if code, _, p := asBilling.postAs(t, "", one, orderJSON("o-1", "o-1")); code != 403 || !strings.Contains(p.Errors[0].Detail, "key billing") {
		t.Errorf("billing's certificate, an order: %d %+v, want 403 naming billing", code, p)
	}
	asStranger := as(clientWith(serverCA, stranger))
	if code, _, p := asStranger.postAs(t, "", one, paymentJSON("pay-2")); code != 401 || !strings.Contains(p.Detail, `"stranger"`) {
		t.Errorf("a trusted certificate in no entry: %d %+v, want 401 naming it", code, p)
	}
	if code, _, p := asStranger.postAs(t, checkoutKey, one, orderJSON("o-2", "o-2")); code != 202 {
		t.Errorf("a trusted certificate and an API key: %d %+v, want 202 as checkout", code, p)
	}

	// A certificate goes by its URI names for names with "://", by its DNS
	// names otherwise, and by its common name only when it has neither; and
	// it must match one entry.
	for _, tc := range []struct {
		name   string
		cert   *x509.Certificate
		status int
	}{
		{"a common name that looks like a URI name", &x509.Certificate{Subject: pkix.Name{CommonName: "spiffe://shop/billing"}}, 401},
		{"a common name beside DNS names", &x509.Certificate{Subject: pkix.Name{CommonName: "legacy-client"}, DNSNames: []string{"other.internal"}}, 401},
		{"a common name alone", &x509.Certificate{Subject: pkix.Name{CommonName: "legacy-client"}}, 202},
		{"a DNS name", &x509.Certificate{DNSNames: []string{"warehouse.internal"}}, 202},
		{"names of two entries", &x509.Certificate{DNSNames: []string{"warehouse.internal", "depot.internal"}}, 401},
	} {
		tc.cert.ExtKeyUsage = clientAuth
		g := as(clientWith(serverCA, clientCA.Issue(t, tc.cert)))
		if code, _, p := g.postAs(t, "", one, paymentJSON("pay-"+tc.name)); code != tc.status {
			t.Errorf("%s: %d %+v, want %d", tc.name, code, p, tc.status)
		}
	}

	// Over Connect (HTTP/2), the certificate authenticates too.
	c := spatev1connect.NewIngestServiceClient(asBilling.client, f.url)
	if _, err := c.Publish(context.Background(), connect.NewRequest(protobufRequest(t, "pay-3"))); err != nil {
		t.Errorf("connect with billing's certificate: %v", err)
	}
	resp, err := asBilling.client.Get(f.url + "/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Proto != "HTTP/2.0" {
		t.Errorf("protocol %s, want HTTP/2.0 over TLS", resp.Proto)
	}

	// Without a certificate of the trusted CA, no request gets through.
	before := f.highWatermark(t)
	for name, c := range map[string]*http.Client{
		"no certificate":              clientWith(serverCA, tls.Certificate{}),
		"a certificate of another CA": clientWith(serverCA, forged),
	} {
		resp, err := c.Post(f.url+"/v1/events", one, strings.NewReader(paymentJSON("pay-4")))
		if err == nil {
			resp.Body.Close()
			t.Errorf("%s: status %d, want the TLS handshake refused", name, resp.StatusCode)
		}
	}
	if after := f.highWatermark(t); after != before {
		t.Errorf("high watermark moved from %d to %d: a client without a trusted certificate published", before, after)
	}
}

// Without a keys file, mTLS alone authenticates: any client with a trusted
// certificate may publish, and its events carry the certificate's name.
func TestMutualTLSWithoutKeys(t *testing.T) {
	t.Parallel()
	serverCA, clientCA := spatetest.NewAuthority(t, "server CA"), spatetest.NewAuthority(t, "client CA")
	server := serverCA.Issue(t, &x509.Certificate{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	roots := x509.NewCertPool()
	roots.AddCert(clientCA.Cert)
	f := start(t, edge.Config{TLS: &tls.Config{Certificates: []tls.Certificate{server}, ClientCAs: roots, ClientAuth: tls.RequireAndVerifyClientCert}})
	f.client = clientWith(serverCA, clientCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "warehouse"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}))
	code, body := f.post(t, "application/cloudevents+json", []byte(paymentJSON("pay-1")))
	if code != 202 {
		t.Fatalf("status %d (%s), want 202", code, body)
	}
	var rs receipts
	if err := json.Unmarshal(body, &rs); err != nil || len(rs.Receipts) != 1 {
		t.Fatalf("receipts %s (%v)", body, err)
	}
	r := fetch(t, f, rs.Receipts[0].Partition, rs.Receipts[0].Offset)
	for _, h := range r.Headers {
		if h.Key == edge.HeaderPrincipal {
			if string(h.Value) != "warehouse" {
				t.Errorf("%s = %q, want the certificate's name warehouse", h.Key, h.Value)
			}
			return
		}
	}
	t.Errorf("record headers %v lack %s", r.Headers, edge.HeaderPrincipal)
}

func TestTLSConfigErrors(t *testing.T) {
	ca := spatetest.NewAuthority(t, "CA")
	cert := ca.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "edge"}})
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := spatetest.WritePEM(t, "c.pem", "CERTIFICATE", cert.Certificate[0]), spatetest.WritePEM(t, "k.pem", "PRIVATE KEY", key)
	for name, tc := range map[string]struct{ cert, key, ca, want string }{
		"missing certificate": {filepath.Join(t.TempDir(), "none.pem"), keyFile, "", "no such file"},
		"key for no cert":     {certFile, certFile, "", "tls:"},
		"missing client CAs":  {certFile, keyFile, filepath.Join(t.TempDir(), "none.pem"), "client CAs"},
		"client CAs not PEM":  {certFile, keyFile, keyFile, "holds no PEM certificate"},
	} {
		if _, err := edge.TLSConfig(tc.cert, tc.key, tc.ca); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: TLSConfig error %v, want one containing %q", name, err, tc.want)
		}
	}
}

// TLSFiles.Reload rotates the edge's certificate and client CAs for new
// connections, and keeps them when the files do not load.
func TestTLSFilesReload(t *testing.T) {
	t.Parallel()
	serverCA, oldCA, newCA := spatetest.NewAuthority(t, "server CA"), spatetest.NewAuthority(t, "old client CA"), spatetest.NewAuthority(t, "new client CA")
	serve := func(name string) (cert, key []byte) {
		c := serverCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: name}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		k, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		return c.Certificate[0], k
	}
	cert, key := serve("edge-1")
	certFile, keyFile := spatetest.WritePEM(t, "edge.pem", "CERTIFICATE", cert), spatetest.WritePEM(t, "edge-key.pem", "PRIVATE KEY", key)
	caFile := spatetest.WritePEM(t, "clients.pem", "CERTIFICATE", oldCA.Cert.Raw)
	files, err := edge.LoadTLSFiles(certFile, keyFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, edge.Config{TLS: files.Config()})
	clientAuth := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	fresh := func(ca *spatetest.Authority) *http.Client { // a new connection, so a new handshake, each request
		c := clientWith(serverCA, ca.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "producer"}, ExtKeyUsage: clientAuth}))
		c.Transport.(*http.Transport).DisableKeepAlives = true
		return c
	}
	// served says which server certificate a client with a certificate of
	// ca gets, or the error of its handshake.
	served := func(ca *spatetest.Authority) (string, error) {
		resp, err := fresh(ca).Get(f.url + "/v1/events")
		if err != nil {
			return "", err
		}
		resp.Body.Close()
		if resp.Proto != "HTTP/2.0" {
			return "", fmt.Errorf("protocol %s, want HTTP/2.0", resp.Proto)
		}
		return resp.TLS.PeerCertificates[0].Subject.CommonName, nil
	}
	if name, err := served(oldCA); err != nil || name != "edge-1" {
		t.Fatalf("before the rotation: %q, %v; want edge-1 to serve the old CA's client", name, err)
	}
	if _, err := served(newCA); err == nil {
		t.Fatal("before the rotation: the new CA's client connected")
	}

	cert, key = serve("edge-2")
	writeFile := func(path, typ string, der []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(certFile, "CERTIFICATE", cert)
	writeFile(keyFile, "PRIVATE KEY", key)
	writeFile(caFile, "CERTIFICATE", newCA.Cert.Raw)
	if name, err := served(oldCA); err != nil || name != "edge-1" {
		t.Fatalf("rotated files, not reloaded: %q, %v; want edge-1 still", name, err)
	}
	if err := files.Reload(); err != nil {
		t.Fatal(err)
	}
	if name, err := served(newCA); err != nil || name != "edge-2" {
		t.Fatalf("after the reload: %q, %v; want edge-2 to serve the new CA's client", name, err)
	}
	if _, err := served(oldCA); err == nil {
		t.Fatal("after the reload: the old CA's client connected")
	}

	writeFile(caFile, "PRIVATE KEY", key) // no certificate in it
	if err := files.Reload(); err == nil {
		t.Fatal("Reload of a client CA file without certificates: no error")
	}
	if name, err := served(newCA); err != nil || name != "edge-2" {
		t.Fatalf("after a failed reload: %q, %v; want what was loaded before", name, err)
	}
}
