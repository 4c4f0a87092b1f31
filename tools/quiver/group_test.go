//go:build !windows

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

// Rewinding a consumer group: describe shows its committed offsets and
// lag; reset moves it to earliest, a time, latest or an offset (refused
// while it has live members), and the next consume reads from there;
// consume --from TIME starts a new group at a time; lookup finds a key's
// messages; --format prints what kcat's -f would.
func TestGroupResetAndLookup(t *testing.T) {
	_, cli, cl, p, ctx := withTopic(t, "events", 2)
	var mid time.Time // after e4 was stored, before e5 was sent
	send := func(i int) {
		if _, err := p.Send(ctx, &sdk.Message{Topic: "events", Key: []byte(fmt.Sprintf("user-%d", i%3)), Body: []byte(fmt.Sprintf("e%d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		if i == 5 {
			mid = time.Now()
		}
		send(i)
	}
	bodies := func(r result) []string { return lines(t, must(t, r).stdout) }
	all := []string{"e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"}
	sameMultiset(t, "first consume", bodies(cli("consume", "--topic", "events", "--group", "g", "--count", "10")), all)

	describe := func() describeJSON {
		return decodeJSON[describeJSON](t, cli("group", "describe", "--group", "g", "--json"))
	}
	d := describe()
	if d.Members != 0 || len(d.Queues) != 2 {
		t.Fatalf("describe: %+v", d)
	}
	for _, q := range d.Queues {
		if q.Topic != "events" || q.Committed != int64(q.Max) || q.Lag != 0 || q.Max == 0 {
			t.Fatalf("describe after consuming everything: %+v", q)
		}
	}
	if gs := decodeJSON[[]groupJSON](t, cli("group", "list", "--json")); len(gs) != 1 || gs[0].Name != "g" || gs[0].Lag != 0 || !slices.Contains(gs[0].Topics, "events") {
		t.Fatalf("group list: %+v", gs)
	}

	reset := func(to string) describeJSON {
		return decodeJSON[describeJSON](t, cli("group", "reset", "--group", "g", "--topic", "events", "--to", to, "--json"))
	}
	for _, q := range reset("earliest").Queues {
		if q.Committed != 0 || q.Lag != q.Max {
			t.Fatalf("reset to earliest: %+v", q)
		}
	}
	sameMultiset(t, "after reset to earliest", bodies(cli("consume", "--topic", "events", "--group", "g", "--count", "10")), all)

	reset(mid.Format(time.RFC3339Nano))
	if d := describe(); d.Queues[0].Lag+d.Queues[1].Lag != 5 {
		t.Fatalf("reset to %v: lag %+v, want 5 in all", mid, d.Queues)
	}
	sameMultiset(t, "after reset to a time", bodies(cli("consume", "--topic", "events", "--group", "g", "--count", "5")), all[5:])

	for _, q := range reset("1").Queues {
		if q.Committed != 1 {
			t.Fatalf("reset to offset 1: %+v", q)
		}
	}
	for _, q := range reset("latest").Queues {
		if q.Committed != int64(q.Max) || q.Lag != 0 {
			t.Fatalf("reset to latest: %+v", q)
		}
	}
	send(10)
	sameMultiset(t, "after reset to latest", bodies(cli("consume", "--topic", "events", "--group", "g", "--count", "1")), []string{"e10"})

	// A live member: refused, saying why.
	c, err := cl.NewConsumer("g", []string{"events"})
	if err != nil {
		t.Fatal(err)
	}
	testbroker.WaitFor(t, "the member to join", func() bool { return describe().Members == 1 })
	if r := cli("group", "reset", "--group", "g", "--topic", "events", "--to", "earliest"); r.code != 1 || !strings.Contains(r.stderr, "live member") {
		t.Fatalf("reset with a live member: %v", r)
	}
	// Forced, it moves the live member: it gets everything again.
	var mu sync.Mutex
	var seen []string
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Run(rctx, func(_ context.Context, m *sdk.Message) error {
			mu.Lock()
			seen = append(seen, string(m.Body))
			mu.Unlock()
			return nil
		})
	}()
	received := func(body string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range seen {
			if s == body {
				n++
			}
		}
		return n
	}
	send(11)
	testbroker.WaitFor(t, "the live member to handle e11", func() bool { return received("e11") == 1 })
	must(t, cli("group", "reset", "--group", "g", "--topic", "events", "--to", "earliest", "--force"))
	testbroker.WaitFor(t, "the live member to read everything again", func() bool {
		for i := range 12 {
			if received(fmt.Sprintf("e%d", i)) < 1 || i == 11 && received("e11") < 2 {
				return false
			}
		}
		return true
	})
	stop()
	<-done
	c.Close()
	for _, bad := range []string{"", "soon", "-x", "-1"} {
		if r := cli("group", "reset", "--group", "g", "--topic", "events", "--to", bad); r.code != 2 {
			t.Fatalf("--to %q: %v", bad, r)
		}
	}

	// A new group from a time; a key's messages; formats.
	// Every message stored from mid on: e5..e9, e10, and e11 (sent for the forced reset).
	sameMultiset(t, "consume --from TIME", bodies(cli("consume", "--topic", "events", "--group", "h", "--count", "7", "--from", mid.Format(time.RFC3339Nano))),
		append(slices.Clone(all[5:]), "e10", "e11"))
	got := bodies(cli("lookup", "--topic", "events", "--key", "user-1", "--format", `%k %s\n`))
	sameMultiset(t, "lookup user-1", got, []string{"user-1 e1", "user-1 e4", "user-1 e7", "user-1 e10"})
	r := must(t, cli("consume", "--topic", "events", "--group", "fmt", "--count", "1", "--from", mid.Format(time.RFC3339Nano),
		"--format", `%t|%p|%o|%k|%K|%s|%S|%R|%%\n`))
	var q, o, size int
	var key, body string
	if n, err := fmt.Sscanf(strings.ReplaceAll(r.stdout, "|", " "), "events %d %d %s 6 %s %d 0 %%\n", &q, &o, &key, &body, &size); err != nil || n != 5 ||
		!strings.HasPrefix(key, "user-") || !strings.HasPrefix(body, "e") || size != len(body) {
		t.Fatalf("consume --format: %q (%v)", r.stdout, err)
	}
	if r := cli("consume", "--topic", "events", "--group", "x", "--format", "%z"); r.code != 2 || !strings.Contains(r.stderr, "unknown token %z") {
		t.Fatalf("a bad --format: %v", r)
	}
	var dj describeJSON
	if err := json.Unmarshal([]byte(must(t, cli("group", "describe", "--group", "h", "--topic", "events", "--json")).stdout), &dj); err != nil || len(dj.Queues) != 2 {
		t.Fatalf("describe h: %+v %v", dj, err)
	}
}

// produce sends a key (--key, or per line with --key-delim), tags and
// headers with every line; consume --format shows them back, and a key's
// lines in one queue, in order. Bad flags are usage errors; a line
// without the delimiter stops it, naming the line.
func TestProduceKeysTagsHeaders(t *testing.T) {
	b, cli, _, _, _ := withTopic(t, "keyed", 4)
	produce := func(stdin string, args ...string) result {
		return runCLI(t, noEnv, stdin, with(b, append([]string{"produce", "--topic", "keyed"}, args...)...)...)
	}
	must(t, produce("a:1\nb:2\na:3\nb:4\na:5\n", "--key-delim", ":", "--tag", "t1", "--header", "x=1", "--header", "y=a=b"))
	must(t, produce("6\n", "--key", "c"))
	got := lines(t, must(t, cli("consume", "--topic", "keyed", "--group", "k", "--count", "6", "--format", `%p %k|%a|%h|%s\n`)).stdout)
	queueOf := map[string]string{}
	var seen []string
	for _, l := range got {
		q, rest, _ := strings.Cut(l, " ")
		key, _, _ := strings.Cut(rest, "|")
		if prev, ok := queueOf[key]; ok && prev != q {
			t.Fatalf("key %s in queues %s and %s", key, prev, q)
		}
		queueOf[key] = q
		seen = append(seen, rest)
	}
	want := []string{"a|t1|x=1,y=a=b|1", "b|t1|x=1,y=a=b|2", "a|t1|x=1,y=a=b|3", "b|t1|x=1,y=a=b|4", "a|t1|x=1,y=a=b|5", "c|||6"}
	sameMultiset(t, "consumed", seen, want)
	for _, key := range []string{"a", "b"} { // in send order within the key
		var order []string
		for _, s := range seen {
			if strings.HasPrefix(s, key+"|") {
				order = append(order, s[strings.LastIndex(s, "|")+1:])
			}
		}
		if !slices.IsSorted(order) {
			t.Fatalf("key %s consumed in order %v", key, order)
		}
	}
	for _, bad := range [][]string{{"--header", "novalue"}, {"--header", "=v"}, {"--key", "k", "--key-delim", ":"}} {
		if r := produce("x\n", bad...); r.code != 2 {
			t.Fatalf("produce %q: %v", bad, r)
		}
	}
	if r := produce("a:1\nno delimiter\n", "--key-delim", ":"); r.code != 1 || !strings.Contains(r.stderr, "line 2: no key delimiter") {
		t.Fatalf("a line without the delimiter: %v", r)
	}
}

// A consumer subscribed to "a || b" gets exactly the messages tagged a or
// b, a batch's included; the brokers send nothing else: the records sent
// to consumers are those 9, not the 22 others.
func TestTagFilter(t *testing.T) {
	b, cli, _, p, ctx := withTopic(t, "tagged", 2)
	produce := func(tag string, n int) []string {
		var in strings.Builder
		var bodies []string
		for i := range n {
			body := fmt.Sprintf("%s%d", tag, i)
			if tag == "" {
				body = fmt.Sprintf("none%d", i)
			}
			fmt.Fprintln(&in, body)
			bodies = append(bodies, body)
		}
		args := []string{"produce", "--topic", "tagged"}
		if tag != "" {
			args = append(args, "--tag", tag)
		}
		must(t, runCLI(t, noEnv, in.String(), with(b, args...)...))
		return bodies
	}
	want := append(produce("a", 5), produce("b", 3)...)
	produce("c", 20)
	produce("", 2)
	if _, err := p.SendBatch(ctx, []*sdk.Message{{Topic: "tagged", Tags: []byte("a"), Body: []byte("batched-a")},
		{Topic: "tagged", Tags: []byte("c"), Body: []byte("batched-c")}}); err != nil {
		t.Fatal(err)
	}
	want = append(want, "batched-a")
	before := b.Metric("quiver_fetched_records_total")
	got := lines(t, must(t, cli("consume", "--topic", "tagged", "--group", "t", "--count", fmt.Sprint(len(want)), "--tags", "a || b", "--format", `%a %s\n`)).stdout)
	var bodies []string
	for _, l := range got {
		tag, body, _ := strings.Cut(l, " ")
		if tag != "a" && tag != "b" {
			t.Fatalf("a message tagged %q reached a consumer of a || b: %q", tag, l)
		}
		bodies = append(bodies, body)
	}
	sameMultiset(t, "a || b", bodies, want)
	if sent := b.Metric("quiver_fetched_records_total") - before; sent != 9 {
		t.Fatalf("%v records sent to the consumer, want 9 (5 a, 3 b, the batch)", sent)
	}
	if r := cli("consume", "--topic", "tagged", "--group", "t", "--tags", "a ||"); r.code != 2 || !strings.Contains(r.stderr, "an empty tag") {
		t.Fatalf("a bad tag expression: %v", r)
	}
}

// Seek moves a consumer's position in a queue it holds: its handler gets
// the messages from there again, and the group's commit follows it back.
func TestSeek(t *testing.T) {
	_, cli, cl, p, ctx := withTopic(t, "seek", 1)
	for i := range 6 {
		if _, err := p.Send(ctx, &sdk.Message{Topic: "seek", Body: []byte(fmt.Sprintf("s%d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := cl.NewConsumer("sk", []string{"seek"}, sdk.WithAutoCommit(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var mu sync.Mutex
	var got []string
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Run(rctx, func(_ context.Context, m *sdk.Message) error {
			mu.Lock()
			got = append(got, string(m.Body))
			mu.Unlock()
			return nil
		})
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
	testbroker.WaitFor(t, "the six messages", func() bool { return count() == 6 })
	committed := func() int64 {
		d := decodeJSON[describeJSON](t, cli("group", "describe", "--group", "sk", "--topic", "seek", "--json"))
		return d.Queues[0].Committed
	}
	testbroker.WaitFor(t, "the commit of all six", func() bool { return committed() == 6 })
	if err := c.Seek(sdk.QueueRef{Group: "default", Topic: "seek", Queue: 9}, 0); err == nil {
		t.Fatal("Seek of a queue the consumer does not hold succeeded")
	}
	ref := c.Assigned()
	var seekRef sdk.QueueRef
	for _, r := range ref {
		if r.Topic == "seek" {
			seekRef = r
		}
	}
	if err := c.Seek(seekRef, 2); err != nil {
		t.Fatal(err)
	}
	testbroker.WaitFor(t, "s2..s5 again", func() bool { return count() == 10 })
	mu.Lock()
	again := slices.Clone(got[6:])
	mu.Unlock()
	if !slices.Equal(again, []string{"s2", "s3", "s4", "s5"}) {
		t.Fatalf("after Seek to 2: %v", again)
	}
	if err := c.Seek(seekRef, 1); err != nil {
		t.Fatal(err)
	}
	stop()
	<-done
	testbroker.WaitFor(t, "the commit to follow the seek back", func() bool { return committed() == 1 })
}

// produce --delay: the line is consumed only once its delay passed.
func TestProduceDelay(t *testing.T) {
	b, cli, _, _, _ := withTopic(t, "delayed", 1)
	sent := time.Now()
	must(t, runCLI(t, noEnv, "soon\n", with(b, "produce", "--topic", "delayed", "--delay", "2s")...))
	r := must(t, cli("consume", "--topic", "delayed", "--group", "d", "--count", "1", "--format", `%s %T\n`))
	var body string
	var ms int64
	if _, err := fmt.Sscanf(r.stdout, "%s %d", &body, &ms); err != nil || body != "soon" {
		t.Fatalf("consume: %q %v", r.stdout, err)
	}
	if got := time.Since(sent); got < 2*time.Second {
		t.Fatalf("a message sent with --delay 2s was consumed after %v", got)
	}
	if time.UnixMilli(ms).Before(sent.Add(2 * time.Second)) {
		t.Fatalf("stored (visible) at %v, %v after it was sent", time.UnixMilli(ms), time.UnixMilli(ms).Sub(sent))
	}
	for _, bad := range [][]string{{"--delay", "-1s"}, {"--delay", "800h"}, {"--delay", "2s", "--deliver-at", "2030-01-01T00:00:00Z"}, {"--deliver-at", "tomorrow"}} {
		if r := runCLI(t, noEnv, "x\n", with(b, append([]string{"produce", "--topic", "delayed"}, bad...)...)...); r.code != 2 {
			t.Fatalf("produce %q: %v", bad, r)
		}
	}
}
