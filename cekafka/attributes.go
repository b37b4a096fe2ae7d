package cekafka

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

// MaxEventBytes caps an event's encoded size (its payload, attributes and
// extensions), so that its record fits Kafka's default limits (a producer
// batch of 1,000,012 bytes, a broker message of 1 MiB) with room for the
// record's headers. A larger event is refused as invalid: Kafka would refuse
// it whenever it is sent.
const MaxEventBytes = 900_000

// ErrTooManyExtensions says that an event has more than MaxExtensions.
var ErrTooManyExtensions = fmt.Errorf("an event may hold at most %d extension attributes", MaxExtensions)

// AttributeError is what is wrong with one attribute of an event.
type AttributeError struct {
	// Attribute is the attribute's name ("id", "source", an extension's
	// name...), or "" for the event's extensions as a whole.
	Attribute string
	Detail    string
}

// CheckAttributes returns what is wrong with ev's attributes, its type and
// data aside (the schema registry checks those), by the rules every Spate
// producer writes records by, the edge and producers/kafkago alike:
//   - id and source are required;
//   - string attributes are valid UTF-8 without control characters, as
//     CloudEvents has them (and as sinks can store them);
//   - a source has no "." or ".." path segment, percent-encoded or not: API
//     keys allow sources by pattern, and /shop/../billing is not under /shop;
//   - a time, if any, is between 0001-01-01 and 9999-12-31 UTC;
//   - MaxExtensions extensions at most, whose names CheckExtension allows.
func CheckAttributes(ev *spatev1.Event) []AttributeError {
	var errs []AttributeError
	bad := func(attr, detail string) {
		errs = append(errs, AttributeError{Attribute: attr, Detail: detail})
	}
	text := func(attr, v string) bool { // reports whether v is fine
		if msg := textProblem(v); msg != "" {
			bad(attr, msg)
			return false
		}
		return true
	}
	if ev.Id == "" {
		bad("id", "is required")
	} else {
		text("id", ev.Id)
	}
	switch {
	case ev.Source == "":
		bad("source", "is required")
	case !text("source", ev.Source):
	case hasDotSegment(ev.Source):
		bad("source", `must not hold "." or ".." path segments, percent-encoded or not: keys allow sources by pattern, and /shop/../billing is not under /shop`)
	}
	text("subject", ev.Subject)
	text("dataschema", ev.Dataschema)
	if len(ev.Extensions) > MaxExtensions {
		bad("", ErrTooManyExtensions.Error())
	} else {
		for name, v := range ev.Extensions {
			if err := CheckExtension(name); err != nil {
				bad(name, err.Error())
			} else {
				text(name, v)
			}
		}
	}
	if ev.Time != nil && ev.Time.CheckValid() != nil {
		bad("time", "must be a valid timestamp between 0001-01-01 and 9999-12-31 UTC")
	}
	return errs
}

// textProblem says what keeps s from being a CloudEvents string attribute
// value, if anything.
func textProblem(s string) string {
	if msg := unstorable(s, false); msg != "" {
		return msg
	}
	if hasControl(s) {
		return "must not hold control characters"
	}
	return ""
}

// unstorable says what keeps s from being stored as text, if anything:
// invalid UTF-8, or NUL when noNUL, both of which Postgres refuses.
func unstorable(s string, noNUL bool) string {
	switch {
	case !utf8.ValidString(s):
		return "must be valid UTF-8"
	case noNUL && strings.IndexByte(s, 0) >= 0:
		return "must not hold NUL"
	}
	return ""
}

// hasControl reports whether s holds a control character (U+0000 to
// U+001F, U+007F to U+009F), which CloudEvents forbids in attributes.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r >= 0x7f && r <= 0x9f })
}

// hasDotSegment reports whether the path of a URI reference (what comes
// before any "?" or "#") has a "." or ".." segment, as written or once
// percent-decoded: URI libraries read /shop/%2e%2e/billing, and
// /shop%2f..%2fbilling, as /shop/../billing.
func hasDotSegment(ref string) bool {
	if i := strings.IndexAny(ref, "?#"); i >= 0 {
		ref = ref[:i]
	}
	paths := []string{ref}
	if decoded := percentDecoded(ref); decoded != ref {
		paths = append(paths, decoded)
	}
	for _, p := range paths {
		for seg := range strings.SplitSeq(p, "/") {
			if seg == "." || seg == ".." {
				return true
			}
		}
	}
	return false
}

// percentDecoded decodes each valid %XX of s, and leaves the rest as it
// is, as lenient URI decoders do: one stray % must not hide the others.
func percentDecoded(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b.WriteByte(byte(v))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
