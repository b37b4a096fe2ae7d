package edge

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strconv"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spate-io/spate/cekafka"
	spatev1 "github.com/spate-io/spate/proto/spate/v1"
	"github.com/spate-io/spate/schemas"
)

// FieldError is one problem with one event of a request.
type FieldError struct {
	// Index is the event's position in the request, from 0.
	Index int `json:"index"`
	// Field names the attribute, or "data" (or "data.<path>") for the payload.
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

func (e FieldError) Error() string {
	return fmt.Sprintf("event %d: %s: %s", e.Index, e.Field, e.Detail)
}

// checkExtensionName says what is wrong with an extension attribute's name.
func checkExtensionName(name string) string {
	if err := cekafka.CheckExtension(name); err != nil {
		return err.Error()
	}
	return ""
}

// The context attributes of CloudEvents' JSON format that are not extensions.
const (
	attrSpecVersion     = "specversion"
	attrID              = "id"
	attrSource          = "source"
	attrType            = "type"
	attrSubject         = "subject"
	attrTime            = "time"
	attrDataContentType = "datacontenttype"
	attrDataSchema      = "dataschema"
	attrData            = "data"
	attrDataBase64      = "data_base64"
)

// decodeJSONEvent reads one event in the CloudEvents JSON format into the
// envelope. It checks the JSON shape only; validate checks the content.
// JSON is read strictly (encoding/json/v2 semantics): duplicate member
// names and invalid UTF-8 are refused, not resolved silently.
func decodeJSONEvent(i int, raw jsontext.Value) (*spatev1.Event, []FieldError) {
	var attrs map[string]jsontext.Value
	err := json.Unmarshal(raw, &attrs)
	return eventFromAttrs(i, attrs, err)
}

// eventFromAttrs is decodeJSONEvent after the unmarshal into attrs, which
// failed with err if not nil.
func eventFromAttrs(i int, attrs map[string]jsontext.Value, err error) (*spatev1.Event, []FieldError) {
	if err != nil || attrs == nil {
		return nil, []FieldError{{Index: i, Field: "", Detail: "an event must be a JSON object"}}
	}
	var errs []FieldError
	bad := func(field, format string, args ...any) {
		errs = append(errs, FieldError{Index: i, Field: field, Detail: fmt.Sprintf(format, args...)})
	}
	str := func(name string) string {
		v, ok := attrs[name]
		if !ok {
			return ""
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			bad(name, "must be a string")
		}
		return s
	}

	ev := &spatev1.Event{
		Id:              str(attrID),
		Source:          str(attrSource),
		Type:            str(attrType),
		Subject:         str(attrSubject),
		Datacontenttype: str(attrDataContentType),
		Dataschema:      str(attrDataSchema),
	}
	switch sv, ok := attrs[attrSpecVersion]; {
	case !ok:
		bad(attrSpecVersion, `is required and must be "1.0"`)
	case !bytes.Equal(sv, []byte(`"1.0"`)):
		bad(attrSpecVersion, `must be "1.0", got %s`, sv)
	}
	if raw, ok := attrs[attrTime]; ok {
		var t string
		if err := json.Unmarshal(raw, &t); err != nil {
			bad(attrTime, "must be a string")
		} else if ts, err := time.Parse(time.RFC3339Nano, t); err != nil {
			bad(attrTime, "must be an RFC 3339 timestamp, got %q", t)
		} else if err := timestamppb.New(ts).CheckValid(); err != nil {
			bad(attrTime, "must be between 0001-01-01 and 9999-12-31 UTC, got %q", t)
		} else {
			ev.Time = timestamppb.New(ts)
		}
	}

	data, hasData := attrs[attrData]
	b64, hasB64 := attrs[attrDataBase64]
	switch {
	case hasData && hasB64:
		bad(attrData, "give data or data_base64, not both")
	case hasB64:
		var s string
		if err := json.Unmarshal(b64, &s); err != nil {
			bad(attrDataBase64, "must be a base64 string")
			break
		}
		d, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			bad(attrDataBase64, "must be standard base64: %v", err)
			break
		}
		ev.Data = d
	case hasData:
		// JSON data is the payload in JSON; a JSON string holding something
		// else is not what this edge accepts (use data_base64).
		if ev.Datacontenttype == "" {
			ev.Datacontenttype = schemas.ContentTypeJSON
		}
		ev.Data = data
	}

	for name, v := range attrs {
		switch name {
		case attrSpecVersion, attrID, attrSource, attrType, attrSubject, attrTime,
			attrDataContentType, attrDataSchema, attrData, attrDataBase64:
			continue
		}
		if msg := checkExtensionName(name); msg != "" {
			bad(name, "%s", msg)
			continue
		}
		s, err := extensionValue(v)
		if err != nil {
			bad(name, "%v", err)
			continue
		}
		if ev.Extensions == nil {
			ev.Extensions = make(map[string]string)
		}
		ev.Extensions[name] = s
	}
	return ev, errs
}

// extensionValue returns the string form of an extension attribute: a string,
// a number or a boolean.
func extensionValue(v jsontext.Value) (string, error) {
	var x any
	if err := json.Unmarshal(v, &x); err != nil {
		return "", err
	}
	switch x := x.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case float64:
		return string(v), nil
	}
	return "", fmt.Errorf("extension values are strings, numbers or booleans")
}
