package edge

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/producers"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// Headers the edge adds to every record, besides the event's ce_* ones. A
// producer cannot set them: its attributes only ever become ce_* headers.
const (
	// HeaderPrincipal names the API key or client certificate that published
	// the event.
	HeaderPrincipal = "spate_principal"
	// HeaderReceivedAt is when the edge received the event, RFC 3339.
	HeaderReceivedAt = "spate_received_at"
)

// refusal is a request the edge turns down, with what the client is told.
type refusal struct {
	status              int
	kind, title, detail string
	errs                []FieldError
	retryAfter          time.Duration
}

func (r *refusal) Error() string {
	if len(r.errs) > 0 {
		return r.detail + ": " + summary(r.errs)
	}
	return r.detail
}

// authenticate returns the key a request presents, by its API key or else
// by the client certificate its connection verified (ctx carries it):
//   - without keys, nil, or with a client certificate a key named after it
//     that may publish anything;
//   - with keys, the one matching, or a 401 refusal when none does.
func (s *Server) authenticate(ctx context.Context, h http.Header) (*apiKey, error) {
	ks := s.keys.Load()
	cert, _ := ctx.Value(clientCertKey{}).(*x509.Certificate)
	unauthenticated := func(detail string) (*apiKey, error) {
		return nil, &refusal{status: http.StatusUnauthorized, kind: "unauthenticated", title: "Unauthenticated", detail: detail}
	}
	tok := token(h)
	switch {
	case ks == nil && cert != nil:
		return &apiKey{name: certName(cert)}, nil
	case ks == nil:
		return nil, nil
	case tok != "":
		if k := ks.find(tok); k != nil {
			return k, nil
		}
		return unauthenticated("the API key is not valid")
	case cert != nil:
		k, err := ks.findCert(cert)
		if err != nil {
			return unauthenticated(err.Error())
		}
		return k, nil
	}
	return unauthenticated("an API key is required: Authorization: Bearer KEY")
}

// clientCertKey is the context key of the client certificate a request's
// TLS connection verified.
type clientCertKey struct{}

// withClientCert puts the client certificate a request's connection
// verified, if any, in its context, where Connect handlers find it too.
func withClientCert(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
			if c := r.TLS.VerifiedChains[0][0]; certName(c) != "" {
				r = r.WithContext(context.WithValue(r.Context(), clientCertKey{}, c))
			}
		}
		next.ServeHTTP(w, r)
	})
}

// alsoInvalid adds to errs, what reading events from JSON found wrong, what
// validating them finds in the fields errs leaves alone, so that a refusal
// names every error of the request and not only the first kind; in the
// order of the events.
func (s *Server) alsoInvalid(evs []*spatev1.Event, errs []FieldError) []FieldError {
	now := timestamppb.Now()
	for i, ev := range evs {
		if ev == nil { // not read at all: errs says why
			continue
		}
		for _, e := range s.validate(i, ev, now) {
			known := slices.ContainsFunc(errs, func(k FieldError) bool {
				return k.Index == i && (covers(k.Field, e.Field) || payloadField(k.Field) && payloadField(e.Field))
			})
			if !known {
				errs = append(errs, e)
			}
		}
	}
	errs = append(errs, repeated(evs)...)
	slices.SortStableFunc(errs, func(a, b FieldError) int { return cmp.Compare(a.Index, b.Index) })
	return errs
}

// repeated returns an error for each event of evs with the source and id of
// an earlier one: CloudEvents takes the pair to name one event, so a
// request that holds it twice is wrong, and a retry would be too.
func repeated(evs []*spatev1.Event) []FieldError {
	if len(evs) < 2 {
		return nil
	}
	var errs []FieldError
	first := make(map[[2]string]int, len(evs))
	for i, ev := range evs {
		if ev == nil || ev.Id == "" {
			continue
		}
		k := [2]string{ev.Source, ev.Id}
		if j, ok := first[k]; ok {
			errs = append(errs, FieldError{Index: i, Field: attrID, Detail: fmt.Sprintf("is the id of event %d too, with the same source: a request holds each event once", j)})
		} else {
			first[k] = i
		}
	}
	return errs
}

// covers reports whether an error in field reported also says what is
// wrong with field: the same, or a part of it ("data" covers "data.x").
func covers(reported, field string) bool {
	return reported == field || strings.HasPrefix(field, reported+".")
}

// payloadField reports whether field is about the payload: once reading
// one of those failed, the payload validation sees is not the client's.
func payloadField(field string) bool {
	return covers(attrData, field) || field == attrDataBase64 || field == attrDataContentType
}

// publish checks the request's size, validates every event, checks what
// key may publish and how fast, and only when all of that passes publishes
// the events. A request turned down gets a *refusal, and so does a publish
// that failed (503).
func (s *Server) publish(ctx context.Context, key *apiKey, evs []*spatev1.Event) ([]*spatev1.Receipt, error) {
	refuse := func(r *refusal, result string) ([]*spatev1.Receipt, error) {
		s.metrics.events.WithLabelValues(result).Add(float64(len(evs)))
		return nil, r
	}
	switch {
	case len(evs) == 0:
		return refuse(&refusal{status: http.StatusBadRequest, kind: "invalid-events", title: "Invalid events",
			detail: "the request holds no events"}, "invalid")
	case len(evs) > s.cfg.MaxEvents:
		return refuse(&refusal{status: http.StatusBadRequest, kind: "invalid-events", title: "Invalid events",
			detail: fmt.Sprintf("the request holds %d events; at most %d are taken", len(evs), s.cfg.MaxEvents)}, "invalid")
	}
	var errs []FieldError
	now := timestamppb.Now()
	for i, ev := range evs {
		errs = append(errs, s.validate(i, ev, now)...)
	}
	if rep := repeated(evs); rep != nil {
		errs = append(errs, rep...)
		slices.SortStableFunc(errs, func(a, b FieldError) int { return cmp.Compare(a.Index, b.Index) })
	}
	if len(errs) > 0 {
		return refuse(&refusal{status: http.StatusBadRequest, kind: "invalid-events", title: "Invalid events",
			detail: fmt.Sprintf("%d of %d events are invalid; none was published", countEvents(errs), len(evs)), errs: errs}, "invalid")
	}
	if key != nil {
		types, sources := make([]string, len(evs)), make([]string, len(evs))
		for i, ev := range evs {
			types[i], sources[i] = ev.Type, ev.Source
		}
		if errs := key.authorize(types, sources); len(errs) > 0 {
			return refuse(&refusal{status: http.StatusForbidden, kind: "forbidden", title: "Forbidden",
				detail: fmt.Sprintf("%d of %d events are not allowed for this key; none was published", countEvents(errs), len(evs)), errs: errs}, "forbidden")
		}
		if key.limiter != nil && len(evs) > key.burst {
			return refuse(&refusal{status: http.StatusRequestEntityTooLarge, kind: "over-burst", title: "Request over the key's burst",
				detail: fmt.Sprintf("%d events exceed this key's burst of %d; send smaller requests", len(evs), key.burst)}, "rate_limited")
		}
	}
	// From here until its records are settled or given up on, the edge
	// does not close under the request (Server.Close).
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closing {
		return refuse(&refusal{status: http.StatusServiceUnavailable, kind: "stopping", title: "Edge stopping",
			detail: "this edge is stopping; nothing was published: retry, another edge takes it", retryAfter: time.Second}, "failed")
	}
	// Events published before (within the dedupe window) are answered
	// with their first receipt; only the others go to Kafka.
	var prior []*spatev1.Receipt
	var token string
	if d := s.cfg.Dedupe; d != nil {
		var busy bool
		var err error
		if token, prior, busy, err = d.claim(ctx, scope{s.cfg.Topic, key.principal()}, evs); err != nil {
			s.log.WarnContext(ctx, "dedupe", "err", err)
			return refuse(&refusal{status: http.StatusServiceUnavailable, kind: "dedupe-unavailable", title: "Dedupe store unavailable",
				detail: "the store that keeps retries from being published twice does not answer; nothing was published", retryAfter: time.Second}, "failed")
		}
		if busy {
			return refuse(&refusal{status: http.StatusConflict, kind: "in-progress", title: "Publish in progress",
				detail: "an event of this request is being published by another request; nothing was published: retry to get its receipt", retryAfter: time.Second}, "conflict")
		}
	}
	fresh := evs
	if prior != nil {
		fresh = nil
		for i, ev := range evs {
			if prior[i] == nil {
				fresh = append(fresh, ev)
			}
		}
		s.metrics.events.WithLabelValues("duplicate").Add(float64(len(evs) - len(fresh)))
	}
	settled := func(rs []*spatev1.Receipt) {
		d := s.cfg.Dedupe
		if d == nil {
			return
		}
		// Record what Kafka settled, whenever that is: a claim whose
		// record may still be written must not be released early.
		by, all := scope{s.cfg.Topic, key.principal()}, spread(rs, prior)
		if allWritten(rs) {
			// Receipts alone are recorded while the answer goes out
			// (Close waits for them); claims to release are released
			// before, so that a retry publishes at once. settled runs
			// in publishFresh's callback, which s.settling counts: it
			// is above zero when settleAsync adds to it, as a
			// WaitGroup that Close may be waiting on requires.
			d.settleAsync(by, token, evs, prior, all, &s.settling, func(err error) { s.log.Warn("dedupe", "err", err) })
			return
		}
		if err := d.settle(by, token, evs, prior, all); err != nil {
			s.log.Warn("dedupe", "err", err)
		}
	}
	if len(fresh) == 0 {
		settled(nil)
		return prior, nil
	}
	// The caps, then the key's rate, are checked last: a request refused
	// before spends none of the key's tokens. Refused here, it gives back
	// its claims (settled without receipts) and what it took of the caps;
	// its duplicates were counted as such.
	refuseFresh := func(r *refusal, result string) ([]*spatev1.Receipt, error) {
		s.metrics.events.WithLabelValues(result).Add(float64(len(fresh)))
		return nil, r
	}
	// validate sized every event as it is now (MaxEventBytes): reuse that.
	n, size := int64(len(fresh)), int64(0)
	for _, ev := range fresh {
		size += int64(cachedSize.Size(ev))
	}
	if size > s.cfg.MaxInflightBytes { // its body fitted, but records take more: Time was added, say
		settled(nil)
		return refuseFresh(&refusal{status: http.StatusRequestEntityTooLarge, kind: "too-large", title: "Request too large",
			detail: fmt.Sprintf("the events take %d bytes as records, more than the %d this edge holds in flight; send fewer", size, s.cfg.MaxInflightBytes)}, "invalid")
	}
	if !s.take(&s.inflightEvents, n, s.cfg.MaxInflightEvents, true) {
		settled(nil)
		return refuseFresh(overloaded("events"), "overloaded")
	}
	if !s.take(&s.inflightRecordBytes, size, s.cfg.MaxInflightBytes, true) {
		s.inflightEvents.Add(-n)
		settled(nil)
		return refuseFresh(overloaded("bytes of events"), "overloaded")
	}
	if key != nil {
		if wait, ok := key.admit(len(fresh), time.Now()); !ok {
			s.inflightEvents.Add(-n)
			s.inflightRecordBytes.Add(-size)
			settled(nil)
			return refuseFresh(&refusal{status: http.StatusTooManyRequests, kind: "rate-limited", title: "Rate limited",
				detail: fmt.Sprintf("this key may publish %g events a second; retry later", key.rate), retryAfter: wait}, "rate_limited")
		}
	}
	rs, err := s.publishFresh(ctx, key, fresh, n, size, settled)
	if err != nil {
		return nil, err
	}
	return merge(prior, rs), nil
}

// allWritten reports whether rs holds a receipt of a written record for
// every event, and at least one.
func allWritten(rs []*spatev1.Receipt) bool {
	for _, r := range rs {
		if r == nil || r == unknownOutcome {
			return false
		}
	}
	return len(rs) > 0
}

// unknownOutcome stands, among the receipts settled is given, for an event
// whose record the client gave up on when it closed: Kafka may have written
// it.
var unknownOutcome = &spatev1.Receipt{}

// publishFresh publishes events no earlier request published, n of them,
// size bytes, which the caller took from the in-flight caps: they are given
// back once Kafka settled the events, and then settled is called with their
// receipts (nil where not written, unknownOutcome where it is not known).
func (s *Server) publishFresh(ctx context.Context, key *apiKey, evs []*spatev1.Event, n, size int64, settled func([]*spatev1.Receipt)) ([]*spatev1.Receipt, error) {
	name := ""
	headers := []kgo.RecordHeader{{Key: HeaderReceivedAt, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))}}
	if key != nil {
		name = key.name
		headers = append(headers, kgo.RecordHeader{Key: HeaderPrincipal, Value: []byte(key.name)})
	}
	// The records' context is not the request's: franz-go fails every
	// record buffered for a partition when the first one's context ends,
	// so a client hanging up, or its own short deadline, would fail other
	// requests' events. Every publish gets the same PublishTimeout instead.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.PublishTimeout)
	defer cancel()
	// The events stay in flight until Kafka settles each, even past a
	// timeout: what the client still holds counts against the caps.
	s.settling.Add(1)
	rs, err := producers.PublishTracked(ctx, s.cl, s.cfg.Topic, evs, func(rs []*spatev1.Receipt, errs []error) {
		defer s.settling.Done()
		s.inflightEvents.Add(-n)
		s.inflightRecordBytes.Add(-size)
		for i, err := range errs {
			if errors.Is(err, kgo.ErrClientClosed) {
				rs[i] = unknownOutcome
			}
		}
		settled(rs)
	}, headers...)
	if errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) {
		// The event, not Kafka, is at fault (a broker with a lower limit
		// than MaxEventBytes): the edge stays ready.
		s.metrics.events.WithLabelValues("invalid").Add(float64(len(evs)))
		return nil, &refusal{status: http.StatusRequestEntityTooLarge, kind: "event-too-large", title: "Event too large",
			detail: "Kafka refused an event of this request as too large; the others may have been written: send them again, with the same ids, without it"}
	}
	if err != nil {
		s.lastFailure.Store(time.Now().UnixNano())
		s.metrics.events.WithLabelValues("failed").Add(float64(len(evs)))
		s.log.WarnContext(ctx, "publish", "events", len(evs), "key", name, "err", err)
		kind, title := "kafka-unavailable", "Kafka unavailable"
		if outcomeUnknown(err) {
			kind, title = "outcome-unknown", "Outcome unknown"
		}
		return nil, &refusal{status: http.StatusServiceUnavailable, kind: kind, title: title,
			detail: publishErr(err).Error(), retryAfter: time.Second}
	}
	s.metrics.events.WithLabelValues("published").Add(float64(len(evs)))
	return rs, nil
}

var cachedSize = proto.MarshalOptions{UseCachedSize: true}

// spread places the receipts of the fresh events (in order) at the
// positions prior leaves empty.
func spread(fresh, prior []*spatev1.Receipt) []*spatev1.Receipt {
	if prior == nil {
		return fresh
	}
	out := make([]*spatev1.Receipt, len(prior))
	j := 0
	for i := range prior {
		if prior[i] == nil {
			if fresh != nil {
				out[i] = fresh[j]
			}
			j++
		}
	}
	return out
}

// merge returns the receipts of a request: earlier ones where prior has
// them, the fresh ones in order elsewhere.
func merge(prior, fresh []*spatev1.Receipt) []*spatev1.Receipt {
	if prior == nil {
		return fresh
	}
	out := spread(fresh, prior)
	for i, r := range prior {
		if r != nil {
			out[i] = r
		}
	}
	return out
}

// countEvents counts the distinct events that field errors are about.
func countEvents(errs []FieldError) int {
	seen := map[int]bool{}
	for _, e := range errs {
		seen[e.Index] = true
	}
	return len(seen)
}

// retryAfter renders a wait as Retry-After seconds, rounded up.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(int(math.Ceil(d.Seconds())))
}

// ingest implements the Connect IngestService.
type ingest struct{ s *Server }

// connectCodes maps the statuses of refusals to Connect codes.
var connectCodes = map[int]connect.Code{
	http.StatusBadRequest:            connect.CodeInvalidArgument,
	http.StatusUnauthorized:          connect.CodeUnauthenticated,
	http.StatusForbidden:             connect.CodePermissionDenied,
	http.StatusConflict:              connect.CodeAborted, // retry to get the receipt
	http.StatusRequestEntityTooLarge: connect.CodeResourceExhausted,
	http.StatusTooManyRequests:       connect.CodeResourceExhausted,
	http.StatusServiceUnavailable:    connect.CodeUnavailable,
}

func (in ingest) Publish(ctx context.Context, req *connect.Request[spatev1.PublishRequest]) (*connect.Response[spatev1.PublishResponse], error) {
	key, _ := ctx.Value(keyKey{}).(*apiKey) // authenticateConnect found it and counted the body's bytes
	// The request holds its message now, not its body: count it as
	// decoded. A body Connect decompressed was charged what it may
	// decompress to (the body cap), which would otherwise stay charged
	// until its events are settled. A message that decoded larger than
	// the cap (map entries without values, say) could never be taken.
	if c, ok := ctx.Value(chargeKey{}).(*charge); ok {
		switch size := int64(proto.Size(req.Msg)); {
		case size > in.s.cfg.MaxInflightBytes:
			return nil, connectError(&refusal{status: http.StatusRequestEntityTooLarge, kind: "too-large", title: "Request too large",
				detail: fmt.Sprintf("the request takes %d bytes decoded, more than the %d this edge holds in flight; send fewer events", size, in.s.cfg.MaxInflightBytes)})
		case !c.resize(size):
			return nil, connectError(overloaded("request bytes"))
		}
	}
	rs, err := in.s.publish(ctx, key, req.Msg.GetEvents())
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&spatev1.PublishResponse{Receipts: rs}), nil
}

// connectError is the Connect error of a refusal.
func connectError(err error) *connect.Error {
	var r *refusal
	if !errors.As(err, &r) {
		return connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	code, ok := connectCodes[r.status]
	if !ok {
		code = connect.CodeInternal // never 0, which gRPC reads as OK
	}
	cerr := connect.NewError(code, r)
	if r.retryAfter > 0 {
		cerr.Meta().Set("Retry-After", retryAfter(r.retryAfter))
	}
	return cerr
}
