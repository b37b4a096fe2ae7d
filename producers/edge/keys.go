package edge

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/time/rate"
)

// Keys are the API keys and client certificates an edge accepts and what
// each may publish. Only the SHA-256 of each key is kept; a presented key
// is hashed and compared with every stored hash in constant time.
type Keys struct {
	keys []*apiKey
}

// apiKey is one producer: an API key, a client certificate, or both.
type apiKey struct {
	name    string
	hash    [sha256.Size]byte
	hashed  bool     // hash holds an API key's hash
	cert    string   // a client certificate's name; empty: none
	types   []string // patterns (see wildcard); none: any type
	sources []string // patterns; none: any source
	rate    float64  // events per second; 0: unlimited
	burst   int
	limiter *rate.Limiter
}

// LoadKeys reads a keys file:
//
//	keys:
//	  - name: checkout                  # the principal, in logs and errors
//	    sha256: 9f86d08...              # hex SHA-256 of the key (spate keys new makes both)
//	    types: ["shop.order.*"]         # event types it may publish; default any
//	    sources: ["/shop/*"]            # sources it may publish as; default any
//	    rate: 500                       # events per second; default unlimited
//	    burst: 1000                     # default: rate
//	  - name: billing
//	    client_cert: billing.internal   # mTLS: a client certificate with this DNS
//	                                    # name (a URI name, e.g. spiffe://..., if it
//	                                    # has "://"; the subject CN if it has no SAN)
//
// An entry has sha256, client_cert or both. In types and sources, *
// matches any run of characters, slashes included. Errors name the file
// and line.
func LoadKeys(file string, data []byte) (*Keys, error) {
	var doc struct {
		Keys []yaml.Node `yaml:"keys"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	ks := &Keys{}
	names := map[string]bool{}
	for _, n := range doc.Keys {
		var kc struct {
			Name       string   `yaml:"name"`
			SHA256     string   `yaml:"sha256"`
			ClientCert string   `yaml:"client_cert"`
			Types      []string `yaml:"types"`
			Sources    []string `yaml:"sources"`
			Rate       float64  `yaml:"rate"`
			Burst      int      `yaml:"burst"`
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: key %s: %s", file, n.Line, kc.Name, fmt.Sprintf(format, args...))
		}
		allowed := []string{"name", "sha256", "client_cert", "types", "sources", "rate", "burst"}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if !slices.Contains(allowed, n.Content[i].Value) {
				return nil, fmt.Errorf("%s:%d: unknown key %q; want one of %s", file, n.Content[i].Line, n.Content[i].Value, strings.Join(allowed, ", "))
			}
		}
		if err := n.Decode(&kc); err != nil {
			return nil, bad("%v", err)
		}
		k := &apiKey{name: kc.Name, cert: kc.ClientCert, types: kc.Types, sources: kc.Sources, rate: kc.Rate, burst: kc.Burst}
		h, err := hex.DecodeString(strings.TrimPrefix(kc.SHA256, "sha256:"))
		switch {
		case kc.Name == "":
			return nil, bad("name is required")
		case names[kc.Name]:
			return nil, bad("declared twice")
		case kc.SHA256 == "" && kc.ClientCert == "":
			return nil, bad("give sha256 (the hash of an API key), client_cert (the name of a client certificate), or both")
		case kc.SHA256 != "" && (err != nil || len(h) != sha256.Size):
			return nil, bad("sha256 must be 64 hex digits, the SHA-256 of the key")
		case kc.ClientCert != "" && slices.ContainsFunc(ks.keys, func(o *apiKey) bool { return o.cert == kc.ClientCert }):
			return nil, bad("client_cert %q is another key's too", kc.ClientCert)
		case len(h) == sha256.Size && slices.ContainsFunc(ks.keys, func(o *apiKey) bool { return o.hashed && string(o.hash[:]) == string(h) }):
			return nil, bad("sha256 is another key's too: one key is one principal")
		case kc.Types != nil && len(kc.Types) == 0, kc.Sources != nil && len(kc.Sources) == 0:
			return nil, bad("types and sources may not be empty lists: leave one out to allow every type or source")
		case kc.Rate < 0 || kc.Burst < 0:
			return nil, bad("rate and burst must not be negative")
		}
		k.hashed = copy(k.hash[:], h) == sha256.Size
		if k.rate > 0 {
			if k.burst == 0 {
				k.burst = max(int(k.rate), 1)
			}
			k.limiter = rate.NewLimiter(rate.Limit(k.rate), k.burst)
		}
		names[kc.Name] = true
		ks.keys = append(ks.keys, k)
	}
	return ks, nil
}

// carryLimiters keeps the rate limiter state of keys that stay the same
// across a reload, so that reloading does not refill anyone's bucket.
func (ks *Keys) carryLimiters(old *Keys) {
	if old == nil {
		return
	}
	for _, k := range ks.keys {
		for _, o := range old.keys {
			if o.name == k.name && o.rate == k.rate && o.burst == k.burst {
				k.limiter = o.limiter
			}
		}
	}
}

// HashKey returns the hex SHA-256 of an API key, as a keys file holds it.
func HashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// find returns the key whose hash matches token's. It compares against
// every key, in constant time each, whatever matches.
func (ks *Keys) find(token string) *apiKey {
	h := sha256.Sum256([]byte(token))
	var found *apiKey
	for _, k := range ks.keys {
		if subtle.ConstantTimeCompare(h[:], k.hash[:]) == 1 && k.hashed {
			found = k
		}
	}
	return found
}

// findCert returns the key whose client_cert names c, a client certificate
// the TLS handshake verified, or an error when none or several do.
func (ks *Keys) findCert(c *x509.Certificate) (*apiKey, error) {
	var found []*apiKey
	for _, k := range ks.keys {
		if k.cert != "" && certNamed(c, k.cert) {
			found = append(found, k)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("the client certificate %q is in no entry of the keys file", certName(c))
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("the client certificate %q matches %d entries of the keys file; it must match one", certName(c), len(found))
}

// certNamed reports whether c goes by name: a name with "://" by one of its
// URI subject alternative names (e.g. a SPIFFE ID), another name by one of
// its DNS names, or by its subject's common name when it has neither kind
// of alternative name, as TLS host name checks do.
func certNamed(c *x509.Certificate, name string) bool {
	if strings.Contains(name, "://") {
		return slices.ContainsFunc(c.URIs, func(u *url.URL) bool { return u.String() == name })
	}
	if len(c.DNSNames) > 0 || len(c.URIs) > 0 {
		return slices.Contains(c.DNSNames, name)
	}
	return c.Subject.CommonName == name
}

// certName is what a client certificate is called in errors and, without
// a keys file, in spate_principal: its first URI or DNS name, else its
// subject's common name; empty when it has none of them.
func certName(c *x509.Certificate) string {
	switch {
	case len(c.URIs) > 0:
		return c.URIs[0].String()
	case len(c.DNSNames) > 0:
		return c.DNSNames[0]
	}
	return c.Subject.CommonName
}

// token returns the API key of a request: Authorization: Bearer KEY (the
// scheme in any case, as HTTP has it), or X-API-Key: KEY.
func token(h http.Header) string {
	if scheme, v, ok := strings.Cut(strings.TrimSpace(h.Get("Authorization")), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(v)
	}
	return strings.TrimSpace(h.Get("X-API-Key"))
}

func matchAny(patterns []string, s string) bool {
	return len(patterns) == 0 || slices.ContainsFunc(patterns, func(p string) bool { return wildcard(p, s) })
}

// wildcard reports whether s matches pattern, in which * matches any run of
// characters, slashes included (sources are URI references), and every
// other character matches itself.
//
// On a mismatch it goes back only to the last star, letting it take one
// more character: what an earlier star took, a later one could have taken
// as well. So it takes at most len(pattern) × len(s) steps, however many
// stars a pattern has; trying every split for every star took
// exponentially many on patterns like *a*a*a*b.
func wildcard(pattern, s string) bool {
	p, i := 0, 0
	star, taken := -1, 0 // the last star seen, and where in s its run ends
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, taken = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			taken++
			p, i = star+1, taken
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// authorize returns the events k may not publish, as field errors.
// principal names the key in records (HeaderPrincipal) and in the dedupe
// store; nil, without authentication, is "".
func (k *apiKey) principal() string {
	if k == nil {
		return ""
	}
	return k.name
}

func (k *apiKey) authorize(evsTypes, evsSources []string) []FieldError {
	var errs []FieldError
	for i := range evsTypes {
		if !matchAny(k.types, evsTypes[i]) {
			errs = append(errs, FieldError{Index: i, Field: attrType, Detail: fmt.Sprintf("key %s may not publish %q", k.name, evsTypes[i])})
		}
		if !matchAny(k.sources, evsSources[i]) {
			errs = append(errs, FieldError{Index: i, Field: attrSource, Detail: fmt.Sprintf("key %s may not publish as source %q", k.name, evsSources[i])})
		}
	}
	return errs
}

// admit takes n events from k's bucket, or says how long to wait: at least
// a nanosecond, which Retry-After rounds up to a second. n is at most k's
// burst.
func (k *apiKey) admit(n int, now time.Time) (wait time.Duration, ok bool) {
	if k.limiter == nil {
		return 0, true
	}
	if n > k.limiter.Burst() {
		return time.Second, false // more than the burst (reloaded since it was checked)
	}
	// AllowN takes nothing when it refuses. A reservation cancelled
	// instead would not give back all it took while later ones are out:
	// concurrent refusals would drain the bucket.
	if k.limiter.AllowN(now, n) {
		return 0, true
	}
	// At a high rate the wait is under a nanosecond, and tokens may come
	// in since AllowN looked, leaving none missing.
	missing := float64(n) - k.limiter.TokensAt(now)
	return max(time.Nanosecond, time.Duration(missing/float64(k.limiter.Limit())*float64(time.Second))), false
}
