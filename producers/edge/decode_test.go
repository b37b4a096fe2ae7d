package edge

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
	shopv1 "github.com/spate-io/spate/schemas/shop/v1"
)

// fieldErrorOpts compares field errors by index and field, in any order: the
// detail is prose for people, and extensions are checked in map order.
var fieldErrorOpts = cmp.Options{
	cmpopts.IgnoreFields(FieldError{}, "Detail"),
	cmpopts.SortSlices(func(a, b FieldError) bool {
		if a.Index != b.Index {
			return a.Index < b.Index
		}
		return a.Field < b.Field
	}),
	cmpopts.EquateEmpty(),
}

// checkDetails fails for a field error without a detail.
func checkDetails(t *testing.T, errs []FieldError) {
	t.Helper()
	for _, e := range errs {
		if e.Detail == "" {
			t.Errorf("got field error %+v without detail, want one", e)
		}
	}
}

func canonical(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatalf("marshal %T: %v", m, err)
	}
	return b
}

func TestDecodeJSONEvent(t *testing.T) {
	tests := []struct {
		name     string
		index    int
		raw      string
		want     *spatev1.Event // compared when not nil
		wantErrs []FieldError
	}{
		{
			name: "every attribute with JSON data",
			raw: `{"specversion":"1.0","id":"e-1","source":"/shop","type":"shop.order.placed.v1","subject":"o-1",
				"time":"2024-02-29T23:59:58.123456789+01:00","dataschema":"urn:s","data":{"orderId":"o-1"}}`,
			want: &spatev1.Event{
				Id: "e-1", Source: "/shop", Type: "shop.order.placed.v1", Subject: "o-1",
				Time:            timestamppb.New(time.Date(2024, 2, 29, 22, 59, 58, 123456789, time.UTC)),
				Datacontenttype: "application/json", Dataschema: "urn:s",
				Data: []byte(`{"orderId":"o-1"}`),
			},
		},
		{
			name: "JSON data keeps its content type",
			raw:  `{"specversion":"1.0","id":"e-1","source":"s","type":"t","datacontenttype":"application/vnd.x+json","data":{}}`,
			want: &spatev1.Event{Id: "e-1", Source: "s", Type: "t", Datacontenttype: "application/vnd.x+json", Data: []byte(`{}`)},
		},
		{
			name: "base64 data",
			raw:  `{"specversion":"1.0","id":"e-1","source":"s","type":"t","datacontenttype":"application/protobuf","data_base64":"CgNvLTE="}`,
			want: &spatev1.Event{Id: "e-1", Source: "s", Type: "t", Datacontenttype: "application/protobuf", Data: []byte("\n\x03o-1")},
		},
		{
			name: "base64 data without content type",
			raw:  `{"specversion":"1.0","id":"e-1","source":"s","type":"t","data_base64":"CgNvLTE="}`,
			want: &spatev1.Event{Id: "e-1", Source: "s", Type: "t", Data: []byte("\n\x03o-1")},
		},
		{
			name: "no data",
			raw:  `{"specversion":"1.0","id":"e-1","source":"s","type":"t"}`,
			want: &spatev1.Event{Id: "e-1", Source: "s", Type: "t"},
		},
		{
			name: "extension values become strings",
			raw: `{"specversion":"1.0","id":"e-1","source":"s","type":"t",
				"tenant":"acme","count":42,"ratio":1.50,"big":1e3,"sampled":true,"replay":false,"empty":""}`,
			want: &spatev1.Event{Id: "e-1", Source: "s", Type: "t", Extensions: map[string]string{
				"tenant": "acme", "count": "42", "ratio": "1.50", "big": "1e3", "sampled": "true", "replay": "false", "empty": "",
			}},
		},
		{
			name: "longest extension name",
			raw:  `{"specversion":"1.0","id":"e-1","source":"s","type":"t","abcdefghij0123456789":"x"}`,
			want: &spatev1.Event{Id: "e-1", Source: "s", Type: "t", Extensions: map[string]string{"abcdefghij0123456789": "x"}},
		},
		{
			name:     "missing specversion",
			index:    3,
			raw:      `{"id":"e-1","source":"s","type":"t"}`,
			wantErrs: []FieldError{{Index: 3, Field: "specversion"}},
		},
		{
			name:     "specversion 0.3",
			raw:      `{"specversion":"0.3","id":"e-1","source":"s","type":"t"}`,
			wantErrs: []FieldError{{Field: "specversion"}},
		},
		{
			name:     "specversion a number",
			raw:      `{"specversion":1.0,"id":"e-1","source":"s","type":"t"}`,
			wantErrs: []FieldError{{Field: "specversion"}},
		},
		{
			name:     "non-string id",
			index:    1,
			raw:      `{"specversion":"1.0","id":7,"source":"s","type":"t"}`,
			wantErrs: []FieldError{{Index: 1, Field: "id"}},
		},
		{
			name: "non-string attributes",
			raw: `{"specversion":"1.0","id":"e-1","source":["s"],"type":{},"subject":1,"time":true,
				"datacontenttype":2,"dataschema":false}`,
			wantErrs: []FieldError{
				{Field: "source"}, {Field: "type"}, {Field: "subject"}, {Field: "time"},
				{Field: "datacontenttype"}, {Field: "dataschema"},
			},
		},
		{
			name:     "time empty",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","time":""}`,
			wantErrs: []FieldError{{Field: "time"}},
		},
		{
			name:     "time not RFC 3339",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","time":"2024-01-02 03:04:05"}`,
			wantErrs: []FieldError{{Field: "time"}},
		},
		{
			name:     "time without zone",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","time":"2024-01-02T03:04:05"}`,
			wantErrs: []FieldError{{Field: "time"}},
		},
		{
			name:     "time before year 1",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","time":"0000-06-01T00:00:00Z"}`,
			wantErrs: []FieldError{{Field: "time"}},
		},
		{
			name:     "time after year 9999 in UTC",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","time":"9999-12-31T23:00:00-02:00"}`,
			wantErrs: []FieldError{{Field: "time"}},
		},
		{
			name:     "data and data_base64",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","data":{},"data_base64":"AA=="}`,
			wantErrs: []FieldError{{Field: "data"}},
		},
		{
			name:     "bad base64",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","data_base64":"not base64!"}`,
			wantErrs: []FieldError{{Field: "data_base64"}},
		},
		{
			name:     "url base64",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","data_base64":"-_-_"}`,
			wantErrs: []FieldError{{Field: "data_base64"}},
		},
		{
			name:     "non-string base64",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","data_base64":[1]}`,
			wantErrs: []FieldError{{Field: "data_base64"}},
		},
		{
			name:     "extension with upper-case name",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","traceId":"x"}`,
			wantErrs: []FieldError{{Field: "traceId"}},
		},
		{
			name:     "extension name too long",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","abcdefghij0123456789x":"x"}`,
			wantErrs: []FieldError{{Field: "abcdefghij0123456789x"}},
		},
		{
			name:     "extension name with punctuation",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","trace_id":"x","":"y"}`,
			wantErrs: []FieldError{{Field: "trace_id"}, {Field: ""}},
		},
		{
			name:     "object extension value",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","ctx":{"a":1}}`,
			wantErrs: []FieldError{{Field: "ctx"}},
		},
		{
			name:     "array and null extension values",
			raw:      `{"specversion":"1.0","id":"e-1","source":"s","type":"t","tags":["a"],"none":null}`,
			wantErrs: []FieldError{{Field: "tags"}, {Field: "none"}},
		},
		{
			name:     "every problem is reported",
			index:    2,
			raw:      `{"specversion":"2.0","id":1,"time":"soon","data":{},"data_base64":"","Bad":"x","obj":{}}`,
			wantErrs: []FieldError{{2, "specversion", ""}, {2, "id", ""}, {2, "time", ""}, {2, "data", ""}, {2, "Bad", ""}, {2, "obj", ""}},
		},
		{name: "an array", index: 4, raw: `[{"specversion":"1.0"}]`, wantErrs: []FieldError{{Index: 4, Field: ""}}},
		{name: "a string", raw: `"event"`, wantErrs: []FieldError{{Field: ""}}},
		{name: "a number", raw: `1`, wantErrs: []FieldError{{Field: ""}}},
		{name: "null", raw: `null`, wantErrs: []FieldError{{Field: ""}}},
		{name: "malformed", raw: `{"id":`, wantErrs: []FieldError{{Field: ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, errs := decodeJSONEvent(tt.index, []byte(tt.raw))
			if diff := cmp.Diff(tt.wantErrs, errs, fieldErrorOpts); diff != "" {
				t.Errorf("decodeJSONEvent: field errors mismatch (-want +got):\n%s", diff)
			}
			checkDetails(t, errs)
			if tt.want != nil {
				if diff := cmp.Diff(tt.want, ev, protocmp.Transform()); diff != "" {
					t.Errorf("decodeJSONEvent: event mismatch (-want +got):\n%s", diff)
				}
			}
			if len(tt.wantErrs) == 1 && tt.wantErrs[0].Field == "" && ev != nil {
				t.Errorf("decodeJSONEvent: got event %v for a non-object, want nil", ev)
			}
		})
	}
}

func TestCheckExtensionName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"tenant", true},
		{"traceparent", true},
		{"a", true},
		{"0", true},
		{"abcdefghij0123456789", true},
		{"abcdefghij0123456789x", false},
		{"", false},
		{"traceId", false},
		{"TENANT", false},
		{"trace_id", false},
		{"trace-id", false},
		{"data_base64", false},
		{"ünï", false},
		{"tenant\n", false},
		// Core attributes match the name rule but are not extensions.
		{"data", false},
		{"id", false},
		{"source", false},
		{"type", false},
		{"subject", false},
		{"time", false},
		{"specversion", false},
		{"datacontenttype", false},
		{"dataschema", false},
	}
	for _, tt := range tests {
		msg := checkExtensionName(tt.name)
		if got := msg == ""; got != tt.ok {
			t.Errorf("checkExtensionName(%q): got %q, want ok=%t", tt.name, msg, tt.ok)
		}
	}
}

func TestValidate(t *testing.T) {
	s := New(nil, schemas.Builtin(), Config{})
	now := timestamppb.New(time.Date(2025, 5, 6, 7, 8, 9, 10, time.UTC))
	at := timestamppb.New(time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC))
	order := &shopv1.OrderPlaced{OrderId: "o-1", CustomerId: "c-1", AmountCents: 1250, Currency: "EUR", Items: []*shopv1.LineItem{{Sku: "s", Quantity: 2}}}
	orderPB := canonical(t, order)
	const orderJSON = `{"items":[{"quantity":2,"sku":"s"}],"amountCents":"1250","order_id":"o-1","customerId":"c-1","currency":"EUR"}`

	tests := []struct {
		name     string
		index    int
		ev       *spatev1.Event
		want     *spatev1.Event // the event after validate, when valid
		wantErrs []FieldError
	}{
		{
			name: "json payload becomes canonical protobuf and gets a time",
			ev:   &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Datacontenttype: "application/json", Data: []byte(orderJSON)},
			want: &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Datacontenttype: "application/protobuf", Data: orderPB, Time: now},
		},
		{
			name: "a given time is kept",
			ev: &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Time: at, Subject: "o-1",
				Datacontenttype: "application/json; charset=utf-8", Data: []byte(orderJSON), Extensions: map[string]string{"tenant": "acme"}},
			want: &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Time: at, Subject: "o-1",
				Datacontenttype: "application/protobuf", Data: orderPB, Extensions: map[string]string{"tenant": "acme"}},
		},
		{
			name: "protobuf payload without content type",
			ev:   &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Time: at, Data: orderPB},
			want: &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Time: at, Datacontenttype: "application/protobuf", Data: orderPB},
		},
		{
			name: "empty protobuf payload",
			ev:   &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.cancelled.v1", Time: at},
			// The schema requires order_id.
			wantErrs: []FieldError{{Field: "data.order_id"}},
		},
		{
			name: "payload breaking constraints: every field at fault",
			ev: &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Datacontenttype: "application/json",
				Data: []byte(`{"orderId":"o-1","customerId":"c-1","amountCents":-1,"currency":"EUR","items":[{"sku":"s","quantity":1},{"sku":"","quantity":1}]}`)},
			wantErrs: []FieldError{{Field: "data.amountCents"}, {Field: "data.items[1].sku"}},
		},
		{
			name:     "missing id",
			index:    5,
			ev:       &spatev1.Event{Source: "s", Type: "shop.order.placed.v1", Data: orderPB},
			wantErrs: []FieldError{{Index: 5, Field: "id"}},
		},
		{
			name:     "control characters in id, source and subject",
			ev:       &spatev1.Event{Id: "e-\x00", Source: "/shop\n", Type: "shop.order.placed.v1", Subject: "o-1\x1b[2J", Data: orderPB},
			wantErrs: []FieldError{{Field: "id"}, {Field: "source"}, {Field: "subject"}},
		},
		{
			name:     "C1 control characters (U+0080 to U+009F) in id, source and subject",
			ev:       &spatev1.Event{Id: "e-\u0085", Source: "/shop\u0080", Type: "shop.order.placed.v1", Subject: "o-1\u009b2J", Data: orderPB},
			wantErrs: []FieldError{{Field: "id"}, {Field: "source"}, {Field: "subject"}},
		},
		{
			name: "control characters in dataschema and an extension's value",
			ev: &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Dataschema: "x\x7f", Data: orderPB,
				Extensions: map[string]string{"tenant": "a\nb"}},
			wantErrs: []FieldError{{Field: "dataschema"}, {Field: "tenant"}},
		},
		{
			name:     "invalid UTF-8 in id and subject",
			ev:       &spatev1.Event{Id: "e-\xff", Source: "s", Type: "shop.order.placed.v1", Subject: "\xc3", Data: orderPB},
			wantErrs: []FieldError{{Field: "id"}, {Field: "subject"}},
		},
		{
			name:     "dot segments in source",
			ev:       &spatev1.Event{Id: "e-1", Source: "/shop/../billing/x", Type: "shop.order.placed.v1", Data: orderPB},
			wantErrs: []FieldError{{Field: "source"}},
		},
		{
			name:     "percent-encoded dot segments in source",
			ev:       &spatev1.Event{Id: "e-1", Source: "/shop/%2e%2E/billing/x", Type: "shop.order.placed.v1", Data: orderPB},
			wantErrs: []FieldError{{Field: "source"}},
		},
		{
			name:     "percent-encoded dot segments beside a stray percent in source",
			ev:       &spatev1.Event{Id: "e-1", Source: "/shop/%2e%2e/billing/%zz", Type: "shop.order.placed.v1", Data: orderPB},
			wantErrs: []FieldError{{Field: "source"}},
		},
		{
			name:     "a dot segment between percent-encoded slashes in source",
			ev:       &spatev1.Event{Id: "e-1", Source: "/shop%2F..%2fbilling", Type: "shop.order.placed.v1", Data: orderPB},
			wantErrs: []FieldError{{Field: "source"}},
		},
		{
			name: "dots elsewhere in source are fine",
			ev:   &spatev1.Event{Id: "e-1", Source: "https://shop.example/v1.2/..x?next=../", Type: "shop.order.placed.v1", Time: at, Data: orderPB},
			want: &spatev1.Event{Id: "e-1", Source: "https://shop.example/v1.2/..x?next=../", Type: "shop.order.placed.v1", Time: at, Datacontenttype: "application/protobuf", Data: orderPB},
		},
		{
			name:     "missing source",
			ev:       &spatev1.Event{Id: "e-1", Type: "shop.order.placed.v1", Data: orderPB},
			wantErrs: []FieldError{{Field: "source"}},
		},
		{
			name:     "missing type",
			ev:       &spatev1.Event{Id: "e-1", Source: "s", Data: orderPB},
			wantErrs: []FieldError{{Field: "type"}},
		},
		{
			name:     "unknown type",
			ev:       &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.shipped.v1", Data: orderPB},
			wantErrs: []FieldError{{Field: "type"}},
		},
		{
			name:     "payload of another type",
			ev:       &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.cancelled.v1", Datacontenttype: "application/json", Data: []byte(orderJSON)},
			wantErrs: []FieldError{{Field: "data"}},
		},
		{
			name:     "payload not protobuf",
			ev:       &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Data: []byte(orderJSON)},
			wantErrs: []FieldError{{Field: "data"}},
		},
		{
			name:     "json payload not an object",
			ev:       &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Datacontenttype: "application/json", Data: []byte(`"o-1"`)},
			wantErrs: []FieldError{{Field: "data"}},
		},
		{
			name:     "bad datacontenttype",
			ev:       &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Datacontenttype: "text/plain", Data: []byte(orderJSON)},
			wantErrs: []FieldError{{Field: "datacontenttype"}},
		},
		{
			name:     "bad extension names",
			ev:       &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Data: orderPB, Extensions: map[string]string{"ok": "", "Bad": "", "id": "x"}},
			wantErrs: []FieldError{{Field: "Bad"}, {Field: "id"}},
		},
		{
			name:     "time out of range",
			ev:       &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Data: orderPB, Time: &timestamppb.Timestamp{Seconds: 1 << 40}},
			wantErrs: []FieldError{{Field: "time"}},
		},
		{
			name:     "time with nanos out of range",
			ev:       &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Data: orderPB, Time: &timestamppb.Timestamp{Seconds: 1, Nanos: 1e9}},
			wantErrs: []FieldError{{Field: "time"}},
		},
		{
			name:     "every problem is reported",
			index:    1,
			ev:       &spatev1.Event{Type: "nope", Extensions: map[string]string{"X": ""}},
			wantErrs: []FieldError{{1, "id", ""}, {1, "source", ""}, {1, "type", ""}, {1, "X", ""}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := proto.Clone(tt.ev).(*spatev1.Event)
			errs := s.validate(tt.index, tt.ev, now)
			if diff := cmp.Diff(tt.wantErrs, errs, fieldErrorOpts); diff != "" {
				t.Errorf("validate: field errors mismatch (-want +got):\n%s", diff)
			}
			checkDetails(t, errs)
			if tt.want != nil {
				if diff := cmp.Diff(tt.want, tt.ev, protocmp.Transform()); diff != "" {
					t.Errorf("validate: event mismatch (-want +got):\n%s", diff)
				}
				return
			}
			// An event refused for its payload keeps it.
			if !slices.ContainsFunc(tt.wantErrs, func(e FieldError) bool {
				return e.Field == "data" || e.Field == "datacontenttype" || e.Field == "type"
			}) {
				return
			}
			if got, want := tt.ev.GetData(), in.GetData(); string(got) != string(want) {
				t.Errorf("validate: got data %q, want %q unchanged", got, want)
			}
			if got, want := tt.ev.GetDatacontenttype(), in.GetDatacontenttype(); got != want {
				t.Errorf("validate: got datacontenttype %q, want %q unchanged", got, want)
			}
		})
	}
}

// TestValidateMessages checks the details a client is shown name what is wrong.
func TestValidateMessages(t *testing.T) {
	s := New(nil, schemas.Builtin(), Config{})
	tests := []struct {
		name   string
		ev     *spatev1.Event
		field  string
		detail string
	}{
		{
			name:   "unknown type",
			ev:     &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.shipped.v1"},
			field:  "type",
			detail: `"shop.order.shipped.v1" is not a registered event type`,
		},
		{
			name:   "unknown JSON field",
			ev:     &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Datacontenttype: "application/json", Data: []byte(`{"colour":"red"}`)},
			field:  "data",
			detail: `unknown field "colour"`,
		},
		{
			name:   "content type",
			ev:     &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.placed.v1", Datacontenttype: "text/csv"},
			field:  "datacontenttype",
			detail: `"text/csv"`,
		},
		{
			name: "constraint",
			ev: &spatev1.Event{Id: "e-1", Source: "s", Type: "shop.order.cancelled.v1", Datacontenttype: "application/json",
				Data: []byte(`{"orderId":""}`)},
			field:  "data.orderId", // named as JSON names it
			detail: "must be at least 1 characters (string.min_len)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := s.validate(0, tt.ev, timestamppb.Now())
			if len(errs) != 1 {
				t.Fatalf("validate: got %v, want one field error", errs)
			}
			if errs[0].Field != tt.field || !strings.Contains(errs[0].Detail, tt.detail) {
				t.Errorf("validate: got %s: %s, want %s: ...%s...", errs[0].Field, errs[0].Detail, tt.field, tt.detail)
			}
		})
	}
}

func FuzzDecodeJSONEvent(f *testing.F) {
	order := canonical(f, &shopv1.OrderPlaced{OrderId: "o-1", Items: []*shopv1.LineItem{{Sku: "s"}}})
	f.Add([]byte(`{"specversion":"1.0","id":"e-1","source":"/shop","type":"shop.order.placed.v1","subject":"o-1",
		"time":"2024-02-29T23:59:58.123456789+01:00","data":{"orderId":"o-1","items":[{"sku":"s","quantity":2}]},"tenant":"acme","n":1,"b":true}`))
	f.Add([]byte(`{"specversion":"1.0","id":"e-1","source":"s","type":"shop.order.cancelled.v1","datacontenttype":"application/json","data":{"reason":""}}`))
	f.Add([]byte(`{"specversion":"1.0","id":"e-1","source":"s","type":"shop.order.placed.v1","data_base64":"` + base64.StdEncoding.EncodeToString(order) + `"}`))
	f.Add([]byte(`{"specversion":"1.0","id":"e-1","source":"s","type":"shop.order.placed.v1","flag":""}`))
	f.Add([]byte(`{"specversion":"1.0","id":"e-1","source":"s","type":"shop.order.placed.v1","time":"0000-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"specversion":"0.3","id":1,"data":{},"data_base64":"??","Bad":{}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))

	s := New(nil, schemas.Builtin(), Config{})
	reg := schemas.Builtin()
	now := timestamppb.New(time.Date(2025, 5, 6, 7, 8, 9, 10, time.UTC))
	f.Fuzz(func(t *testing.T, raw []byte) {
		// readJSONEvent reads as json.Unmarshal would, only cheaper, and
		// stops at an extension attribute too many.
		read, readErr := readJSONEvent(raw)
		var want *jsonEvent
		wantErr := json.Unmarshal(raw, &want)
		if errors.Is(readErr, errTooManyExtensions) && wantErr == nil {
			if len(want.Extensions) <= MaxExtensions {
				t.Fatalf("readJSONEvent: got %v, but json.Unmarshal finds %d extensions", readErr, len(want.Extensions))
			}
			return
		}
		if (readErr == nil) != (wantErr == nil) {
			t.Fatalf("readJSONEvent: got error %v, json.Unmarshal %v", readErr, wantErr)
		}
		if readErr == nil && !cmp.Equal(read, want, cmpopts.EquateEmpty()) {
			t.Fatalf("readJSONEvent: got %+v, json.Unmarshal %+v", read, want)
		}

		ev, errs := decodeJSONEvent(7, raw)
		for _, e := range errs {
			if e.Index != 7 || e.Detail == "" {
				t.Fatalf("decodeJSONEvent: got field error %+v, want index 7 and a detail", e)
			}
		}
		if ev == nil {
			if len(errs) != 1 || errs[0].Field != "" {
				t.Fatalf("decodeJSONEvent: got no event and %v, want one error for the whole event", errs)
			}
			return
		}
		verrs := s.validate(7, ev, now)
		for _, e := range verrs {
			if e.Index != 7 || e.Detail == "" {
				t.Fatalf("validate: got field error %+v, want index 7 and a detail", e)
			}
		}
		if len(errs) > 0 || len(verrs) > 0 {
			return
		}

		// A valid event is ready for Kafka: a canonical protobuf payload of
		// its type, a valid time, extensions that are extensions, and it
		// reads back from its record as it went in.
		if ev.Datacontenttype != schemas.ContentTypeProtobuf {
			t.Fatalf("validate: got datacontenttype %q, want %q", ev.Datacontenttype, schemas.ContentTypeProtobuf)
		}
		canon, err := reg.Canonical(ev.Type, schemas.ContentTypeProtobuf, ev.Data)
		if err != nil || string(canon) != string(ev.Data) {
			t.Fatalf("validate: got data %x, want its canonical form %x (%v)", ev.Data, canon, err)
		}
		if err := ev.Time.CheckValid(); err != nil {
			t.Fatalf("validate: got time %v, want a valid one: %v", ev.Time, err)
		}
		for name := range ev.Extensions {
			if msg := checkExtensionName(name); msg != "" {
				t.Fatalf("decodeJSONEvent: got extension %q: %s", name, msg)
			}
		}
		got, err := cekafka.Event(cekafka.Record("t", ev))
		if err != nil {
			t.Fatalf("cekafka.Event(Record): got error %v, want none", err)
		}
		if diff := cmp.Diff(ev, got, protocmp.Transform()); diff != "" {
			t.Fatalf("cekafka.Event(Record): mismatch (-want +got):\n%s", diff)
		}
	})
}

// BenchmarkDecodeJSONEvent measures reading one CloudEvents JSON event's
// envelope, as a batch request does for each of its events.
//
//	go test -run '^$' -bench DecodeJSONEvent ./producers/edge/
func BenchmarkDecodeJSONEvent(b *testing.B) {
	raw := jsontext.Value(`{"specversion":"1.0","id":"bench-1-12345","source":"/bench","type":"shop.order.placed.v1",` +
		`"subject":"order-123","time":"2026-11-24T01:02:03.456Z","tenant":"acme",` +
		`"data":{"orderId":"order-123","customerId":"c-1","amountCents":4200,"currency":"EUR","items":[{"sku":"tea-1","quantity":2,"priceCents":2100}]}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, errs := decodeJSONEvent(0, raw); len(errs) > 0 {
			b.Fatal(errs)
		}
	}
}

// TestProtobufShape: the shape scan counts what proto.Unmarshal decodes as
// events and extensions, not fields of those numbers with another wire
// type, which it keeps as unknown fields.
func TestProtobufShape(t *testing.T) {
	ext := func(name string) []byte { // a map entry of name and ""
		b := protowire.AppendTag(nil, 9, protowire.BytesType)
		return protowire.AppendBytes(b, protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), name))
	}
	notExt := protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1)
	event := func(fields ...[]byte) []byte {
		b := protowire.AppendTag(nil, 1, protowire.BytesType)
		return protowire.AppendBytes(b, bytes.Join(fields, nil))
	}
	notEvent := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 7)
	body := bytes.Join([][]byte{event(ext("a"), ext("b"), notExt), notEvent, event(bytes.Repeat(notExt, 70)), event(ext("a"))}, nil)

	var req spatev1.PublishRequest
	if err := proto.Unmarshal(body, &req); err != nil || len(req.Events) != 3 || len(req.Events[0].Extensions) != 2 {
		t.Fatalf("proto.Unmarshal = %v, %v; want 3 events, the first with 2 extensions", &req, err)
	}
	sh, err := protobufShape(body)
	if err != nil || sh != (requestShape{events: 3, extensions: 2}) {
		t.Errorf("protobufShape = %+v, %v; want 3 events, at most 2 extensions", sh, err)
	}
}

// checkJSONBatch fails t unless readJSONBatch, the one pass over a batch,
// reads body into the events that splitArray and readJSONEvent read one by
// one, or gives up where those find something wrong. It reports whether the
// one pass read it.
func checkJSONBatch(t testing.TB, body []byte, max int) bool {
	t.Helper()
	jes, ok := readJSONBatch(body, max)
	var want []*jsonEvent
	raws, err := splitArray(body, max)
	for _, raw := range raws {
		if err != nil {
			break
		}
		var je *jsonEvent
		if je, err = readJSONEvent(raw); je == nil && err == nil {
			err = errors.New("null")
		}
		want = append(want, je)
	}
	switch {
	case ok && err != nil:
		t.Fatalf("readJSONBatch read %s, where one by one: %v", body, err)
	case !ok && err == nil:
		t.Fatalf("readJSONBatch gave up on %s, which reads one by one", body)
	case ok && !cmp.Equal(jes, want, cmpopts.EquateEmpty()):
		t.Fatalf("readJSONBatch read %s:\n got  %+v\n want %+v", body, jes, want)
	}
	return ok
}

var jsonBatchCases = []struct {
	name string
	body string
	read bool
}{
	{"two events", `[{"specversion":"1.0","id":"e-1","source":"/s","type":"t","data":{"a":[1,{"b":"é"}]},"tenant":"acme"},` +
		` {"id":"e-2","data_base64":"AAE=","n":1,"b":true,"x":null}]`, true},
	{"none", ` [ ] `, true},
	{"a name twice in an event", `[{"id":"e-1"},{"id":"e-2","id":"e-3"}]`, false},
	{"a name twice in data", `[{"id":"e-1","data":{"a":1,"a":2}}]`, false},
	{"a name in two events", `[{"id":"e-1"},{"id":"e-2"}]`, true},
	{"null", `[null]`, false},
	{"not an object", `[{"id":"e-1"},1]`, false},
	{"too many", `[{},{},{},{}]`, false},
	{"as many as taken", `[{},{},{}]`, true},
	{"trailing data", `[{}] {}`, false},
	{"not an array", `{"id":"e-1"}`, false},
	{"malformed", `[{"id":"e-1"},`, false},
	{"invalid UTF-8", "[{\"id\":\"\xff\"}]", false},
	{"too many extensions", `[{` + extensionsPastTheCap() + `}]`, false},
}

// extensionsPastTheCap is one extension attribute more than MaxExtensions.
func extensionsPastTheCap() string {
	var b strings.Builder
	for i := range MaxExtensions + 1 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"x%d":1`, i)
	}
	return b.String()
}

func TestReadJSONBatch(t *testing.T) {
	for _, c := range jsonBatchCases {
		t.Run(c.name, func(t *testing.T) {
			if read := checkJSONBatch(t, []byte(c.body), 3); read != c.read {
				t.Errorf("read = %v, want %v", read, c.read)
			}
		})
	}
}

// FuzzJSONBatch checks the one pass over a batch against reading its
// events one by one.
func FuzzJSONBatch(f *testing.F) {
	for _, c := range jsonBatchCases {
		f.Add([]byte(c.body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkJSONBatch(t, body, 3)
	})
}
