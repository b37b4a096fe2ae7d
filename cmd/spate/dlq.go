package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/cekafka"
	"github.com/spate-io/spate/consumers"
	"github.com/spate-io/spate/consumers/fanout"
	"github.com/spate-io/spate/consumers/projection"
)

func newDLQCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect the dead-letter topic, and re-drive dead letters once their cause is fixed",
		Long: `A record that a sink can never apply (it is not an event, its type is unknown,
its payload does not decode, or a projection rejects it with a data exception
or a constraint violation) is written by its consumer group to <topic>.dlq,
with headers naming the group, the sink (projection or route), the error
class, the reason and where it was. The group skips it as a whole: none of
the group's projections holds it.

list and show read the dead-letter topic and change nothing. redrive applies
chosen projector dead letters to every projection, exactly once, once their
cause is fixed.

Filters: --group (default spate-project) and --id for every command;
--projection, --error-class and --since for list and redrive.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newDLQListCmd(), newDLQShowCmd(), newDLQRedriveCmd())
	return cmd
}

// dlqFlags are the flags the dlq commands share.
type dlqFlags struct {
	logFlags
	kafkaFlags
	schemas string

	group      string
	groupGiven bool // on the command line, not from SPATE_GROUP
	allGroups  bool // list and show
	projection string
	class      string
	since      string
	id         string
}

// register adds the flags that, like those of the roles, fall back on
// SPATE_* environment variables.
func (f *dlqFlags) register(fs *pflag.FlagSet) {
	f.logFlags.register(fs)
	f.kafkaFlags.register(fs, []string{"127.0.0.1:9092"})
	fs.StringVar(&f.schemas, "schemas", "", "a FileDescriptorSet (buf build -o FILE.binpb) with event types besides the compiled-in ones")
	fs.StringVar(&f.group, "group", projection.DefaultGroup, "the consumer group whose dead letters to take (header spate_dlq_group)")
}

// registerSelection adds the filters, after annotateEnv: like the other
// flags that choose dead letters or what to do with them, they are taken
// from the command line only (cmdLineOnly).
func (f *dlqFlags) registerSelection(fs *pflag.FlagSet, allGroups bool) {
	if allGroups {
		fs.BoolVar(&f.allGroups, "all-groups", false, "take the dead letters of every group (not with --group)")
		cmdLineOnly(fs, "all-groups")
	}
	fs.StringVar(&f.projection, "projection", "", "only dead letters of this projection (header spate_dlq_sink)")
	fs.StringVar(&f.class, "error-class", "", "only dead letters of this error class, e.g. integrity-constraint-violation, data-exception, unknown-type, payload, envelope")
	fs.StringVar(&f.since, "since", "", "only dead letters written since a time (RFC 3339) or a duration ago (-24h)")
	fs.StringVar(&f.id, "id", "", "only dead letters of the event with this id")
	cmdLineOnly(fs, "projection", "error-class", "since", "id")
}

// preRun is the commands' PersistentPreRunE: the root's, except that it
// notes first whether --group was given on the command line: a SPATE_GROUP
// in the environment (set for spate project or fanout) does not contradict
// --all-groups.
func (f *dlqFlags) preRun(cmd *cobra.Command, _ []string) error {
	f.groupGiven = cmd.Flags().Changed("group")
	return envFallback(cmd.Flags())
}

// open returns the selection the flags make and what the command is built
// from, logging to its standard error.
func (f *dlqFlags) open(cmd *cobra.Command) (dlqFilter, *env, error) {
	flt, err := f.filter(time.Now())
	if err != nil {
		return flt, nil, err
	}
	e, err := newEnv(&f.logFlags, &f.kafkaFlags, f.schemas, cmd.ErrOrStderr())
	return flt, e, err
}

// filter returns the selection the flags make. It refuses ambiguous or
// meaningless input.
func (f *dlqFlags) filter(now time.Time) (dlqFilter, error) {
	flt := dlqFilter{group: f.group, sink: f.projection, class: f.class, id: f.id}
	if f.allGroups {
		if f.groupGiven {
			return flt, fmt.Errorf("--all-groups and --group %s contradict each other: give one", f.group)
		}
		flt.group = ""
	} else if f.group == "" {
		return flt, fmt.Errorf("--group is empty: name a consumer group, or give --all-groups where the command has it")
	}
	if f.since != "" {
		p, err := parsePosition("since", f.since, now, false)
		if err != nil {
			return flt, fmt.Errorf("%w (--since takes a time or a duration ago; earliest: all)", err)
		}
		switch p.kind {
		case atLatest:
			return flt, fmt.Errorf("--since latest would select nothing: give a time (RFC 3339) or a duration ago (-24h)")
		case atTime:
			flt.since = p
		}
	}
	return flt, nil
}

// selective reports whether the flags select particular dead letters.
func (f *dlqFlags) selective() bool {
	return f.projection != "" || f.class != "" || f.since != "" || f.id != ""
}

// dlqFilter selects dead letters.
type dlqFilter struct {
	group, sink, class, id string // "": any
	since                  position
}

// match reports whether d passes the filter; other reports whether it
// passes every part of it but the group.
func (f dlqFilter) match(d *consumers.DeadLetter) (ok, other bool) {
	if f.sink != "" && d.Sink != f.sink || f.class != "" && d.Class != f.class || f.id != "" && d.EventID != f.id ||
		f.since.kind == atTime && d.Time.Before(f.since.time) {
		return false, false
	}
	if f.group != "" && d.Group != f.group {
		return false, true
	}
	return true, false
}

// dlqAt is a record of the dead-letter topic, as PARTITION:OFFSET.
type dlqAt struct {
	partition int32
	offset    int64
}

func parseDLQAt(s string) (dlqAt, error) {
	ps, offs, ok := strings.Cut(s, ":")
	p, perr := strconv.ParseInt(ps, 10, 32)
	o, oerr := strconv.ParseInt(offs, 10, 64)
	if !ok || perr != nil || oerr != nil || p < 0 || o < 0 {
		return dlqAt{}, fmt.Errorf("%q: want PARTITION:OFFSET of a record of the dead-letter topic, such as 0:42, as spate dlq list prints them", s)
	}
	return dlqAt{int32(p), o}, nil
}

func (a dlqAt) String() string { return fmt.Sprintf("%d:%d", a.partition, a.offset) }

// dlqReader reads the dead-letter topic of an environment.
type dlqReader struct {
	e      *env
	topic  string // the dead-letter topic
	stderr io.Writer
}

// scan reads the dead-letter topic partition by partition, without a
// consumer group, from the start (or from since) up to the end offsets at
// the time of the call, and calls fn with each record. It shows progress
// on stderr.
func (rd dlqReader) scan(ctx context.Context, since position, fn func(*kgo.Record) error) error {
	cl, err := kgo.NewClient(rd.e.kafkaOpts("spate-dlq")...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	from, ends, err := bounds(ctx, adm, rd.topic)
	if err != nil {
		return err
	}
	if since.kind == atTime {
		if from, err = since.resolve(ctx, adm, rd.topic); err != nil {
			return err
		}
	}
	var total int64
	for p, end := range ends {
		total += max(end-from[p], 0)
	}
	prog := startProgress(rd.stderr, rd.e.log, "reading "+rd.topic, total)
	defer prog.finish()
	return consumers.ReadRange(ctx, rd.e.kafkaOpts("spate-dlq"), rd.topic, from, ends, func(r *kgo.Record) error {
		prog.add(1)
		if r.Attrs.IsControl() { // a transaction's marker: not a record anyone wrote
			return nil
		}
		return fn(r)
	})
}

// at reads the record at a of the dead-letter topic.
func (rd dlqReader) at(ctx context.Context, a dlqAt) (*kgo.Record, error) {
	cl, err := kgo.NewClient(rd.e.kafkaOpts("spate-dlq")...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	starts, ends, err := bounds(ctx, kadm.NewClient(cl), rd.topic)
	if err != nil {
		return nil, err
	}
	end, ok := ends[a.partition]
	switch {
	case !ok:
		return nil, fmt.Errorf("no record at %s: %s has %d partitions, from 0", a, rd.topic, len(ends))
	case starts[a.partition] >= end:
		return nil, fmt.Errorf("no record at %s: partition %d of %s holds none", a, a.partition, rd.topic)
	case a.offset < starts[a.partition] || a.offset >= end:
		return nil, fmt.Errorf("no record at %s: partition %d of %s holds the records at offsets %d to %d", a, a.partition, rd.topic, starts[a.partition], end-1)
	}
	cc, err := kgo.NewClient(append(rd.e.kafkaOpts("spate-dlq"),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{rd.topic: {a.partition: kgo.NewOffset().At(a.offset)}}))...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	defer cc.Close()
	for {
		fs := cc.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errs := fs.Errors(); len(errs) > 0 {
			return nil, fmt.Errorf("read %s partition %d: %w", errs[0].Topic, errs[0].Partition, errs[0].Err)
		}
		for _, r := range fs.Records() {
			if r.Offset < a.offset {
				continue
			}
			if r.Offset > a.offset {
				return nil, fmt.Errorf("no record at %s: the partition continues at offset %d", a, r.Offset)
			}
			return r, nil
		}
	}
}

// redrivenLookup says whether dead letters were re-driven, from the
// spate_redrives table of a Postgres database. It changes nothing.
type redrivenLookup struct {
	pool  *pgxpool.Pool
	e     *env
	projs map[string]*projection.Projector // by group
}

func newRedrivenLookup(ctx context.Context, e *env, url string) (*redrivenLookup, error) {
	if url == "" {
		return nil, nil
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return &redrivenLookup{pool: pool, e: e, projs: map[string]*projection.Projector{}}, nil
}

// redriven returns whether d was re-driven; nil when l is nil.
func (l *redrivenLookup) redriven(ctx context.Context, d *consumers.DeadLetter) (*bool, error) {
	if l == nil {
		return nil, nil
	}
	p := l.projs[d.Group]
	if p == nil {
		// Built only to read spate_redrives: not migrated, never applies.
		p = projection.New(l.pool, l.e.reg, projection.Config{Group: d.Group})
		l.projs[d.Group] = p
	}
	ok, err := p.Redriven(ctx, d.Record)
	if err != nil {
		return nil, err
	}
	return &ok, nil
}

func (l *redrivenLookup) close() {
	if l != nil {
		l.pool.Close()
	}
}

// dlqLine is a dead letter as list and redrive print it in NDJSON.
type dlqLine struct {
	Result       string    `json:"result,omitempty"` // redrive
	DLQTopic     string    `json:"dlq_topic"`
	DLQPartition int32     `json:"dlq_partition"`
	DLQOffset    int64     `json:"dlq_offset"`
	Time         time.Time `json:"time"`
	Group        string    `json:"group"`
	Sink         string    `json:"sink"`
	Class        string    `json:"class"`
	Reason       string    `json:"reason"`
	EventID      string    `json:"event_id"`
	EventType    string    `json:"event_type"`
	Subject      string    `json:"subject"`
	Topic        string    `json:"topic"`
	Partition    int32     `json:"partition"`
	Offset       int64     `json:"offset"`
	Redriven     *bool     `json:"redriven,omitempty"` // with --postgres-url
	// redrive, when the event could not be applied:
	FailedSink  string `json:"failed_sink,omitempty"`
	FailedClass string `json:"failed_class,omitempty"`
	Error       string `json:"error,omitempty"`
}

func newDLQLine(d *consumers.DeadLetter) dlqLine {
	return dlqLine{
		DLQTopic: d.Record.Topic, DLQPartition: d.Record.Partition, DLQOffset: d.Record.Offset,
		Time: d.Time.UTC(), Group: d.Group, Sink: d.Sink, Class: d.Class, Reason: d.Reason,
		EventID: d.EventID, EventType: d.EventType, Subject: d.Subject,
		Topic: d.Topic, Partition: d.Partition, Offset: d.Offset,
	}
}

// writeJSONLine writes v as one line of NDJSON.
func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// dash stands in for an empty column.
func dash(s string) string { return cmp.Or(s, "-") }

// shortReason returns the gist of a reason for a column: from Postgres's
// "ERROR:" on when it has one, on one line, at most 100 characters.
func shortReason(s string) string {
	if i := strings.LastIndex(s, "ERROR: "); i >= 0 {
		s = s[i+len("ERROR: "):]
	}
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) > 100 {
		s = string([]rune(s)[:99]) + "…"
	}
	return dash(s)
}

// otherGroupsNote says which other groups' dead letters matched a filter
// that none of the group's matched; "" when none did.
func otherGroupsNote(others map[string]int) string {
	if len(others) == 0 {
		return ""
	}
	var parts []string
	for _, g := range slices.Sorted(maps.Keys(others)) {
		parts = append(parts, fmt.Sprintf("%s: %d", g, others[g]))
	}
	return "dead letters of other groups match (" + strings.Join(parts, ", ") + ")"
}

func newDLQListCmd() *cobra.Command {
	var (
		f      dlqFlags
		pgURL  string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the dead letters of a consumer group, one a line",
		Long: `List reads the dead-letter topic (<topic>.dlq) from its start, or from --since,
to its end when the command starts, and prints each dead letter that passes
the filters: its place in the dead-letter topic (PARTITION:OFFSET, for show
and redrive), when it was dead-lettered, the group, the sink (projection or
route), the error class, the event's type and id, where it was
(topic/partition@offset), and the reason, shortened.

On a terminal it prints aligned columns; otherwise, or with --json, one JSON
object a line (NDJSON) with the whole reason. With --postgres-url it also
says which dead letters were re-driven. List changes nothing.`,
		Example: `  spate dlq list
  spate dlq list --projection orders --error-class integrity-constraint-violation --since -24h
  spate dlq list --all-groups --json | jq -r .reason
  spate dlq list --postgres-url postgres://spate@db/spate   # with a REDRIVEN column`,
		Args:              cobra.NoArgs,
		PersistentPreRunE: f.preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			flt, e, err := f.open(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			look, err := newRedrivenLookup(ctx, e, pgURL)
			if err != nil {
				return err
			}
			defer look.close()
			out := cmd.OutOrStdout()
			jsonOut := outputJSON(cmd, asJSON, out)
			var lines []dlqLine // for people: printed aligned at the end
			others := map[string]int{}
			var notDead []string
			matched := 0
			rd := dlqReader{e: e, topic: consumers.DLQTopic(e.topic), stderr: cmd.ErrOrStderr()}
			err = rd.scan(ctx, flt.since, func(r *kgo.Record) error {
				d, err := consumers.ParseDeadLetter(r)
				if err != nil {
					notDead = append(notDead, dlqAt{r.Partition, r.Offset}.String())
					return nil
				}
				ok, other := flt.match(d)
				if other {
					others[d.Group]++
				}
				if !ok {
					return nil
				}
				matched++
				l := newDLQLine(d)
				if l.Redriven, err = look.redriven(ctx, d); err != nil {
					return err
				}
				if jsonOut {
					return writeJSONLine(out, l)
				}
				lines = append(lines, l)
				return nil
			})
			if err != nil {
				return err
			}
			if !jsonOut {
				if err := printDLQTable(out, lines, look != nil); err != nil {
					return err
				}
			}
			stderr := cmd.ErrOrStderr()
			if len(notDead) > 0 {
				fmt.Fprintf(stderr, "note: %d records of %s are not dead letters (no spate_dlq_* headers), e.g. %s; spate dlq show %s prints one\n",
					len(notDead), rd.topic, notDead[0], notDead[0])
			}
			if flt.group != "" && len(others) > 0 && matched == 0 {
				fmt.Fprintf(stderr, "note: no dead letter of %s matches; %s: give --group or --all-groups\n", flt.group, otherGroupsNote(others))
			}
			return nil
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringVar(&pgURL, "postgres-url", "", "PostgreSQL of the projections, to say which dead letters were re-driven (default: not said)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print NDJSON (default: when stdout is not a terminal)")
	annotateEnv(cmd.Flags())
	f.registerSelection(cmd.Flags(), true)
	return cmd
}

// printDLQTable prints dead letters in aligned columns, by place.
func printDLQTable(w io.Writer, lines []dlqLine, redriven bool) error {
	if len(lines) == 0 {
		_, err := fmt.Fprintln(w, "no dead letter matches")
		return err
	}
	slices.SortFunc(lines, func(a, b dlqLine) int {
		return cmp.Or(cmp.Compare(a.DLQPartition, b.DLQPartition), cmp.Compare(a.DLQOffset, b.DLQOffset))
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := "DLQ\tTIME\tGROUP\tSINK\tCLASS\tTYPE\tID\tFROM"
	if redriven {
		head += "\tREDRIVEN"
	}
	fmt.Fprintln(tw, head+"\tREASON")
	for _, l := range lines {
		cols := []string{
			dlqAt{l.DLQPartition, l.DLQOffset}.String(), l.Time.Format("2006-01-02T15:04:05.000Z07:00"),
			dash(l.Group), dash(l.Sink), dash(l.Class), dash(l.EventType), dash(l.EventID),
			fmt.Sprintf("%s/%d@%d", l.Topic, l.Partition, l.Offset),
		}
		if redriven {
			cols = append(cols, map[bool]string{true: "yes", false: "no"}[l.Redriven != nil && *l.Redriven])
		}
		fmt.Fprintln(tw, strings.Join(append(cols, shortReason(l.Reason)), "\t"))
	}
	return tw.Flush()
}

// dlqShow is everything about a record of the dead-letter topic.
type dlqShow struct {
	*dlqLine
	NotDeadLetter string          `json:"not_dead_letter,omitempty"`
	Key           *string         `json:"key,omitempty"`
	KeyBase64     []byte          `json:"key_base64,omitempty"`
	Headers       []dlqHeader     `json:"headers"`
	Event         *dlqEvent       `json:"event,omitempty"`
	EventError    string          `json:"event_error,omitempty"`
	Data          json.RawMessage `json:"data,omitempty"`
	DataError     string          `json:"data_error,omitempty"`
	DataBase64    []byte          `json:"data_base64,omitempty"`
}

type dlqHeader struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type dlqEvent struct {
	ID              string            `json:"id"`
	Source          string            `json:"source"`
	Type            string            `json:"type"`
	Subject         string            `json:"subject,omitempty"`
	Time            *time.Time        `json:"time,omitempty"`
	DataContentType string            `json:"datacontenttype,omitempty"`
	DataSchema      string            `json:"dataschema,omitempty"`
	Extensions      map[string]string `json:"extensions,omitempty"`
}

// showRecord describes r, decoding its payload with the registry.
func showRecord(e *env, r *kgo.Record) dlqShow {
	var s dlqShow
	if d, err := consumers.ParseDeadLetter(r); err == nil {
		l := newDLQLine(d)
		s.dlqLine = &l
	} else {
		s.dlqLine = &dlqLine{DLQTopic: r.Topic, DLQPartition: r.Partition, DLQOffset: r.Offset, Time: r.Timestamp.UTC()}
		s.NotDeadLetter = err.Error()
	}
	if r.Key != nil {
		if utf8.Valid(r.Key) {
			k := string(r.Key)
			s.Key = &k
		} else {
			s.KeyBase64 = r.Key
		}
	}
	s.Headers = []dlqHeader{}
	for _, h := range r.Headers {
		s.Headers = append(s.Headers, dlqHeader{h.Key, string(h.Value)})
	}
	ev, err := cekafka.Event(r)
	if err != nil {
		s.EventError = err.Error()
		s.DataBase64 = r.Value
		return s
	}
	s.Event = &dlqEvent{ID: ev.Id, Source: ev.Source, Type: ev.Type, Subject: ev.Subject,
		DataContentType: ev.Datacontenttype, DataSchema: ev.Dataschema, Extensions: ev.Extensions}
	if ev.Time != nil {
		t := ev.Time.AsTime()
		s.Event.Time = &t
	}
	data, err := e.reg.JSON(ev.Type, ev.Datacontenttype, ev.Data)
	if err != nil {
		s.DataError = err.Error()
		s.DataBase64 = r.Value
		return s
	}
	s.Data = data
	return s
}

func newDLQShowCmd() *cobra.Command {
	var (
		f     dlqFlags
		pgURL string
	)
	cmd := &cobra.Command{
		Use:   "show PARTITION:OFFSET | --id EVENT_ID",
		Short: "Show dead letters in full, payload included, as JSON",
		Long: `Show prints a record of the dead-letter topic in full: the dead-letter headers,
where the event was, its key and every header, its CloudEvents attributes,
and its payload as JSON, decoded with the event type's schema (base64 when
it does not decode, with the reason).

Name the record by its place in the dead-letter topic, PARTITION:OFFSET as
spate dlq list prints it, or by the event's id with --id, which prints every
dead letter of that event in --group (or in any group with --all-groups).
On a terminal the JSON is indented; otherwise each record is one line.
With --postgres-url it also says whether the dead letter was re-driven.`,
		Example: `  spate dlq show 0:42
  spate dlq show --id order-1001-placed --all-groups
  spate dlq show 0:42 | jq .data`,
		Args:              positional(0, 1, "one PARTITION:OFFSET"),
		PersistentPreRunE: f.preRun,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 1 && f.id != "":
				return fmt.Errorf("give PARTITION:OFFSET or --id, not both")
			case len(args) == 0 && f.id == "":
				return fmt.Errorf("show what? Give PARTITION:OFFSET of the dead-letter topic (see spate dlq list) or --id EVENT_ID")
			case f.projection != "" || f.class != "" || f.since != "":
				return fmt.Errorf("show takes PARTITION:OFFSET or --id; to filter by projection, class or time use spate dlq list")
			}
			var at dlqAt
			if len(args) == 1 {
				var err error
				if at, err = parseDLQAt(args[0]); err != nil {
					return err
				}
				if f.groupGiven || f.allGroups {
					return fmt.Errorf("PARTITION:OFFSET names one record: --group and --all-groups do not apply")
				}
			}
			flt, e, err := f.open(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			look, err := newRedrivenLookup(ctx, e, pgURL)
			if err != nil {
				return err
			}
			defer look.close()
			out := cmd.OutOrStdout()
			indent := isTerminal(out)
			show := func(r *kgo.Record) error {
				s := showRecord(e, r)
				if d, err := consumers.ParseDeadLetter(r); err == nil {
					if s.Redriven, err = look.redriven(ctx, d); err != nil {
						return err
					}
				}
				if !indent {
					return writeJSONLine(out, s)
				}
				b, err := json.MarshalIndent(s, "", "  ")
				if err != nil {
					return err
				}
				_, err = out.Write(append(b, '\n'))
				return err
			}
			rd := dlqReader{e: e, topic: consumers.DLQTopic(e.topic), stderr: cmd.ErrOrStderr()}
			if len(args) == 1 {
				r, err := rd.at(ctx, at)
				if err != nil {
					return err
				}
				return show(r)
			}
			var found []*kgo.Record
			others := map[string]int{}
			err = rd.scan(ctx, position{}, func(r *kgo.Record) error {
				d, err := consumers.ParseDeadLetter(r)
				if err != nil {
					return nil
				}
				ok, other := flt.match(d)
				if other {
					others[d.Group]++
				}
				if ok {
					found = append(found, r)
				}
				return nil
			})
			if err != nil {
				return err
			}
			if len(found) == 0 {
				if note := otherGroupsNote(others); note != "" {
					return fmt.Errorf("no dead letter of event %s in group %s; %s: give --group or --all-groups", f.id, flt.group, note)
				}
				return fmt.Errorf("no dead letter of event %s in %s", f.id, rd.topic)
			}
			for _, r := range found {
				if err := show(r); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringVar(&pgURL, "postgres-url", "", "PostgreSQL of the projections, to say whether the dead letter was re-driven (default: not said)")
	annotateEnv(cmd.Flags())
	f.registerSelection(cmd.Flags(), true)
	// Show takes one dead letter; it refuses the filters with advice.
	for _, name := range []string{"projection", "error-class", "since"} {
		cmd.Flags().MarkHidden(name)
	}
	return cmd
}

// fanoutAdvice says how to repair dead letters of the fan-out.
const fanoutAdvice = "spate dlq redrive applies projector dead letters only; " +
	"repair dead letters of the fan-out (such as an event whose stream key breaks its route's rules) " +
	"by fixing the routes in spate.yaml, restarting spate fanout with them, " +
	"and copying the events into their streams with spate replay stream (see spate replay stream --help)"

// fanoutDeadLetter reports whether d was written by a fan-out group: one
// of its routes failed.
func fanoutDeadLetter(d *consumers.DeadLetter) bool {
	return d.Class == "stream-key" || strings.HasPrefix(d.Sink, "route ")
}

// redriveAttempts is how often redrive tries an event whose failure is
// worth retrying (a lost connection, a deadlock) before reporting it.
const redriveAttempts = 5

func newDLQRedriveCmd() *cobra.Command {
	var (
		f                  dlqFlags
		pgURL, config      string
		all, dryRun, asJSN bool
	)
	cmd := &cobra.Command{
		Use:   "redrive [PARTITION:OFFSET...]",
		Short: "Apply chosen projector dead letters to every projection, exactly once, once their cause is fixed",
		Long: `Redrive applies dead letters of a projector group (--group, default
spate-project) to every projection of --config, the spate.yaml of spate
project with the fix in it (a new migration that relaxes a constraint, say).
The group skipped each dead-lettered event as a whole, so redrive applies it
to all of them, at its original topic, partition and offset, as if it had
never failed; a projection that spate replay projection rebuilt since, and
whose new tables hold the event, is left out. Dead letters are applied in
the order of their original offsets.

Like spate project, redrive first runs the migrations of --config and
records its definitions: projectors still running an older file then stop
applying (and say why) until they are restarted with the new one.

Exactly once: one transaction applies the event and records the re-drive in
spate_redrives, so a dead letter already re-driven, by this run or another,
concurrent or earlier, is not applied again ("already-redriven"), and
neither is a second dead letter of the same event. Nor is a dead letter of
an event the group applied itself after all (it stopped after writing the
dead letter, before moving past the event): redrive reports it failed. An
event that a projection still rejects commits nothing; redrive reports it
with the projection and the error class, goes on with the others, and exits
non-zero.

Choose dead letters by PARTITION:OFFSET (as spate dlq list prints them) or
by filters: --projection, --error-class, --since and --id. To re-drive every
dead letter of the group, say so with --all. --dry-run prints what would be
re-driven and what was already, and changes nothing, not even migrations.

Output: one line a dead letter (redriven, already-redriven, failed, or with
--dry-run would-redrive), NDJSON when stdout is not a terminal or with --json.

Dead letters of the fan-out (spate-fanout) are refused: redrive says how to
repair them.`,
		Example: `  spate dlq redrive --projection orders --error-class integrity-constraint-violation --config spate.yaml --dry-run
  spate dlq redrive --projection orders --error-class integrity-constraint-violation --config spate.yaml
  spate dlq redrive 0:42 1:7 --config spate.yaml
  SPATE_POSTGRES_URL=postgres://spate@db/spate spate dlq redrive --all --config spate.yaml`,
		PersistentPreRunE: f.preRun,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) > 0 && f.selective():
				return fmt.Errorf("give PARTITION:OFFSET or filters (--projection, --error-class, --since, --id), not both")
			case all && (len(args) > 0 || f.selective()):
				return fmt.Errorf("--all re-drives every dead letter of group %s: drop it, or drop the selection", f.group)
			case !all && len(args) == 0 && !f.selective():
				return fmt.Errorf("redrive which dead letters? Give PARTITION:OFFSET (see spate dlq list), or filters (--projection, --error-class, --since, --id), or --all for every dead letter of group %s", f.group)
			case f.group == fanout.DefaultGroup:
				return fmt.Errorf("--group %s: %s", f.group, fanoutAdvice)
			case pgURL == "":
				return fmt.Errorf("--postgres-url is required: the projections, and the record of re-drives, are there")
			}
			var ats []dlqAt
			for _, a := range args {
				at, err := parseDLQAt(a)
				if err != nil {
					return err
				}
				if slices.Contains(ats, at) {
					return fmt.Errorf("%s is given twice", at)
				}
				ats = append(ats, at)
			}
			flt, e, err := f.open(cmd)
			if err != nil {
				return err
			}
			cfg, err := e.loadConfig(config, nil)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			rd := dlqReader{e: e, topic: consumers.DLQTopic(e.topic), stderr: cmd.ErrOrStderr()}
			chosen, err := redriveSelection(ctx, rd, ats, flt)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			jsonOut := outputJSON(cmd, asJSN, out)
			if len(chosen) == 0 {
				msg := fmt.Sprintf("no dead letter of group %s matches: nothing to re-drive", f.group)
				if jsonOut {
					e.log.Info(msg)
				} else {
					fmt.Fprintln(out, msg)
				}
				return nil
			}

			if err := checkRedriveSinks(chosen, cfg.projections, config); err != nil {
				return err
			}

			adm, err := kgo.NewClient(e.kafkaOpts("spate-dlq")...)
			if err != nil {
				return fmt.Errorf("kafka client: %w", err)
			}
			defer adm.Close()
			pool, err := pgxpool.New(ctx, pgURL)
			if err != nil {
				return fmt.Errorf("postgres: %w", err)
			}
			defer pool.Close()
			p := projection.New(pool, e.reg, projection.Config{Group: f.group, Projections: cfg.projections,
				Logger: e.log.With("role", "redrive"), LogStart: logStartOf(adm)})
			if !dryRun { // not migrated: a dry run changes nothing
				if err := p.Migrate(ctx); err != nil {
					return err
				}
			}

			prog := startProgress(cmd.ErrOrStderr(), e.log, map[bool]string{true: "checking", false: "re-driving"}[dryRun], int64(len(chosen)))
			one := func(ctx context.Context, d *consumers.DeadLetter, l *dlqLine) (string, error) {
				return redriveOne(ctx, p, d, dryRun, l)
			}
			counts, err := redriveEach(ctx, chosen, one, out, jsonOut, prog)
			summary := redriveSummary(counts, len(chosen), dryRun, err != nil)
			if jsonOut {
				e.log.Info(summary)
			} else {
				fmt.Fprintln(out, summary)
			}
			if err != nil {
				return err
			}
			if n := counts["failed"]; n > 0 {
				return fmt.Errorf("%d of %d dead letters could not be re-driven, and nothing of them was committed: fix the cause and run again (what was re-driven will not be again)", n, len(chosen))
			}
			return nil
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringVar(&pgURL, "postgres-url", "", "PostgreSQL connection URL of the projections (required)")
	cmd.Flags().StringVar(&config, "config", "", "spate.yaml with the projections, as given to spate project, with the fix (default: event_log alone)")
	cmd.Flags().BoolVar(&asJSN, "json", false, "print NDJSON (default: when stdout is not a terminal)")
	annotateEnv(cmd.Flags())
	f.registerSelection(cmd.Flags(), false)
	cmd.Flags().BoolVar(&all, "all", false, "re-drive every dead letter of --group (instead of a selection)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be re-driven and what was already; change nothing")
	cmdLineOnly(cmd.Flags(), "all", "dry-run")
	return cmd
}

// checkRedriveSinks refuses dead letters of projections that projs, read
// from config, lacks: applied to the others alone, an event would be marked
// re-driven and never reach the projection that failed on it.
func checkRedriveSinks(chosen []*consumers.DeadLetter, projs []projection.Projection, config string) error {
	if len(projs) == 0 {
		projs = []projection.Projection{projection.EventLog()} // as the projector defaults
	}
	have := projection.Names(projs)
	missing := map[string][]string{}
	for _, d := range chosen {
		if d.Sink != "" && !slices.Contains(have, d.Sink) {
			missing[d.Sink] = append(missing[d.Sink], fmt.Sprintf("%d:%d", d.Record.Partition, d.Record.Offset))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	var msgs []string
	for _, name := range slices.Sorted(maps.Keys(missing)) {
		msgs = append(msgs, fmt.Sprintf("%s (%s)", name, strings.Join(missing[name], " ")))
	}
	source := "--config " + config + " does not define"
	if config == "" {
		source = "event_log alone runs without --config, not"
	}
	return fmt.Errorf("the dead letters of %s: %s them; give --config with the projections spate project runs, fixed. Nothing was re-driven",
		strings.Join(msgs, ", "), source)
}

// redriveSelection returns the dead letters to re-drive: those at ats, or
// else those that pass flt, in the order of their original offsets. It
// refuses records that are not dead letters of the group, and fan-out dead
// letters.
func redriveSelection(ctx context.Context, rd dlqReader, ats []dlqAt, flt dlqFilter) ([]*consumers.DeadLetter, error) {
	var chosen []*consumers.DeadLetter
	others := map[string]int{}
	fanouts := 0
	for _, at := range ats {
		r, err := rd.at(ctx, at)
		if err != nil {
			return nil, err
		}
		d, err := consumers.ParseDeadLetter(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", at, err)
		}
		if fanoutDeadLetter(d) {
			return nil, fmt.Errorf("%s is a dead letter of the fan-out group %s (%s): %s", at, d.Group, d.Class, fanoutAdvice)
		}
		if d.Group != flt.group {
			return nil, fmt.Errorf("%s is a dead letter of group %s, not %s: give --group %s to re-drive it", at, d.Group, flt.group, d.Group)
		}
		chosen = append(chosen, d)
	}
	if len(ats) == 0 {
		err := rd.scan(ctx, flt.since, func(r *kgo.Record) error {
			d, err := consumers.ParseDeadLetter(r)
			if err != nil {
				return nil // not a dead letter: nothing to re-drive
			}
			ok, other := flt.match(d)
			if other {
				others[d.Group]++
			}
			if ok {
				if fanoutDeadLetter(d) {
					fanouts++
				}
				chosen = append(chosen, d)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	switch {
	case fanouts > 0:
		return nil, fmt.Errorf("%d of the %d dead letters chosen in group %s are the fan-out's (class stream-key or a route): %s", fanouts, len(chosen), flt.group, fanoutAdvice)
	case len(chosen) == 0 && len(others) > 0:
		msg := fmt.Sprintf("no dead letter of group %s matches; %s", flt.group, otherGroupsNote(others))
		if _, ok := others[fanout.DefaultGroup]; ok {
			msg += ". " + fanoutAdvice
		}
		return nil, errors.New(msg)
	}
	slices.SortStableFunc(chosen, func(a, b *consumers.DeadLetter) int {
		return cmp.Or(cmp.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Offset, b.Offset))
	})
	return chosen, nil
}

// redriveOne re-drives d (or with dryRun says whether it would), retrying
// failures worth retrying, and returns the result; the reason of a failure
// goes into l. The error is only for ctx ending.
func redriveOne(ctx context.Context, p *projection.Projector, d *consumers.DeadLetter, dryRun bool, l *dlqLine) (string, error) {
	if dryRun {
		done, err := p.Redriven(ctx, d.Record)
		if err != nil {
			return "", err
		}
		if done {
			return "already-redriven", nil
		}
		return "would-redrive", nil
	}
	wait := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		applied, err := p.Redrive(ctx, d.Record)
		switch {
		case err == nil && applied:
			return "redriven", nil
		case err == nil:
			return "already-redriven", nil
		case ctx.Err() != nil:
			return "", ctx.Err()
		}
		if errors.Is(err, projection.ErrDefinitionChanged) {
			return "", err // every dead letter would fail the same way
		}
		var pe *consumers.PoisonError
		var missing *projection.MissingProjectionError
		if errors.As(err, &pe) || errors.As(err, &missing) || errors.Is(err, projection.ErrNotPassed) || errors.Is(err, projection.ErrAppliedByGroup) || attempt == redriveAttempts {
			if pe != nil {
				l.FailedSink, l.FailedClass = pe.Sink, pe.Class
			}
			l.Error = err.Error()
			return "failed", nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(wait/2 + rand.N(wait/2+1)):
		}
		wait *= 2
	}
}

// logStartOf returns where Kafka's log of a partition starts, as
// projection.Config.LogStart asks, through cl.
func logStartOf(cl *kgo.Client) func(context.Context, string, int32) (int64, error) {
	return func(ctx context.Context, topic string, partition int32) (int64, error) {
		starts, err := kadm.NewClient(cl).ListStartOffsets(ctx, topic)
		if err != nil {
			return 0, err
		}
		o, ok := starts.Lookup(topic, partition)
		if !ok {
			return 0, fmt.Errorf("no partition %s/%d", topic, partition)
		}
		return o.Offset, o.Err
	}
}

// redriveEach re-drives the dead letters chosen in order, through one, and
// writes each result to out: as a line of NDJSON at once, or for people in
// a table once done. It returns how many got each result. It stops at the
// first error (ctx ended, or a failure every dead letter would share), and
// writes the results it had first: what was re-driven before is committed.
func redriveEach(ctx context.Context, chosen []*consumers.DeadLetter, one func(context.Context, *consumers.DeadLetter, *dlqLine) (string, error),
	out io.Writer, jsonOut bool, prog *progress) (map[string]int, error) {
	var lines []dlqLine // for people: printed at the end, after the progress bar
	counts := map[string]int{}
	var err error
	for _, d := range chosen {
		l := newDLQLine(d)
		if l.Result, err = one(ctx, d, &l); err != nil {
			break
		}
		counts[l.Result]++
		prog.add(1)
		if jsonOut {
			if err = writeJSONLine(out, l); err != nil {
				break
			}
		} else {
			lines = append(lines, l)
		}
	}
	prog.finish()
	if !jsonOut {
		err = cmp.Or(err, printRedriveLines(out, lines))
	}
	return counts, err
}

// redriveSummary sums up counts, the results of re-driving the dead letters
// of a selection of chosen, all of them unless stopped.
func redriveSummary(counts map[string]int, chosen int, dryRun, stopped bool) string {
	done := counts["redriven"] + counts["already-redriven"] + counts["failed"] + counts["would-redrive"]
	of := fmt.Sprintf("%d dead letters", chosen)
	if stopped {
		of = fmt.Sprintf("stopped after %d of %d dead letters", done, chosen)
	}
	if dryRun {
		return fmt.Sprintf("dry run, nothing changed: %s: %d would be re-driven, %d already re-driven",
			of, counts["would-redrive"], counts["already-redriven"])
	}
	return fmt.Sprintf("%s: %d re-driven, %d already re-driven, %d failed",
		of, counts["redriven"], counts["already-redriven"], counts["failed"])
}

// printRedriveLines prints redrive results for people, one a line.
func printRedriveLines(w io.Writer, lines []dlqLine) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, l := range lines {
		cols := []string{l.Result, dlqAt{l.DLQPartition, l.DLQOffset}.String(), dash(l.EventType), dash(l.EventID),
			fmt.Sprintf("%s/%d@%d", l.Topic, l.Partition, l.Offset)}
		if l.Result == "failed" {
			cols = append(cols, dash(l.FailedSink)+" "+dash(l.FailedClass)+": "+shortReason(l.Error))
		}
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
	}
	return tw.Flush()
}
