package cekafka_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
)

const topic = "spate.events"

// full is an event with every field set.
func full() *spatev1.Event {
	return &spatev1.Event{
		Id:              "ev-1",
		Source:          "/shop/checkout",
		Type:            "shop.order.placed.v1",
		Subject:         "order-42",
		Time:            timestamppb.New(time.Date(2024, 2, 29, 23, 59, 58, 123456789, time.UTC)),
		Datacontenttype: "application/protobuf",
		Dataschema:      "https://schemas.example.com/shop/v1/OrderPlaced",
		Data:            []byte{0x0a, 0x02, 'o', '1', 0x00, 0xff},
		Extensions:      map[string]string{"traceparent": "00-abc-def-01", "partitionkey": "p", "tenant": "acme"},
	}
}

// headers returns a record's headers as a map, failing on a repeated key.
func headers(t *testing.T, r *kgo.Record) map[string]string {
	t.Helper()
	m := make(map[string]string, len(r.Headers))
	for _, h := range r.Headers {
		if _, ok := m[h.Key]; ok {
			t.Errorf("Record: got header %s twice, want it once", h.Key)
		}
		m[h.Key] = string(h.Value)
	}
	return m
}

func TestRecord(t *testing.T) {
	tests := []struct {
		name        string
		ev          *spatev1.Event
		wantKey     []byte
		wantHeaders map[string]string
	}{
		{
			name:    "every field",
			ev:      full(),
			wantKey: []byte("order-42"),
			wantHeaders: map[string]string{
				"ce_specversion":  "1.0",
				"ce_id":           "ev-1",
				"ce_source":       "/shop/checkout",
				"ce_type":         "shop.order.placed.v1",
				"ce_subject":      "order-42",
				"ce_time":         "2024-02-29T23:59:58.123456789Z",
				"content-type":    "application/protobuf",
				"ce_dataschema":   "https://schemas.example.com/shop/v1/OrderPlaced",
				"ce_traceparent":  "00-abc-def-01",
				"ce_partitionkey": "p",
				"ce_tenant":       "acme",
			},
		},
		{
			name:    "required only",
			ev:      &spatev1.Event{Id: "ev-2", Source: "s", Type: "t"},
			wantKey: nil,
			wantHeaders: map[string]string{
				"ce_specversion": "1.0",
				"ce_id":          "ev-2",
				"ce_source":      "s",
				"ce_type":        "t",
			},
		},
		{
			name:    "whole-second time",
			ev:      &spatev1.Event{Id: "ev-3", Source: "s", Type: "t", Time: timestamppb.New(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC))},
			wantKey: nil,
			wantHeaders: map[string]string{
				"ce_specversion": "1.0",
				"ce_id":          "ev-3",
				"ce_source":      "s",
				"ce_type":        "t",
				"ce_time":        "2024-01-02T03:04:05Z",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := cekafka.Record(topic, tt.ev)
			if r.Topic != topic {
				t.Errorf("Record: got topic %q, want %q", r.Topic, topic)
			}
			if diff := cmp.Diff(tt.wantKey, r.Key); diff != "" {
				t.Errorf("Record: key mismatch (-want +got):\n%s", diff)
			}
			if tt.wantKey == nil && r.Key != nil {
				t.Errorf("Record: got key %q, want nil", r.Key)
			}
			if diff := cmp.Diff(tt.ev.Data, r.Value); diff != "" {
				t.Errorf("Record: value mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantHeaders, headers(t, r)); diff != "" {
				t.Errorf("Record: headers mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		ev   *spatev1.Event
	}{
		{"every field", full()},
		{"required only", &spatev1.Event{Id: "ev-2", Source: "s", Type: "t"}},
		{"nanosecond time", &spatev1.Event{Id: "ev-3", Source: "s", Type: "t", Time: &timestamppb.Timestamp{Seconds: 1700000000, Nanos: 1}}},
		{"time with trailing zeros", &spatev1.Event{Id: "ev-4", Source: "s", Type: "t", Time: &timestamppb.Timestamp{Seconds: 1700000000, Nanos: 120000000}}},
		{"time before 1970", &spatev1.Event{Id: "ev-5", Source: "s", Type: "t", Time: timestamppb.New(time.Date(1969, 7, 20, 20, 17, 40, 5, time.UTC))}},
		{"earliest time", &spatev1.Event{Id: "ev-6", Source: "s", Type: "t", Time: timestamppb.New(time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC))}},
		{"latest time", &spatev1.Event{Id: "ev-7", Source: "s", Type: "t", Time: timestamppb.New(time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC))}},
		{"empty data", &spatev1.Event{Id: "ev-8", Source: "s", Type: "t", Data: []byte{}}},
		{"json data", &spatev1.Event{Id: "ev-9", Source: "s", Type: "t", Datacontenttype: "application/json", Data: []byte(`{"orderId":"o-1"}`)}},
		{"unicode", &spatev1.Event{Id: "é-1", Source: "urn:ünï", Type: "t", Subject: "日本", Extensions: map[string]string{"note": "ça va"}}},
		{"empty extension value", &spatev1.Event{Id: "ev-10", Source: "s", Type: "t", Extensions: map[string]string{"flag": "", "other": "x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cekafka.Event(cekafka.Record(topic, tt.ev))
			if err != nil {
				t.Fatalf("Event(Record): got error %v, want none", err)
			}
			if diff := cmp.Diff(tt.ev, got, protocmp.Transform()); diff != "" {
				t.Errorf("Event(Record): mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEvent(t *testing.T) {
	h := func(kv ...string) []kgo.RecordHeader {
		hs := make([]kgo.RecordHeader, 0, len(kv)/2)
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return hs
	}
	tests := []struct {
		name string
		rec  *kgo.Record
		want *spatev1.Event
	}{
		{
			name: "time with offset is kept as its instant",
			rec:  &kgo.Record{Headers: h("ce_id", "1", "ce_source", "s", "ce_type", "t", "ce_time", "2024-01-02T05:04:05.5+02:00")},
			want: &spatev1.Event{Id: "1", Source: "s", Type: "t", Time: timestamppb.New(time.Date(2024, 1, 2, 3, 4, 5, 5e8, time.UTC))},
		},
		{
			name: "foreign headers and a bare ce_ are ignored",
			rec:  &kgo.Record{Headers: h("ce_id", "1", "ce_source", "s", "ce_type", "t", "traceparent", "x", "ce_", "y", "CE_ID", "2")},
			want: &spatev1.Event{Id: "1", Source: "s", Type: "t"},
		},
		{
			name: "specversion is not an extension",
			rec:  &kgo.Record{Headers: h("ce_specversion", "1.0", "ce_id", "1", "ce_source", "s", "ce_type", "t")},
			want: &spatev1.Event{Id: "1", Source: "s", Type: "t"},
		},
		{
			name: "the key does not make the subject",
			rec:  &kgo.Record{Key: []byte("k"), Value: []byte("v"), Headers: h("ce_id", "1", "ce_source", "s", "ce_type", "t")},
			want: &spatev1.Event{Id: "1", Source: "s", Type: "t", Data: []byte("v")},
		},
		{
			name: "the last of repeated headers wins",
			rec:  &kgo.Record{Headers: h("ce_id", "1", "ce_source", "s", "ce_type", "t", "ce_id", "2")},
			want: &spatev1.Event{Id: "2", Source: "s", Type: "t"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cekafka.Event(tt.rec)
			if err != nil {
				t.Fatalf("Event: got error %v, want none", err)
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Event: mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEventNotEvent(t *testing.T) {
	without := func(key string) []kgo.RecordHeader {
		var hs []kgo.RecordHeader
		for _, h := range cekafka.Record(topic, full()).Headers {
			if h.Key != key {
				hs = append(hs, h)
			}
		}
		return hs
	}
	with := func(key, value string) []kgo.RecordHeader {
		return append(without(key), kgo.RecordHeader{Key: key, Value: []byte(value)})
	}
	tests := []struct {
		name      string
		headers   []kgo.RecordHeader
		wantInErr string
	}{
		{"no headers", nil, "ce_id"},
		{"no id", without("ce_id"), "ce_id"},
		{"empty id", with("ce_id", ""), "ce_id"},
		{"no source", without("ce_source"), "ce_source"},
		{"no type", without("ce_type"), "ce_type"},
		{"time not RFC 3339", with("ce_time", "2024-01-02 03:04:05"), "ce_time"},
		{"time without zone", with("ce_time", "2024-01-02T03:04:05"), "ce_time"},
		{"time garbage", with("ce_time", "yesterday"), "ce_time"},
		{"time empty", with("ce_time", ""), "ce_time"},
		{"time out of range", with("ce_time", "9999-12-31T23:59:59-01:00"), "ce_time"},
		{"time before year 1", with("ce_time", "0000-12-31T23:59:59Z"), "ce_time"},
		// Names the edge refuses: sinks would write a second data field,
		// say, beside the payload.
		{"an extension named data", with("ce_data", `{"forged":true}`), "ce_data"},
		{"an extension named datacontenttype", with("ce_datacontenttype", "text/plain"), "ce_datacontenttype"},
		{"an extension in upper case", with("ce_Tenant", "a"), "ce_Tenant"},
		{"an extension with an underscore", with("ce_with_underscore", "a"), "ce_with_underscore"},
		{"too many extensions", manyExtensions(without(""), cekafka.MaxExtensions+1), "extension attributes"},
		{"another specversion", with("ce_specversion", "0.3"), "ce_specversion"},
		// Strings the sinks cannot store: a database would refuse the row,
		// and it would be retried for ever.
		{"an id of invalid UTF-8", with("ce_id", "a\xffb"), "ce_id"},
		{"a subject with NUL", with("ce_subject", "o\x00"), "ce_subject"},
		{"a source with NUL", with("ce_source", "/shop\x00"), "ce_source"},
		{"a type of invalid UTF-8", with("ce_type", "shop.\xc3"), "ce_type"},
		{"a dataschema of invalid UTF-8", with("ce_dataschema", "x\xff"), "ce_dataschema"},
		{"an extension value of invalid UTF-8", with("ce_tenant", "\xff"), "ce_tenant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cekafka.Event(&kgo.Record{Topic: topic, Value: []byte("x"), Headers: tt.headers})
			if !errors.Is(err, cekafka.ErrNotEvent) {
				t.Fatalf("Event: got %v, %v, want an error wrapping ErrNotEvent", got, err)
			}
			if got != nil {
				t.Errorf("Event: got %v with error, want nil", got)
			}
			if !strings.Contains(err.Error(), tt.wantInErr) {
				t.Errorf("Event: got error %q, want it to name %s", err, tt.wantInErr)
			}
		})
	}
}

func FuzzEvent(f *testing.F) {
	r := cekafka.Record(topic, full())
	hv := func(key string) string {
		for _, h := range r.Headers {
			if h.Key == key {
				return string(h.Value)
			}
		}
		return ""
	}
	f.Add(hv("ce_id"), hv("ce_source"), hv("ce_type"), hv("ce_subject"), hv("ce_time"), hv("content-type"), "ce_traceparent", hv("ce_traceparent"), r.Value)
	f.Add("1", "s", "t", "", "", "", "", "", []byte(nil))
	f.Add("1", "s", "t", "", "2024-01-02T05:04:05.5+02:00", "application/json", "ce_flag", "", []byte(`{}`))
	f.Add("1", "s", "t", "k", "9999-12-31T23:59:59-01:00", "", "ce_", "x", []byte{0})
	f.Add("", "s", "t", "", "", "", "ce_id", "1", []byte{})
	f.Fuzz(func(t *testing.T, id, source, typ, subject, tm, contentType, extKey, extValue string, value []byte) {
		var hs []kgo.RecordHeader
		add := func(k, v string) {
			if v != "" || k == extKey {
				hs = append(hs, kgo.RecordHeader{Key: k, Value: []byte(v)})
			}
		}
		add(cekafka.HeaderSpecVersion, "1.0")
		add(cekafka.HeaderID, id)
		add(cekafka.HeaderSource, source)
		add(cekafka.HeaderType, typ)
		add(cekafka.HeaderSubject, subject)
		add(cekafka.HeaderTime, tm)
		add(cekafka.HeaderContentType, contentType)
		add(extKey, extValue)
		ev, err := cekafka.Event(&kgo.Record{Topic: topic, Value: value, Headers: hs})
		if err != nil {
			if !errors.Is(err, cekafka.ErrNotEvent) {
				t.Fatalf("Event: got error %v, want one wrapping ErrNotEvent", err)
			}
			return
		}
		if ev.Time != nil {
			if err := ev.Time.CheckValid(); err != nil {
				t.Fatalf("Event: got invalid time %v: %v", ev.Time, err)
			}
		}
		rec := cekafka.Record(topic, ev)
		if string(rec.Key) != ev.Subject || (ev.Subject == "" && rec.Key != nil) {
			t.Fatalf("Record: got key %q, want %q", rec.Key, ev.Subject)
		}
		again, err := cekafka.Event(rec)
		if err != nil {
			t.Fatalf("Event(Record(Event)): got error %v, want none", err)
		}
		if diff := cmp.Diff(ev, again, protocmp.Transform()); diff != "" {
			t.Fatalf("Event(Record(Event)): mismatch (-want +got):\n%s", diff)
		}
	})
}

// manyExtensions returns hs with n extension headers more.
func manyExtensions(hs []kgo.RecordHeader, n int) []kgo.RecordHeader {
	for i := range n {
		hs = append(hs, kgo.RecordHeader{Key: fmt.Sprint("ce_x", i), Value: []byte("v")})
	}
	return hs
}

// TestEventTakesMaxExtensions: an event of MaxExtensions extensions, as
// the edge takes, is an event.
func TestEventTakesMaxExtensions(t *testing.T) {
	ev := &spatev1.Event{Id: "1", Source: "s", Type: "t"}
	r := &kgo.Record{Headers: manyExtensions(cekafka.Record(topic, ev).Headers, cekafka.MaxExtensions)}
	got, err := cekafka.Event(r)
	if err != nil || len(got.Extensions) != cekafka.MaxExtensions {
		t.Fatalf("Event of %d extensions: %v, %v", cekafka.MaxExtensions, got, err)
	}
}

// TestEventTakesControlCharactersWrittenBefore: a record an earlier edge
// wrote, a line break or a NUL in an extension's value or the dataschema,
// still reads as the event it was.
func TestEventTakesControlCharactersWrittenBefore(t *testing.T) {
	ev := full()
	ev.Dataschema, ev.Extensions = "x\x7f\x00", map[string]string{"note": "a\nb\x00"}
	got, err := cekafka.Event(cekafka.Record(topic, ev))
	if err != nil {
		t.Fatal(err)
	}
	if got.Dataschema != ev.Dataschema || got.Extensions["note"] != ev.Extensions["note"] {
		t.Errorf("Event gave dataschema %q, extensions %q; want them as written", got.Dataschema, got.Extensions)
	}
}
