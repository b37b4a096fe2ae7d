package fanout

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// Route sends events of some types to a stream whose key is built from
// each event: Stream is a template whose {placeholders} are envelope
// attributes, {type} {subject} {source} {id}, or extensions, {ext.NAME};
// {{ and }} are literal braces, for Redis Cluster hash tags
// ("{{spate}}:orders:{ext.tenant}" is "{spate}:orders:acme").
//
// Every value put into a key must be 1 to 128 characters of letters,
// digits and . _ - /: no separator (:), brace, glob character, space or
// newline can reach a key, so no event can write into another tenant's
// streams. An event whose value breaks the rule is dead-lettered. Two
// placeholders need such a separator between them (':'), or two events'
// values could make one key.
type Route struct {
	// Types are path.Match globs of the event types routed ("shop.order.*").
	Types []string
	// Stream is the key template.
	Stream string
	// MaxLen keeps at most this many entries in each stream (0: no limit).
	MaxLen int64
	// MaxAge keeps entries younger than this (0: no limit).
	MaxAge time.Duration
	// Lossy lets trimming delete entries that consumer groups on the stream
	// have not read or acknowledged yet. By default trimming never does.
	Lossy bool

	parts []keyPart
	line  int
	all   bool // takes every type, / included (path.Match's * does not)
}

// keyPart is a literal, or a placeholder when attr is set.
type keyPart struct {
	literal string
	attr    string
}

// validKeyPart reports whether v may be put into a stream key: 1 to 128
// ASCII letters, digits, '.', '_', '-' or '/'.
func validKeyPart(v string) bool {
	if len(v) == 0 || len(v) > 128 {
		return false
	}
	for i := range len(v) {
		if !keyPartByte(v[i]) {
			return false
		}
	}
	return true
}

// holdsSeparator reports whether s holds a byte no value put into a stream
// key holds.
func holdsSeparator(s string) bool {
	for i := range len(s) {
		if !keyPartByte(s[i]) {
			return true
		}
	}
	return false
}

// keyPartByte reports whether c may be in a value put into a stream key.
func keyPartByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/'
}

// compile parses the template.
func (r *Route) compile() error {
	r.parts = nil
	t := r.Stream
	var lit strings.Builder
	for i := 0; i < len(t); i++ {
		switch {
		case strings.HasPrefix(t[i:], "{{"):
			lit.WriteByte('{')
			i++
		case strings.HasPrefix(t[i:], "}}"):
			lit.WriteByte('}')
			i++
		case t[i] == '{':
			end := strings.IndexByte(t[i:], '}')
			if end < 0 {
				return fmt.Errorf("stream %q: unclosed {", r.Stream)
			}
			attr := t[i+1 : i+end]
			switch {
			case attr == "type", attr == "subject", attr == "source", attr == "id":
			case strings.HasPrefix(attr, "ext.") && extName.MatchString(attr[4:]):
			default:
				return fmt.Errorf("stream %q: unknown placeholder {%s}; want {type}, {subject}, {source}, {id} or {ext.NAME}", r.Stream, attr)
			}
			if lit.Len() > 0 {
				r.parts = append(r.parts, keyPart{literal: lit.String()})
				lit.Reset()
			}
			r.parts = append(r.parts, keyPart{attr: attr})
			i += end
		case t[i] == '}':
			return fmt.Errorf("stream %q: } without {; write }} for a literal brace", r.Stream)
		default:
			lit.WriteByte(t[i])
		}
	}
	if lit.Len() > 0 {
		r.parts = append(r.parts, keyPart{literal: lit.String()})
	}
	if len(r.parts) == 0 {
		return fmt.Errorf("stream is empty")
	}
	// Two values must be told apart in a key: {ext.tenant}.{subject} gives
	// tenant acme.x with subject y and tenant acme with subject x.y the
	// same stream.
	for i := 1; i < len(r.parts); i++ {
		if r.parts[i].attr == "" {
			continue
		}
		// Before a placeholder: the template's prefix, or a separator
		// after another placeholder.
		if prev := r.parts[i-1]; prev.attr == "" && (i == 1 || holdsSeparator(prev.literal)) {
			continue
		}
		return fmt.Errorf("stream %q: {%s} needs a separator before it that no value holds, such as ':' (values are letters, digits and . _ - /), or keys of different events could be the same", r.Stream, r.parts[i].attr)
	}
	for _, g := range r.Types {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("types: bad pattern %q", g)
		}
	}
	return nil
}

// hashTag returns the Redis Cluster hash tag of the keys the route builds,
// what lies between their first { and the } after it, when it is the same
// for every event (a placeholder puts no brace into a key). ok is false
// when the keys have no tag, and when a placeholder is part of it.
func (r *Route) hashTag() (tag string, ok bool) {
	open := false
	var b strings.Builder
	for _, p := range r.parts {
		if p.attr != "" {
			if open {
				return "", false
			}
			continue
		}
		for i := range len(p.literal) {
			switch c := p.literal[i]; {
			case !open && c == '{':
				open = true
			case open && c == '}':
				return b.String(), b.Len() > 0 // {}: the whole key is hashed
			case open:
				b.WriteByte(c)
			}
		}
	}
	return "", false
}

var extName = regexp.MustCompile(`^[a-z0-9]{1,20}$`)

// matches reports whether the route takes events of typ.
func (r *Route) matches(typ string) bool {
	return r.all || slices.ContainsFunc(r.Types, func(g string) bool {
		ok, _ := path.Match(g, typ)
		return ok
	})
}

// key builds the stream key for ev.
func (r *Route) key(ev *spatev1.Event) (string, error) {
	var b strings.Builder
	for _, p := range r.parts {
		if p.attr == "" {
			b.WriteString(p.literal)
			continue
		}
		var v string
		switch p.attr {
		case "type":
			v = ev.Type
		case "subject":
			v = ev.Subject
		case "source":
			v = ev.Source
		case "id":
			v = ev.Id
		default:
			v = ev.Extensions[p.attr[4:]]
		}
		if v == "" {
			return "", fmt.Errorf("stream %q: the event has no {%s}", r.Stream, p.attr)
		}
		if !validKeyPart(v) {
			shown := v
			if len(shown) > 40 {
				shown = shown[:40] + "..."
			}
			return "", fmt.Errorf("stream %q: {%s} is %q: a key part must be 1 to 128 letters, digits or . _ - /", r.Stream, p.attr, shown)
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

// builds reports whether the route can build key: its literals as they are,
// each placeholder a valid key part, and {type} an event type the route
// takes that known says exists.
func (r *Route) builds(key string, known func(typ string) bool) bool {
	return r.buildsFrom(r.parts, key, known)
}

func (r *Route) buildsFrom(parts []keyPart, key string, known func(string) bool) bool {
	if len(parts) == 0 {
		return key == ""
	}
	p := parts[0]
	if p.attr == "" {
		rest, ok := strings.CutPrefix(key, p.literal)
		return ok && r.buildsFrom(parts[1:], rest, known)
	}
	for i := 1; i <= min(len(key), 128) && validKeyPart(key[i-1:i]); i++ {
		if p.attr == "type" && !(r.matches(key[:i]) && known(key[:i])) {
			continue
		}
		if r.buildsFrom(parts[1:], key[i:], known) {
			return true
		}
	}
	return false
}

// pattern is a SCAN pattern that matches every key the route can build, and
// others (builds tells them apart).
func (r *Route) pattern() string {
	var b strings.Builder
	for _, p := range r.parts {
		if p.attr != "" {
			b.WriteByte('*')
			continue
		}
		for _, c := range p.literal { // escape glob characters of literals
			if strings.ContainsRune(`*?[]\`, c) {
				b.WriteByte('\\')
			}
			b.WriteRune(c)
		}
	}
	return b.String()
}

// LoadRoutes reads the routes section of a spate.yaml file:
//
//	routes:
//	  - types: ["shop.order.*"]
//	    stream: "tenant:{ext.tenant}:orders"
//	    maxlen: 100000        # retention, optional
//	    maxage: 24h           # retention, optional
//	    lossy: false          # trim unread entries too (default false)
//
// An event goes to every route that takes its type. No routes section: nil,
// and the writer uses one stream per type, <prefix><type>. Errors name the
// file and line.
func LoadRoutes(file string, data []byte) ([]Route, error) {
	var doc struct {
		Routes []yaml.Node `yaml:"routes"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var routes []Route
	for _, n := range doc.Routes {
		bad := func(line int, format string, args ...any) error {
			return fmt.Errorf("%s:%d: route: %s", file, line, fmt.Sprintf(format, args...))
		}
		if n.Kind != yaml.MappingNode {
			return nil, bad(n.Line, "want a map with types and stream")
		}
		keys := []string{"types", "stream", "maxlen", "maxage", "lossy"}
		for i := 0; i < len(n.Content); i += 2 {
			if k := n.Content[i]; !slices.Contains(keys, k.Value) {
				return nil, bad(k.Line, "unknown key %q; want one of %s", k.Value, strings.Join(keys, ", "))
			}
		}
		var rc struct {
			Types  []string `yaml:"types"`
			Stream string   `yaml:"stream"`
			MaxLen int64    `yaml:"maxlen"`
			MaxAge string   `yaml:"maxage"`
			Lossy  bool     `yaml:"lossy"`
		}
		if err := n.Decode(&rc); err != nil {
			return nil, bad(n.Line, "%v", err)
		}
		r := Route{Types: rc.Types, Stream: rc.Stream, MaxLen: rc.MaxLen, Lossy: rc.Lossy, line: n.Line}
		if rc.MaxAge != "" {
			d, err := time.ParseDuration(rc.MaxAge)
			if err != nil || d <= 0 {
				return nil, bad(n.Line, "maxage %q: want a positive duration such as 24h", rc.MaxAge)
			}
			r.MaxAge = d
		}
		switch {
		case len(r.Types) == 0:
			return nil, bad(n.Line, "types is required (globs such as shop.order.*)")
		case r.MaxLen < 0:
			return nil, bad(n.Line, "maxlen must not be negative")
		}
		if err := r.compile(); err != nil {
			return nil, bad(n.Line, "%v", err)
		}
		routes = append(routes, r)
	}
	return routes, nil
}
