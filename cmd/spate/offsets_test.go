package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spate-io/spate/consumers/projection"
	"github.com/spate-io/spate/schemas"
	"github.com/spate-io/spate/spatetest"
)

const offsetsTopic = "spate.events"

// offsetsRun runs spate with args and returns its stdout and stderr.
func offsetsRun(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return runSpate(t.Context(), args...)
}

// offsetsStore is one place where a group keeps its offsets, as the tests
// see it: the flags that name it, and a look at what it holds.
type offsetsStore struct {
	name  string
	flags []string
	read  func(t *testing.T) map[int32]int64
}

// offsetsStores returns a constructor of each store of group's offsets of
// offsetsTopic, fresh for the test; adm is the test's broker.
func offsetsStores(group string) map[string]func(t *testing.T, adm *kadm.Client) offsetsStore {
	return map[string]func(t *testing.T, adm *kadm.Client) offsetsStore{
		"postgres": func(t *testing.T, _ *kadm.Client) offsetsStore {
			url := spatetest.Postgres(t)
			pool, err := pgxpool.New(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(pool.Close)
			if err := projection.New(pool, schemas.Builtin(), projection.Config{Group: group}).Migrate(t.Context()); err != nil {
				t.Fatal(err)
			}
			return offsetsStore{name: "postgres", flags: []string{"--postgres-url", url}, read: func(t *testing.T) map[int32]int64 {
				t.Helper()
				rows, err := pool.Query(t.Context(), `SELECT partition, next_offset FROM spate_offsets WHERE consumer_group = $1 AND topic = $2`, group, offsetsTopic)
				if err != nil {
					t.Fatal(err)
				}
				got := map[int32]int64{}
				for rows.Next() {
					var p int32
					var o int64
					if err := rows.Scan(&p, &o); err != nil {
						t.Fatal(err)
					}
					got[p] = o
				}
				if err := rows.Err(); err != nil {
					t.Fatal(err)
				}
				return got
			}}
		},
		"redis": func(t *testing.T, _ *kadm.Client) offsetsStore {
			url := spatetest.Redis(t)
			opts, err := redis.ParseURL(url)
			if err != nil {
				t.Fatal(err)
			}
			rdb := redis.NewClient(opts)
			t.Cleanup(func() { rdb.Close() })
			prefix := spatetest.KeyPrefix(t)
			return offsetsStore{name: "redis", flags: []string{"--redis-url", url, "--stream-prefix", prefix}, read: func(t *testing.T) map[int32]int64 {
				t.Helper()
				// The hash spate fanout writes: <prefix>offsets:<group>, fields <topic>/<partition>.
				h, err := rdb.HGetAll(t.Context(), prefix+"offsets:"+group).Result()
				if err != nil {
					t.Fatal(err)
				}
				got := map[int32]int64{}
				for k, v := range h {
					var p int32
					var o int64
					if _, err := fmt.Sscanf(k, offsetsTopic+"/%d", &p); err != nil {
						t.Fatalf("field %q of the offsets hash: %v", k, err)
					}
					if _, err := fmt.Sscan(v, &o); err != nil {
						t.Fatalf("field %q of the offsets hash holds %q", k, v)
					}
					got[p] = o
				}
				return got
			}}
		},
		"kafka": func(t *testing.T, adm *kadm.Client) offsetsStore {
			return offsetsStore{name: "kafka", read: func(t *testing.T) map[int32]int64 {
				t.Helper()
				return offsetsCommitted(t, adm, group)
			}}
		},
	}
}

// offsetsCommitted returns what group committed to Kafka for offsetsTopic.
func offsetsCommitted(t *testing.T, adm *kadm.Client, group string) map[int32]int64 {
	t.Helper()
	resps, err := adm.FetchOffsets(t.Context(), group)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int32]int64{}
	for p, r := range resps[offsetsTopic] {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		if r.At >= 0 {
			got[p] = r.At
		}
	}
	return got
}

// offsetsKafka starts a broker with offsetsTopic of partitions and returns
// its addresses, a producer that writes to the partition a record names,
// and an admin client.
func offsetsKafka(t *testing.T, partitions int32) ([]string, *kgo.Client, *kadm.Client) {
	t.Helper()
	brokers := spatetest.Kafka(t, partitions, offsetsTopic)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.DefaultProduceTopic(offsetsTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return brokers, cl, kadm.NewClient(cl)
}

// offsetsProduce writes a record per timestamp to each partition, in order.
func offsetsProduce(t *testing.T, cl *kgo.Client, times map[int32][]time.Time) {
	t.Helper()
	var recs []*kgo.Record
	for p, ts := range times {
		for i, tm := range ts {
			recs = append(recs, &kgo.Record{Partition: p, Timestamp: tm, Value: fmt.Appendf(nil, "%d-%d", p, i)})
		}
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// offsetsReset decodes the JSON spate offsets reset printed.
func offsetsReset(t *testing.T, stdout string) (rep resetReport, old map[int32]int64, new map[int32]int64) {
	t.Helper()
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("reset's output is not its JSON report: %v\n%s", err, stdout)
	}
	old, new = map[int32]int64{}, map[int32]int64{}
	for _, p := range rep.Partitions {
		if p.Old != nil {
			old[p.Partition] = *p.Old
		}
		new[p.Partition] = p.New
	}
	return rep, old, new
}

// TestOffsetsResetToTimeLandsOnFirstOffsetAtOrAfterIt resets a group to a
// time T, in each store, on a topic whose partitions hold records before
// and after T in different numbers, so each partition lands on a different
// offset: the first record at T exactly, the first one after T, the end
// where every record is older, and the start where every record is newer.
// A dry run before changes nothing; the reset then writes the store and
// commits the same offsets to Kafka.
func TestOffsetsResetToTimeLandsOnFirstOffsetAtOrAfterIt(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)
	times := map[int32][]time.Time{
		0: {at.Add(-3 * time.Minute), at, at.Add(time.Minute)},                                          // 1: the record at T
		1: {at.Add(-5 * time.Minute), at.Add(-4 * time.Minute), at.Add(time.Second), at.Add(time.Hour)}, // 2
		2: {at.Add(-time.Hour), at.Add(-time.Minute), at.Add(-time.Millisecond)},                        // 3: all older, the end
		3: {at.Add(time.Millisecond), at.Add(time.Hour)},                                                // 0: all newer
	}
	want := map[int32]int64{0: 1, 1: 2, 2: 3, 3: 0}
	ends := map[int32]int64{0: 3, 1: 4, 2: 3, 3: 2}
	const group = "spate-project"

	for name, newStore := range offsetsStores(group) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			brokers, cl, adm := offsetsKafka(t, 4)
			offsetsProduce(t, cl, times)
			st := newStore(t, adm)
			args := func(more ...string) []string {
				return append(append([]string{"offsets", "reset", "--kafka-brokers", strings.Join(brokers, ","), "--group", group}, st.flags...), more...)
			}

			if _, stderr, err := offsetsRun(t, args("--to", "latest")...); err != nil {
				t.Fatalf("reset --to latest: %v\n%s", err, stderr)
			}
			if got := st.read(t); !cmp.Equal(got, ends) {
				t.Fatalf("%s after reset --to latest: got %v, want %v", st.name, got, ends)
			}

			stdout, stderr, err := offsetsRun(t, args("--to", at.Format(time.RFC3339), "--dry-run")...)
			if err != nil {
				t.Fatalf("reset --dry-run: %v\n%s", err, stderr)
			}
			rep, old, planned := offsetsReset(t, stdout)
			if diff := cmp.Diff(want, planned); diff != "" {
				t.Errorf("dry run's new offsets (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(ends, old); diff != "" {
				t.Errorf("dry run's old offsets (-want +got):\n%s", diff)
			}
			if !rep.DryRun || rep.Reset || rep.KafkaCommitted {
				t.Errorf("dry run's report: dry_run %v, reset %v, kafka_committed %v; want true, false, false", rep.DryRun, rep.Reset, rep.KafkaCommitted)
			}
			if got := st.read(t); !cmp.Equal(got, ends) {
				t.Errorf("%s after a dry run: got %v, want it unchanged at %v", st.name, got, ends)
			}
			if got := offsetsCommitted(t, adm, group); !cmp.Equal(got, ends) {
				t.Errorf("Kafka after a dry run: got %v, want it unchanged at %v", got, ends)
			}

			var reapply []string
			if st.name == "postgres" {
				// A projector group moves back only when told that its
				// tables do not hold the events.
				if _, _, err := offsetsRun(t, args("--to", at.Format(time.RFC3339))...); err == nil || !strings.Contains(err.Error(), "--reapply") {
					t.Fatalf("reset of a projector group back without --reapply: %v, want a refusal naming --reapply", err)
				}
				if got := st.read(t); !cmp.Equal(got, ends) {
					t.Fatalf("%s after the refusal: got %v, want it unchanged at %v", st.name, got, ends)
				}
				reapply = []string{"--reapply"}
			}
			stdout, stderr, err = offsetsRun(t, args(append([]string{"--to", at.Format(time.RFC3339)}, reapply...)...)...)
			if err != nil {
				t.Fatalf("reset: %v\n%s", err, stderr)
			}
			rep, old, reset := offsetsReset(t, stdout)
			if diff := cmp.Diff(want, reset); diff != "" {
				t.Errorf("reported new offsets (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(ends, old); diff != "" {
				t.Errorf("reported old offsets (-want +got):\n%s", diff)
			}
			if !rep.Reset || !rep.KafkaCommitted || rep.Store != st.name {
				t.Errorf("report: reset %v, kafka_committed %v (%s), store %s; want true, true, %s", rep.Reset, rep.KafkaCommitted, rep.KafkaError, rep.Store, st.name)
			}
			if diff := cmp.Diff(want, st.read(t)); diff != "" {
				t.Errorf("%s after the reset (-want +got):\n%s", st.name, diff)
			}
			if diff := cmp.Diff(want, offsetsCommitted(t, adm, group)); diff != "" {
				t.Errorf("Kafka after the reset (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOffsetsResetRefusedWithLiveMember: while a member is in the group,
// reset refuses and changes nothing (a dry run still shows the plan);
// with --force it resets the store, says the members must restart, and
// reports that Kafka refused the commit. A group whose offsets are in
// Kafka alone cannot be reset under its members, even with --force.
func TestOffsetsResetRefusedWithLiveMember(t *testing.T) {
	t.Parallel()
	const group = "spate-project"
	brokers, cl, adm := offsetsKafka(t, 2)
	offsetsProduce(t, cl, map[int32][]time.Time{0: {time.Now(), time.Now()}, 1: {time.Now()}})
	latest := map[int32]int64{0: 2, 1: 1}
	st := offsetsStores(group)["postgres"](t, adm)
	args := func(more ...string) []string {
		return append(append([]string{"offsets", "reset", "--kafka-brokers", strings.Join(brokers, ","), "--group", group}, st.flags...), more...)
	}
	if _, stderr, err := offsetsRun(t, args("--to", "latest")...); err != nil {
		t.Fatalf("reset --to latest: %v\n%s", err, stderr)
	}

	member, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(offsetsTopic), kgo.DisableAutoCommit())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(member.Close)
	spatetest.Eventually(t, 30*time.Second, func() string {
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		member.PollFetches(ctx)
		cancel()
		described, err := adm.DescribeGroups(t.Context(), group)
		if err != nil {
			return err.Error()
		}
		if d := described[group]; d.State != "Stable" || len(d.Members) != 1 {
			return fmt.Sprintf("group %s: state %s, %d members; want Stable, 1", group, d.State, len(d.Members))
		}
		return ""
	})

	_, _, err = offsetsRun(t, args("--to", "earliest")...)
	if err == nil || !strings.Contains(err.Error(), "1 live member") || !strings.Contains(err.Error(), "--force") {
		t.Errorf("reset with a live member: got %v, want a refusal naming the member and --force", err)
	}
	stdout, stderr, err := offsetsRun(t, args("--to", "earliest", "--dry-run")...)
	if err != nil {
		t.Errorf("dry run with a live member: %v", err)
	} else if _, _, planned := offsetsReset(t, stdout); !cmp.Equal(planned, map[int32]int64{0: 0, 1: 0}) || !strings.Contains(stderr, "would be refused") {
		t.Errorf("dry run with a live member: planned %v, stderr %q; want all 0 and a warning", planned, stderr)
	}
	if got := st.read(t); !cmp.Equal(got, latest) {
		t.Errorf("postgres after the refusal and the dry run: got %v, want it unchanged at %v", got, latest)
	}
	if got := offsetsCommitted(t, adm, group); !cmp.Equal(got, latest) {
		t.Errorf("Kafka after the refusal and the dry run: got %v, want it unchanged at %v", got, latest)
	}

	kafkaOnly := []string{"offsets", "reset", "--kafka-brokers", strings.Join(brokers, ","), "--group", group, "--to", "earliest", "--force"}
	if _, _, err := offsetsRun(t, kafkaOnly...); err == nil || !strings.Contains(err.Error(), "live member") {
		t.Errorf("forced reset of Kafka's offsets with a live member: got %v, want a refusal", err)
	}
	// Its dry run says so too, rather than offer --force.
	if _, stderr, err := offsetsRun(t, append(kafkaOnly[:len(kafkaOnly)-1], "--dry-run")...); err != nil || !strings.Contains(stderr, "--force cannot help") {
		t.Errorf("dry run of a reset of Kafka's offsets with a live member: %v, stderr %q; want a warning that --force cannot help", err, stderr)
	}

	stdout, stderr, err = offsetsRun(t, args("--to", "earliest", "--force", "--reapply")...)
	if err != nil {
		t.Fatalf("forced reset: %v\n%s", err, stderr)
	}
	rep, _, _ := offsetsReset(t, stdout)
	if !rep.Reset || rep.KafkaCommitted || rep.KafkaError == "" || rep.Members != 1 {
		t.Errorf("forced reset's report: reset %v, kafka_committed %v, kafka_error %q, members %d; want true, false, Kafka's refusal, 1",
			rep.Reset, rep.KafkaCommitted, rep.KafkaError, rep.Members)
	}
	if !strings.Contains(stderr, "restart") {
		t.Errorf("forced reset's stderr does not tell to restart the members:\n%s", stderr)
	}
	if diff := cmp.Diff(map[int32]int64{0: 0, 1: 0}, st.read(t)); diff != "" {
		t.Errorf("postgres after the forced reset (-want +got):\n%s", diff)
	}
}

// TestOffsetsResetRefusesTheWrongStore: the fan-out's group, which keeps
// its offsets in Redis and commits them to Kafka, reset with
// --postgres-url by mistake: Postgres holds nothing of it, Kafka knows it,
// so the reset is refused (--force stores them all the same).
func TestOffsetsResetRefusesTheWrongStore(t *testing.T) {
	t.Parallel()
	const group = "spate-fanout"
	brokers, cl, adm := offsetsKafka(t, 1)
	offsetsProduce(t, cl, map[int32][]time.Time{0: {time.Now(), time.Now()}})
	var commits kadm.Offsets
	commits.Add(kadm.Offset{Topic: offsetsTopic, Partition: 0, At: 2})
	if err := adm.CommitAllOffsets(t.Context(), group, commits); err != nil {
		t.Fatal(err)
	}
	st := offsetsStores(group)["postgres"](t, adm)
	args := append([]string{"offsets", "reset", "--kafka-brokers", strings.Join(brokers, ","), "--group", group, "--to", "earliest"}, st.flags...)
	if _, _, err := offsetsRun(t, args...); err == nil || !strings.Contains(err.Error(), "but Kafka knows it") || !strings.Contains(err.Error(), "--force") {
		t.Errorf("reset in a store that holds nothing of a group Kafka knows: %v, want a refusal offering --force", err)
	}
	if _, stderr, err := offsetsRun(t, append(args, "--dry-run")...); err != nil || !strings.Contains(stderr, "would be refused") {
		t.Errorf("its dry run: %v, stderr %q; want a warning", err, stderr)
	}
	if got := st.read(t); len(got) != 0 {
		t.Errorf("postgres after the refusal: %v, want nothing", got)
	}
	if got := offsetsCommitted(t, adm, group); !cmp.Equal(got, map[int32]int64{0: 2}) {
		t.Errorf("Kafka after the refusal: %v, want the commit unchanged", got)
	}
	if _, stderr, err := offsetsRun(t, append(args, "--force")...); err != nil {
		t.Fatalf("forced: %v\n%s", err, stderr)
	}
	if got := st.read(t); !cmp.Equal(got, map[int32]int64{0: 0}) {
		t.Errorf("postgres after the forced reset: %v, want partition 0 at 0", got)
	}
}

// TestOffsetsShowLag: show gives each partition's stored and committed
// offset, log start and end and lag, the group's state and members, as
// JSON and as a table.
func TestOffsetsShowLag(t *testing.T) {
	t.Parallel()
	const group = "spate-fanout"
	brokers, cl, adm := offsetsKafka(t, 3)
	now := time.Now()
	offsetsProduce(t, cl, map[int32][]time.Time{0: {now, now, now, now, now}, 1: {now, now, now}})
	st := offsetsStores(group)["redis"](t, adm)
	// Stored: 1 in partition 0, 3 in 1, none in 2; committed to Kafka: 0 in 0.
	base := append([]string{"--kafka-brokers", strings.Join(brokers, ","), "--group", group}, st.flags...)
	if _, stderr, err := offsetsRun(t, append(append([]string{"offsets", "reset"}, base...), "--to", "latest")...); err != nil {
		t.Fatalf("reset --to latest: %v\n%s", err, stderr)
	}
	opts, err := redis.ParseURL(st.flags[1])
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	key := st.flags[3] + "offsets:" + group
	if err := rdb.HSet(t.Context(), key, offsetsTopic+"/0", 1).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HDel(t.Context(), key, offsetsTopic+"/2").Err(); err != nil {
		t.Fatal(err)
	}
	if err := adm.CommitAllOffsets(t.Context(), group, kadm.OffsetsFromRecords(kgo.Record{Topic: offsetsTopic, Partition: 0, Offset: -1})); err != nil {
		t.Fatal(err)
	}

	stdout, stderr, err := offsetsRun(t, append([]string{"offsets", "show"}, base...)...)
	if err != nil {
		t.Fatalf("show: %v\n%s", err, stderr)
	}
	var got showReport
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("show's output is not its JSON report: %v\n%s", err, stdout)
	}
	i := func(n int64) *int64 { return &n }
	want := showReport{Group: group, Topic: offsetsTopic, Store: "redis", State: "Empty", Members: 0, Lag: i(4), Partitions: []showPartition{
		{Partition: 0, Stored: i(1), Committed: i(0), Start: 0, End: 5, Lag: i(4)},
		{Partition: 1, Stored: i(3), Committed: i(3), Start: 0, End: 3, Lag: i(0)},
		{Partition: 2, Stored: nil, Committed: i(0), Start: 0, End: 0, Lag: nil},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("show --json (-want +got):\n%s", diff)
	}

	stdout, stderr, err = offsetsRun(t, append([]string{"offsets", "show", "--json=false"}, base...)...)
	if err != nil {
		t.Fatalf("show --json=false: %v\n%s", err, stderr)
	}
	for _, line := range []string{
		"group spate-fanout: Empty, no live members",
		"PARTITION  STORED  COMMITTED  LOG START  LOG END  LAG",
		"0          1       0          0          5        4",
		"2          -       0          0          0        -",
		"total                                             4",
	} {
		if !strings.Contains(stdout, line+"\n") {
			t.Errorf("show's table has no line %q:\n%s", line, stdout)
		}
	}

	// A group with no offset in the store: its total is unknown, not 0.
	other := append([]string{"offsets", "show", "--kafka-brokers", strings.Join(brokers, ","), "--group", "nosuch"}, st.flags...)
	stdout, stderr, err = offsetsRun(t, append(other, "--json=false")...)
	if err != nil {
		t.Fatalf("show of a group without offsets: %v\n%s", err, stderr)
	}
	for _, line := range []string{"total                                             -", "no offset of group nosuch is stored in redis: check --group"} {
		if !strings.Contains(stdout, line) {
			t.Errorf("show of a group without offsets has no %q:\n%s", line, stdout)
		}
	}
	stdout, stderr, err = offsetsRun(t, other...)
	if err != nil {
		t.Fatalf("show --json of a group without offsets: %v\n%s", err, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || got.Lag != nil {
		t.Errorf("show --json of a group without offsets: lag %v (%v), want null", got.Lag, err)
	}
}

// TestOffsetsBadInput: input that is missing, contradicts itself or names
// nothing that exists is refused with an error that says what is wrong.
func TestOffsetsBadInput(t *testing.T) {
	t.Parallel()
	brokers, cl, _ := offsetsKafka(t, 2)
	offsetsProduce(t, cl, map[int32][]time.Time{0: {time.Now()}, 1: {time.Now(), time.Now()}})
	kafka := strings.Join(brokers, ",")
	pg := spatetest.Postgres(t) // no projector ran here: no spate_offsets
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"offsets", "reset", "--kafka-brokers", kafka, "--group", "g", "--to", "yesterday"}, `--to "yesterday": want earliest, latest`},
		{[]string{"offsets", "reset", "--kafka-brokers", kafka, "--group", "g", "--to", "2026-11-23 08:00"}, `--to "2026-11-23 08:00"`},
		{[]string{"offsets", "reset", "--kafka-brokers", kafka, "--group", "g"}, "--to is required"},
		{[]string{"offsets", "reset", "--kafka-brokers", kafka, "--to", "latest"}, "--group is required"},
		{[]string{"offsets", "show", "--kafka-brokers", kafka}, "--group is required"},
		{[]string{"offsets", "show", "--kafka-brokers", kafka, "--group", "g", "--postgres-url", pg, "--redis-url", "redis://127.0.0.1:1/0"}, "both --postgres-url and --redis-url given"},
		{[]string{"offsets", "reset", "--kafka-brokers", kafka, "--group", "g", "--to", "7"}, "offset 7 is outside partition"},
		{[]string{"offsets", "show", "--kafka-brokers", kafka, "--group", "g", "--topic", "no.such.topic"}, "no such topic"},
		{[]string{"offsets", "show", "--kafka-brokers", kafka, "--group", "g", "--postgres-url", pg}, "no table spate_offsets"},
		{[]string{"offsets", "reset", "--kafka-brokers", kafka, "--group", "g", "--postgres-url", pg, "--to", "latest"}, "no table spate_offsets"},
		{[]string{"offsets", "frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"offsets", "show", "extra"}, `unknown command "extra"`},
	} {
		_, _, err := offsetsRun(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("spate %s: got error %v, want one containing %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}

// TestOffsetsEnvironment: a store URL from the environment and the other
// on the command line is ambiguous too, and the error says which came from
// where; --to and --force are never taken from the environment.
func TestOffsetsEnvironment(t *testing.T) {
	t.Setenv("SPATE_POSTGRES_URL", "postgres://nowhere/db")
	_, _, err := offsetsRun(t, "offsets", "show", "--group", "g", "--redis-url", "redis://127.0.0.1:1/0")
	want := "both --postgres-url (from SPATE_POSTGRES_URL) and --redis-url given"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("SPATE_POSTGRES_URL and --redis-url: got %v, want an error containing %q", err, want)
	}

	t.Setenv("SPATE_TO", "latest")
	t.Setenv("SPATE_FORCE", "true")
	_, _, err = offsetsRun(t, "offsets", "reset", "--group", "g")
	if err == nil || !strings.Contains(err.Error(), "--to is required") {
		t.Errorf("SPATE_TO without --to: got %v, want --to is required", err)
	}
	var force bool
	root := newRoot(&bytes.Buffer{}, &bytes.Buffer{})
	reset, _, err := root.Find([]string{"offsets", "reset"})
	if err != nil {
		t.Fatal(err)
	}
	reset.RunE = func(cmd *cobra.Command, _ []string) error {
		force, err = cmd.Flags().GetBool("force")
		return err
	}
	root.SetArgs([]string{"offsets", "reset"})
	if err := root.ExecuteContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	if force {
		t.Error("SPATE_FORCE=true set --force; want it taken from the command line only")
	}
}

// TestOffsetsHelpHasExamples: each offsets command explains itself with an
// example.
func TestOffsetsHelpHasExamples(t *testing.T) {
	t.Parallel()
	for _, cmd := range [][]string{{"offsets"}, {"offsets", "show"}, {"offsets", "reset"}} {
		stdout, _, err := offsetsRun(t, append(cmd, "--help")...)
		if err != nil || !strings.Contains(stdout, "Examples:\n  spate offsets ") {
			t.Errorf("spate %s --help: %v, want usage with an example:\n%s", strings.Join(cmd, " "), err, stdout)
		}
	}
}

// TestOffsetsResetToTimeBefore1970 lands on the first record: Kafka reads
// negative timestamps as requests for special offsets (-1: the end).
func TestOffsetsResetToTimeBefore1970(t *testing.T) {
	t.Parallel()
	brokers, cl, _ := offsetsKafka(t, 2)
	offsetsProduce(t, cl, map[int32][]time.Time{0: {time.Now(), time.Now()}, 1: {time.Now()}})
	for _, to := range []string{"1969-12-31T23:59:59.999Z", "1969-12-31T23:59:59.998Z", "1969-12-31T23:59:59.997Z", "1900-01-01T00:00:00Z"} {
		stdout, stderr, err := offsetsRun(t, "offsets", "reset", "--kafka-brokers", strings.Join(brokers, ","), "--group", "g", "--to", to, "--dry-run")
		if err != nil {
			t.Fatalf("reset --to %s: %v\n%s", to, err, stderr)
		}
		if _, _, planned := offsetsReset(t, stdout); !cmp.Equal(planned, map[int32]int64{0: 0, 1: 0}) {
			t.Errorf("reset --to %s: got %v, want the first offset of each partition", to, planned)
		}
	}
}
