// Package kafkago writes Spate events with github.com/segmentio/kafka-go,
// for teams that produce with it already and bypass the edge. A message it
// builds is the record the edge would write: the CloudEvents binary-mode
// headers, the subject as the key, the canonical protobuf payload as the
// value (see package cekafka); NewWriter's settings put it in the partition
// the edge would, so one subject keeps its order whichever way it came.
//
// kafka-go has no idempotent producer: a write it retries after a lost
// acknowledgement can store the event twice. The edge cannot; prefer it
// where that matters.
package kafkago

import (
	"fmt"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
)

// NewWriter returns a kafka-go writer with safe settings for Spate events:
// acknowledged by all in-sync replicas, synchronous (WriteMessages returns
// each batch's error), keys hashed with murmur2 as the edge's client and
// Kafka's own Java client do, topics never created by writing.
func NewWriter(topic string, brokers ...string) *kafka.Writer {
	return &kafka.Writer{
		Addr:                   kafka.TCP(brokers...),
		Topic:                  topic,
		Balancer:               &kafka.Murmur2Balancer{},
		RequiredAcks:           kafka.RequireAll,
		Async:                  false,
		AllowAutoTopicCreation: false,
		BatchTimeout:           time.Millisecond, // a synchronous write should not wait to fill a batch
	}
}

// Message validates ev as the edge does, its attributes (see
// cekafka.CheckAttributes) and its payload against reg, and returns it as a
// kafka-go message: its payload in the canonical protobuf encoding, its time
// set to now when absent. The topic is the writer's.
func Message(reg *schemas.Registry, ev *spatev1.Event) (kafka.Message, error) {
	var problems []string
	for _, e := range cekafka.CheckAttributes(ev) {
		problems = append(problems, strings.TrimSpace(e.Attribute+" "+e.Detail))
	}
	if ev.Type == "" {
		problems = append(problems, "type is required")
	}
	if len(problems) > 0 {
		return kafka.Message{}, fmt.Errorf("event %q: %s", ev.Id, strings.Join(problems, "; "))
	}
	data, err := reg.Canonical(ev.Type, ev.Datacontenttype, ev.Data)
	if err != nil {
		return kafka.Message{}, fmt.Errorf("event %s: %w", ev.Id, err)
	}
	canon := &spatev1.Event{Id: ev.Id, Source: ev.Source, Type: ev.Type, Subject: ev.Subject, Time: ev.Time,
		Datacontenttype: schemas.ContentTypeProtobuf, Dataschema: ev.Dataschema, Data: data, Extensions: ev.Extensions}
	if canon.Time == nil {
		canon.Time = timestamppb.Now()
	}
	if n := proto.Size(canon); n > cekafka.MaxEventBytes {
		return kafka.Message{}, fmt.Errorf("event %q: %d bytes encoded; at most %d fit a Kafka record", ev.Id, n, cekafka.MaxEventBytes)
	}
	r := cekafka.Record("", canon)
	m := kafka.Message{Key: r.Key, Value: r.Value, Headers: make([]kafka.Header, len(r.Headers))}
	for i, h := range r.Headers {
		m.Headers[i] = kafka.Header{Key: h.Key, Value: h.Value}
	}
	return m, nil
}
