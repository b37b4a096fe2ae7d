package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a running Spate",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var o benchOpts
	edgeCmd := &cobra.Command{
		Use:   "edge",
		Short: "Load the edge with shop events and report throughput, latency percentiles and errors",
		Long: `spate bench edge sends shop.order.placed.v1 events to an edge's POST /v1/events
for --duration and reports events/s, requests/s, latency percentiles and
every answer that was not 202.

Closed loop (the default): --connections requests in flight, each sent when
the previous answer arrived. Open loop (--rate N): N requests a second on a
fixed schedule, whatever the answers; latency counts from each request's
scheduled time, so queueing behind a slow edge is measured, not hidden, and
requests due but not sent by the end are reported as overdue.
Each event has a new id, so a dedupe store on the edge does not fold them.

With --admin-url, it also reports the CPU time the edge's process took an
event and a request (process_cpu_seconds_total from the admin server's
/metrics, read before and after), which varies less than rates on a shared
machine. The report always gives the cores spate bench itself used.`,
		Example: `  spate bench edge --connections 64 --duration 15s
  spate bench edge --batch 100 --format protobuf --admin-url http://127.0.0.1:9090
  spate bench edge --rate 20000 --duration 30s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.connections < 1 || o.batch < 1 || o.duration <= 0 || o.rate < 0 {
				return fmt.Errorf("--connections and --batch must be at least 1, --duration positive, --rate not negative")
			}
			if strings.ContainsAny(o.key, "\r\n") {
				return fmt.Errorf("--key: a line break cannot be part of a key")
			}
			if o.format != "json" && o.format != "protobuf" {
				return fmt.Errorf("--format %q: want json or protobuf", o.format)
			}
			for flag, u := range map[string]string{"url": o.url, "admin-url": o.adminURL} {
				if pu, err := url.Parse(u); u != "" && (err != nil || pu.Scheme != "http" && pu.Scheme != "https" || pu.Host == "") {
					return fmt.Errorf("--%s %q: want an http:// or https:// URL, such as http://127.0.0.1:8080", flag, u)
				}
			}
			var edgeCPU0 time.Duration
			if o.adminURL != "" {
				var err error
				if edgeCPU0, err = processCPUAt(cmd.Context(), o.adminURL); err != nil {
					return err
				}
			}
			res, err := runBench(cmd.Context(), o)
			if err != nil {
				return err
			}
			if o.adminURL != "" {
				// Also after a Ctrl-C, which ends the run early.
				edgeCPU1, err := processCPUAt(context.WithoutCancel(cmd.Context()), o.adminURL)
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "spate bench edge: no edge cpu: %v\n", err)
				} else {
					res.edgeCPU, res.edgeCPUKnown = edgeCPU1-edgeCPU0, true
				}
			}
			res.print(cmd.OutOrStdout(), o)
			return nil
		},
	}
	fs := edgeCmd.Flags()
	fs.StringVar(&o.url, "url", "http://127.0.0.1:8080", "the edge's base URL")
	fs.StringVar(&o.key, "key", "", "API key to present, if the edge requires one")
	fs.StringVar(&o.adminURL, "admin-url", "", "the edge's admin server, to report its CPU time an event (spate dev: http://127.0.0.1:9090)")
	annotateEnv(fs)
	// The load is given on the command line only: SPATE_RATE, for one,
	// caps the events a second of spate replay.
	fs.IntVar(&o.connections, "connections", 64, "requests in flight at most (and connections)")
	fs.DurationVar(&o.duration, "duration", 15*time.Second, "how long to send")
	fs.Float64Var(&o.rate, "rate", 0, "requests a second, on a fixed schedule (open loop); 0: closed loop")
	fs.IntVar(&o.batch, "batch", 1, "events a request")
	fs.StringVar(&o.format, "format", "json", "json (CloudEvents JSON) or protobuf (PublishRequest)")
	// So are its TLS files: SPATE_TLS_CERT and SPATE_TLS_KEY are spate
	// edge's own certificate.
	fs.StringVar(&o.tlsCA, "tls-ca", "", "PEM CA certificates to trust for an https:// --url, instead of the system's")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "PEM client certificate (chain) to present, for an edge with --tls-client-ca")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	cmdLineOnly(fs, "connections", "duration", "rate", "batch", "format", "tls-ca", "tls-cert", "tls-key")
	cmd.AddCommand(edgeCmd)
	return cmd
}

type benchOpts struct {
	url         string
	connections int
	duration    time.Duration
	rate        float64
	batch       int
	format      string
	key         string
	adminURL    string
	// The TLS files, for an https:// url.
	tlsCA, tlsCert, tlsKey string
}

// tlsConfig returns the TLS configuration of o's files for a connection to
// target: the system's roots unless --tls-ca, a client certificate if
// --tls-cert.
func (o benchOpts) tlsConfig(target *url.URL) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: target.Hostname(), NextProtos: []string{"http/1.1"}}
	switch {
	case (o.tlsCA != "" || o.tlsCert != "" || o.tlsKey != "") && target.Scheme != "https":
		return nil, fmt.Errorf("--tls-ca, --tls-cert and --tls-key need an https:// --url")
	case (o.tlsCert == "") != (o.tlsKey == ""):
		return nil, fmt.Errorf("--tls-cert and --tls-key go together")
	}
	if o.tlsCA != "" {
		pem, err := os.ReadFile(o.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", o.tlsCA)
		}
	}
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert, --tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

type benchResult struct {
	elapsed      time.Duration
	latencies    []time.Duration // of answered requests
	statuses     map[int]int
	errors       map[string]int // transport errors
	overdue      int            // open loop: requests due before the end, not sent by then
	selfCPU      time.Duration  // this process's CPU time during the run
	edgeCPU      time.Duration  // the edge's, with --admin-url
	edgeCPUKnown bool
}

// runBench runs the load and gathers every answer. After o.duration no
// request is sent, and those in flight are waited for; when parent ends
// (Ctrl-C), those in flight are given up and not counted.
func runBench(parent context.Context, o benchOpts) (*benchResult, error) {
	ctx, cancel := context.WithTimeout(parent, o.duration)
	defer cancel()
	target, err := url.Parse(o.url)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := o.tlsConfig(target)
	if err != nil {
		return nil, err
	}
	nonce := time.Now().UnixNano()

	// Open loop: a scheduler hands out send times; closed loop: none.
	var schedule chan time.Time
	if o.rate > 0 {
		schedule = make(chan time.Time, o.connections)
		go func() {
			defer close(schedule)
			interval := time.Duration(float64(time.Second) / o.rate)
			next := time.Now()
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(next)):
				}
				select {
				case schedule <- next:
				case <-ctx.Done():
					return
				}
				next = next.Add(interval)
			}
		}()
	}

	var mu sync.Mutex
	res := &benchResult{statuses: map[int]int{}, errors: map[string]int{}}
	cpu0, err := ownCPU()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var wg sync.WaitGroup
	tmpls := make([]*benchTemplate, o.connections) // all made before any connection starts
	for w := range tmpls {
		if tmpls[w], err = newBenchTemplate(o, target, fmt.Sprintf("bench-%d-%d-", nonce, w)); err != nil {
			return nil, err
		}
	}
	for _, tmpl := range tmpls {
		wg.Go(func() {
			conn := &benchConn{target: target, tls: tlsCfg, parent: parent}
			defer conn.close()
			var lat []time.Duration
			statuses, errs := map[int]int{}, map[string]int{}
			overdue := 0
			for seq := 0; ; seq++ {
				sent := time.Now()
				if schedule != nil {
					t, ok, late := due(ctx, schedule)
					if !ok {
						break
					}
					if late {
						overdue++
						continue
					}
					sent = t
				} else if ctx.Err() != nil {
					break
				}
				status, err := conn.do(tmpl.request(seq))
				if err != nil && parent.Err() != nil {
					break // interrupted with this request in flight
				}
				if err != nil {
					errs[benchErr(err)]++
					continue
				}
				lat = append(lat, time.Since(sent))
				statuses[status]++
			}
			mu.Lock()
			defer mu.Unlock()
			res.latencies = append(res.latencies, lat...)
			res.overdue += overdue
			for k, v := range statuses {
				res.statuses[k] += v
			}
			for k, v := range errs {
				res.errors[k] += v
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	cpu1, err := ownCPU()
	if err != nil {
		return nil, err
	}
	res.selfCPU = cpu1 - cpu0
	if len(res.latencies) == 0 && len(res.errors) > 0 {
		return nil, fmt.Errorf("no request was answered: %v", res.errors)
	}
	return res, nil
}

// due takes the time the next request of an open loop is due from
// schedule. ok is false once the schedule is closed; late is true for a
// time taken after the run ended (ctx): a request not sent by the end is
// counted, not sent after it.
func due(ctx context.Context, schedule <-chan time.Time) (t time.Time, ok, late bool) {
	t, ok = <-schedule
	return t, ok, ok && ctx.Err() != nil
}

// benchTemplate makes the requests of one connection: a request, head and
// body, made once, whose event ids are rewritten for each request. Encoding
// a request anew each time took over a quarter of a 2-core machine from
// the edge it measured, at 100-event protobuf batches.
type benchTemplate struct {
	req   []byte
	slots []int // where each copy of the request's counter starts
}

// benchSeqDigits is the width of the counter in the events' ids: ids keep
// their length, so the body's length, and a protobuf body's length
// prefixes, stay true.
const benchSeqDigits = 12

// newBenchTemplate returns the template of requests to target whose ids
// start with prefix.
func newBenchTemplate(o benchOpts, target *url.URL, prefix string) (*benchTemplate, error) {
	mark := prefix + strings.Repeat("0", benchSeqDigits)
	ct, body, err := benchBody(o, mark)
	if err != nil {
		return nil, err
	}
	var head bytes.Buffer
	fmt.Fprintf(&head, "POST %s/v1/events HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n",
		strings.TrimSuffix(target.EscapedPath(), "/"), target.Host, ct, len(body))
	if o.key != "" {
		fmt.Fprintf(&head, "Authorization: Bearer %s\r\n", o.key)
	}
	head.WriteString("\r\n")
	t := &benchTemplate{req: append(head.Bytes(), body...)}
	for at := head.Len(); ; {
		i := bytes.Index(t.req[at:], []byte(mark))
		if i < 0 {
			break
		}
		t.slots = append(t.slots, at+i+len(prefix))
		at += i + len(mark)
	}
	return t, nil
}

// request returns the request whose ids hold the counter seq, in place of
// the last one: a connection sends one request at a time.
func (t *benchTemplate) request(seq int) []byte {
	var digits [benchSeqDigits]byte
	for i, n := benchSeqDigits-1, seq; i >= 0; i, n = i-1, n/10 {
		digits[i] = byte('0' + n%10)
	}
	for _, at := range t.slots {
		copy(t.req[at:], digits[:])
	}
	return t.req
}

// benchConn is one connection of the load: HTTP/1.1, one request at a
// time, opened again after an error. net/http's client spent over half a
// core of a 2-core machine at 6,000 requests a second (a reader and a
// writer goroutine a connection, and the hand-offs between them); this
// spends about a third of that, which the edge under test gets instead.
type benchConn struct {
	target *url.URL
	tls    *tls.Config     // for https
	parent context.Context // its end (Ctrl-C) cuts a request short
	c      net.Conn
	br     *bufio.Reader
	stop   func() bool
}

// do sends req and returns the answer's status, once its body is read.
func (b *benchConn) do(req []byte) (int, error) {
	reused := b.c != nil
	status, err := b.try(req)
	if err != nil && reused && b.parent.Err() == nil && closedWhileIdle(err) {
		// The server closed the connection while it was idle (its idle
		// timeout, a proxy's keep-alive): send again on a new one. The
		// ids are the same, so a dedupe store folds a request that did
		// arrive.
		status, err = b.try(req)
	}
	return status, err
}

// try sends req once, on the open connection or a new one.
func (b *benchConn) try(req []byte) (int, error) {
	if b.c == nil {
		if err := b.dial(); err != nil {
			return 0, err
		}
	}
	b.c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := b.parent.Err(); err != nil { // Ctrl-C just now: its deadline was overridden
		b.close()
		return 0, err
	}
	if _, err := b.c.Write(req); err != nil {
		b.close()
		return 0, err
	}
	resp, err := http.ReadResponse(b.br, nil)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if err != nil || resp.Close {
		b.close()
	}
	if err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// closedWhileIdle reports whether err is how a request on a connection the
// server had closed fails: no answer at all.
func closedWhileIdle(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (b *benchConn) dial() error {
	addr := b.target.Host
	if b.target.Port() == "" {
		addr = net.JoinHostPort(b.target.Hostname(), map[string]string{"http": "80", "https": "443"}[b.target.Scheme])
	}
	d := net.Dialer{Timeout: 30 * time.Second}
	c, err := d.DialContext(b.parent, "tcp", addr)
	if err != nil {
		return err
	}
	if b.target.Scheme == "https" {
		c.SetDeadline(time.Now().Add(30 * time.Second)) // for the handshake
		tc := tls.Client(c, b.tls)
		if err := tc.HandshakeContext(b.parent); err != nil {
			c.Close()
			return err
		}
		c = tc
	}
	b.c, b.br = c, bufio.NewReader(c)
	b.stop = context.AfterFunc(b.parent, func() { c.SetDeadline(time.Unix(1, 0)) })
	return nil
}

func (b *benchConn) close() {
	if b.c != nil {
		b.stop()
		b.c.Close()
		b.c = nil
	}
}

// benchErr names a failed request's error for the report, without the
// addresses that would make each connection's its own.
func benchErr(err error) string {
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		return oe.Op + ": " + oe.Err.Error()
	}
	return err.Error()
}

// benchBody returns a request of o.batch shop events.
func benchBody(o benchOpts, id string) (string, []byte, error) {
	if o.format == "protobuf" {
		req := &spatev1.PublishRequest{}
		for i := range o.batch {
			data, err := proto.Marshal(&shopv1.OrderPlaced{OrderId: id, CustomerId: "c-1", AmountCents: 4200, Currency: "EUR",
				Items: []*shopv1.LineItem{{Sku: "tea-1", Quantity: 2, PriceCents: 2100}}})
			if err != nil {
				return "", nil, err
			}
			req.Events = append(req.Events, &spatev1.Event{Id: fmt.Sprint(id, "-", i), Source: "/bench", Type: "shop.order.placed.v1",
				Subject: id, Time: timestamppb.Now(), Data: data})
		}
		b, err := proto.Marshal(req)
		return "application/x-protobuf", b, err
	}
	evs := make([]string, o.batch)
	for i := range evs {
		evs[i] = fmt.Sprintf(`{"specversion":"1.0","id":"%s-%d","source":"/bench","type":"shop.order.placed.v1","subject":%q,`+
			`"data":{"orderId":%q,"customerId":"c-1","amountCents":4200,"currency":"EUR","items":[{"sku":"tea-1","quantity":2,"priceCents":2100}]}}`,
			id, i, id, id)
	}
	if o.batch == 1 {
		return "application/cloudevents+json", []byte(evs[0]), nil
	}
	return "application/cloudevents-batch+json", []byte("[" + strings.Join(evs, ",") + "]"), nil
}

func (r *benchResult) print(w io.Writer, o benchOpts) {
	slices.Sort(r.latencies)
	pct := func(p float64) time.Duration {
		if len(r.latencies) == 0 {
			return 0
		}
		return r.latencies[min(len(r.latencies)-1, int(p*float64(len(r.latencies))))]
	}
	ok := r.statuses[http.StatusAccepted]
	mode := "closed loop"
	if o.rate > 0 {
		mode = fmt.Sprintf("open loop at %g requests/s", o.rate)
	}
	fmt.Fprintf(w, "%s, %d connections, %d events a request (%s), %v\n", mode, o.connections, o.batch, o.format, r.elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "accepted  %d requests, %d events: %.0f events/s, %.0f requests/s\n",
		ok, ok*o.batch, float64(ok*o.batch)/r.elapsed.Seconds(), float64(ok)/r.elapsed.Seconds())
	fmt.Fprintf(w, "latency   p50 %v  p90 %v  p99 %v  max %v\n",
		pct(0.50).Round(time.Microsecond), pct(0.90).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), pct(1).Round(time.Microsecond))
	var other []string
	for code, n := range r.statuses {
		if code != http.StatusAccepted {
			other = append(other, fmt.Sprintf("%d×%d", n, code))
		}
	}
	for e, n := range r.errors {
		other = append(other, fmt.Sprintf("%d× %s", n, e))
	}
	slices.Sort(other)
	if len(other) == 0 {
		other = []string{"none"}
	}
	fmt.Fprintf(w, "not 202   %s\n", strings.Join(other, ", "))
	if r.overdue > 0 {
		fmt.Fprintf(w, "overdue   %d requests were due before the end but not sent: the edge fell behind the rate\n", r.overdue)
	}
	cores := func(d time.Duration) float64 { return d.Seconds() / r.elapsed.Seconds() }
	if r.edgeCPUKnown && ok > 0 {
		fmt.Fprintf(w, "edge cpu  %.1f µs an event, %.1f µs a request, %.2f cores (its whole process: spate dev's holds the broker too)\n",
			float64(r.edgeCPU.Microseconds())/float64(ok*o.batch), float64(r.edgeCPU.Microseconds())/float64(ok), cores(r.edgeCPU))
	}
	fmt.Fprintf(w, "bench cpu %.2f cores\n", cores(r.selfCPU))
}

// ownCPU returns the CPU time this process has used, user and system.
func ownCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// processCPUAt returns process_cpu_seconds_total from adminURL's /metrics.
func processCPUAt(ctx context.Context, adminURL string) (time.Duration, error) {
	url := strings.TrimSuffix(adminURL, "/") + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("--admin-url: %w", err)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, fmt.Errorf("--admin-url: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("--admin-url: GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("--admin-url: GET %s: %w", url, err)
	}
	mf := mfs["process_cpu_seconds_total"]
	if mf == nil || len(mf.GetMetric()) == 0 {
		return 0, fmt.Errorf("--admin-url: %s has no process_cpu_seconds_total", url)
	}
	return time.Duration(mf.GetMetric()[0].GetCounter().GetValue() * float64(time.Second)), nil
}
