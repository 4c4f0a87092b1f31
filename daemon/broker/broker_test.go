package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quivermq/quiver/daemon/store"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testOpts(dir string) Options {
	return Options{Dir: dir, Logger: quiet, Store: store.Options{Engine: "portable",
		Log: qlog.Options{SegmentSize: 4 << 20, TailBytes: 1 << 20, MaxBatchBytes: 128 << 10, MaxQueueWait: 200 * time.Millisecond}}}
}

func open(t testing.TB, o Options) *Broker {
	t.Helper()
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// produce sends one message and waits for its reply.
func produce(b *Broker, p wire.Produce) (wire.ProduceAck, *wire.Error) {
	type result struct {
		ack wire.ProduceAck
		err *wire.Error
	}
	ch := make(chan result, 1)
	c := NewProduceCall()
	c.In = p
	c.Reply = func(_ *ProduceCall, ack wire.ProduceAck, err *wire.Error) { ch <- result{ack, err} }
	b.Produce(c)
	r := <-ch
	return r.ack, r.err
}

func fetch(t *testing.T, b *Broker, f wire.Fetch) (wire.FetchHeader, []wire.FetchedMessage) {
	t.Helper()
	if f.MaxMessages == 0 {
		f.MaxMessages = 100
	}
	if f.MaxBytes == 0 {
		f.MaxBytes = 1 << 20
	}
	payload, werr := b.Fetch(context.Background(), &f, nil)
	if werr != nil {
		t.Fatalf("fetch %+v: %v", f, werr)
	}
	h, msgs, err := wire.DecodeFetchResp(payload, nil)
	if err != nil {
		t.Fatalf("fetch response does not decode: %v", err)
	}
	return h, msgs
}

func TestProduceThenFetch(t *testing.T) {
	b := open(t, testOpts(t.TempDir()))
	defer b.Close()
	if werr := b.CreateTopic("orders", 2); werr != nil {
		t.Fatal(werr)
	}
	for i := 0; i < 10; i++ {
		ack, werr := produce(b, wire.Produce{Topic: "orders", Queue: int32(i % 2), Durability: wire.DurabilitySync,
			Key: []byte(fmt.Sprintf("k%d", i)), Body: []byte(fmt.Sprintf("m%d", i))})
		if werr != nil {
			t.Fatal(werr)
		}
		if ack.Queue != uint32(i%2) || ack.Offset != uint64(i/2) {
			t.Fatalf("message %d acked at %d/%d", i, ack.Queue, ack.Offset)
		}
	}
	h, msgs := fetch(t, b, wire.Fetch{Topic: "orders", Queue: 1, Offset: 2})
	if h.Next != 5 || h.Min != 0 || h.Max != 5 || len(msgs) != 3 {
		t.Fatalf("fetch from 2: %+v, %d messages", h, len(msgs))
	}
	for i, m := range msgs {
		if want := fmt.Sprintf("m%d", 2*(i+2)+1); string(m.Body) != want || m.Offset != uint64(i+2) {
			t.Fatalf("message %d: offset %d body %q, want %q", i, m.Offset, m.Body, want)
		}
	}
	// Max messages and max bytes bound a response (at least one record).
	h, msgs = fetch(t, b, wire.Fetch{Topic: "orders", Queue: 0, Offset: 0, MaxMessages: 2})
	if len(msgs) != 2 || h.Next != 2 {
		t.Fatalf("max messages 2: %+v %d", h, len(msgs))
	}
	h, msgs = fetch(t, b, wire.Fetch{Topic: "orders", Queue: 0, Offset: 0, MaxBytes: 1})
	if len(msgs) != 1 || h.Next != 1 {
		t.Fatalf("max bytes 1: %+v %d", h, len(msgs))
	}
	// Past the end is an error; the end with no wait is an empty answer.
	if _, werr := b.Fetch(context.Background(), &wire.Fetch{Topic: "orders", Queue: 0, Offset: 6, MaxMessages: 1}, nil); werr == nil || werr.Code != wire.CodeOffsetOutOfRange {
		t.Fatalf("fetch past the end: %v", werr)
	}
	if h, msgs := fetch(t, b, wire.Fetch{Topic: "orders", Queue: 0, Offset: 5}); len(msgs) != 0 || h.Next != 5 {
		t.Fatalf("fetch at the end: %+v %d", h, len(msgs))
	}
}

// A fetch at the end of a queue waits for the next record and returns it
// as soon as it is committed (incident 003: visible when durable).
func TestLongPollWakesOnProduce(t *testing.T) {
	b := open(t, testOpts(t.TempDir()))
	defer b.Close()
	if werr := b.CreateTopic("t", 1); werr != nil {
		t.Fatal(werr)
	}
	got := make(chan []wire.FetchedMessage, 1)
	go func() {
		payload, werr := b.Fetch(context.Background(), &wire.Fetch{Topic: "t", Queue: 0, Offset: 0, MaxMessages: 10, MaxBytes: 1 << 20, MaxWaitMs: 60000}, nil)
		if werr != nil {
			got <- nil
			return
		}
		_, msgs, _ := wire.DecodeFetchResp(payload, nil)
		got <- msgs
	}()
	waitFor(t, "the fetch to park", func() bool { return b.waiters.n.Load() == 1 })
	if _, werr := produce(b, wire.Produce{Topic: "t", Queue: 0, Body: []byte("hello")}); werr != nil {
		t.Fatal(werr)
	}
	msgs := <-got
	if len(msgs) != 1 || string(msgs[0].Body) != "hello" {
		t.Fatalf("long poll returned %+v", msgs)
	}
}

func TestLongPollEndsWithContext(t *testing.T) {
	b := open(t, testOpts(t.TempDir()))
	defer b.Close()
	b.CreateTopic("t", 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *wire.Error, 1)
	go func() {
		_, werr := b.Fetch(ctx, &wire.Fetch{Topic: "t", MaxMessages: 1, MaxWaitMs: 60000}, nil)
		done <- werr
	}()
	waitFor(t, "the fetch to park", func() bool { return b.waiters.n.Load() == 1 })
	cancel()
	if werr := <-done; werr != nil {
		t.Fatal(werr)
	}
	if n := b.waiters.n.Load(); n != 0 {
		t.Fatalf("%d waiters left registered", n)
	}
}

func TestTopicRules(t *testing.T) {
	o := testOpts(t.TempDir())
	b := open(t, o)
	if _, werr := produce(b, wire.Produce{Topic: "auto", Queue: wire.AnyQueue, Body: []byte("x")}); werr != nil {
		t.Fatalf("auto-create: %v", werr)
	}
	if m := b.Metadata([]string{"auto", "nope"}); m.Topics[0].Queues != 4 || m.Topics[1].Queues != 0 {
		t.Fatalf("metadata: %+v", m)
	}
	cases := []struct {
		p    wire.Produce
		code wire.Code
	}{
		{wire.Produce{Topic: "__offsets", Queue: 0, Body: []byte("x")}, wire.CodeInvalid},
		{wire.Produce{Topic: "__new", Queue: wire.AnyQueue, Body: []byte("x")}, wire.CodeInvalid},
		{wire.Produce{Topic: "auto", Queue: 4, Body: []byte("x")}, wire.CodeInvalid},
		{wire.Produce{Topic: "auto", Queue: 0, Flags: wire.FlagControl, Body: []byte("x")}, wire.CodeInvalid},
		{wire.Produce{Topic: "auto", Queue: 0, Count: 3, Body: []byte("x")}, wire.CodeInvalid},
		{wire.Produce{Topic: "auto", Queue: 0, Flags: 3, Body: []byte("x")}, wire.CodeInvalid},
		{wire.Produce{Topic: "a/b", Queue: 0, Body: []byte("x")}, wire.CodeInvalid},
	}
	before := b.log.Positions().Written
	for _, c := range cases {
		if _, werr := produce(b, c.p); werr == nil || werr.Code != c.code {
			t.Errorf("produce %+v: %v, want %v", c.p, werr, c.code)
		}
	}
	if after := b.log.Positions().Written; after != before {
		t.Fatalf("refused produces wrote %d bytes", after-before)
	}
	if werr := b.CreateTopic("auto", 8); werr == nil {
		t.Fatal("re-creating a topic with another queue count succeeded")
	}
	if werr := b.CreateTopic("auto", 4); werr != nil {
		t.Fatalf("re-creating a topic the same way: %v", werr)
	}
	b.Close()

	o.NoAutoCreate = true
	b = open(t, o)
	defer b.Close()
	if _, werr := produce(b, wire.Produce{Topic: "other", Queue: wire.AnyQueue, Body: []byte("x")}); werr == nil || werr.Code != wire.CodeUnknownTopic {
		t.Fatalf("auto-create off: %v", werr)
	}
	// Topics survive the restart (they are records in the log).
	if m := b.Metadata(nil); len(m.Topics) != 1 || m.Topics[0] != (wire.TopicInfo{Name: "auto", Queues: 4}) {
		t.Fatalf("topics after restart: %+v", m.Topics)
	}
}

func gsync(b *Broker, member string, owned ...wire.QueueRef) wire.Assignment {
	a, werr := b.GroupSync(&wire.GroupSync{Group: "g", Member: member, SessionMs: 10000, Topics: []string{"t"}, Owned: owned})
	if werr != nil {
		panic(werr)
	}
	return a
}

func refs(a wire.Assignment) []wire.QueueRef {
	var out []wire.QueueRef
	for _, q := range a.Queues {
		out = append(out, q.QueueRef)
	}
	return out
}

// clocked sets o's clock to a fake one.
func clocked(o Options) (Options, *fakeClock) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	o.Now = clock.now
	return o, clock
}

// twoMembers creates topic t (4 queues) and balances group g over m1 and
// m2, returning their assignments.
func twoMembers(t *testing.T, b *Broker) (a1, a2 wire.Assignment) {
	t.Helper()
	b.CreateTopic("t", 4)
	a1 = gsync(b, "m1")
	gsync(b, "m2")
	a1 = gsync(b, "m1", refs(a1)...) // releases m2's half
	a1 = gsync(b, "m1", refs(a1)...)
	a2 = gsync(b, "m2")
	if len(a1.Queues) != 2 || len(a2.Queues) != 2 {
		t.Fatalf("balanced: %+v %+v", a1, a2)
	}
	return a1, a2
}

// Queues move between members only after their old member released them.
func TestGroupRebalanceIsCooperative(t *testing.T) {
	o := testOpts(t.TempDir())
	clock := &fakeClock{t: time.Unix(1000, 0)}
	o.Now = clock.now
	b := open(t, o)
	defer b.Close()
	b.CreateTopic("t", 4)

	a1 := gsync(b, "m1")
	if len(a1.Queues) != 4 || a1.Pending {
		t.Fatalf("first member: %+v", a1)
	}
	held := refs(a1)
	// m2 joins: half the queues are its target, but m1 still holds them.
	a2 := gsync(b, "m2")
	if len(a2.Queues) != 0 || !a2.Pending {
		t.Fatalf("second member before the release: %+v", a2)
	}
	// m1's heartbeat tells it to keep only its half.
	a1 = gsync(b, "m1", held...)
	if len(a1.Queues) != 2 {
		t.Fatalf("first member after the rebalance: %+v", a1)
	}
	// Its commit for a queue it still holds works; then it releases.
	if werr := b.Commit(&wire.Commit{Group: "g", Member: "m1", Offsets: []wire.OffsetCommit{{QueueRef: held[3], Offset: 7}}}); werr != nil {
		t.Fatal(werr)
	}
	gsync(b, "m1", refs(a1)...)
	a2 = gsync(b, "m2")
	if len(a2.Queues) != 2 || a2.Pending {
		t.Fatalf("second member after the release: %+v", a2)
	}
	for _, q := range a2.Queues {
		want := int64(wire.NoOffset)
		if q.QueueRef == held[3] {
			want = 7
		}
		if q.Committed != want {
			t.Fatalf("queue %v committed %d, want %d", q.QueueRef, q.Committed, want)
		}
	}
	// m1 can no longer commit what moved.
	if werr := b.Commit(&wire.Commit{Group: "g", Member: "m1", Offsets: []wire.OffsetCommit{{QueueRef: held[3], Offset: 9}}}); werr == nil || werr.Code != wire.CodeFenced {
		t.Fatalf("commit for a moved queue: %v", werr)
	}
	// m2 goes silent past its session: its queues return to m1.
	clock.add(11 * time.Second)
	a1 = gsync(b, "m1", refs(a1)...)
	if len(a1.Queues) != 4 {
		t.Fatalf("after m2 expired: %+v", a1)
	}
	// Leaving releases at once.
	if _, werr := b.GroupSync(&wire.GroupSync{Group: "g", Member: "m1", Flags: wire.GroupLeave}); werr != nil {
		t.Fatal(werr)
	}
	if a := gsync(b, "m3"); len(a.Queues) != 4 {
		t.Fatalf("after m1 left: %+v", a)
	}
}

// A coordinator whose process stalled (SIGSTOP, a paused VM) longer than
// its members' sessions does not expire them for its own silence: the
// first member to report after the stall would otherwise take the other's
// queues and re-read what that member processed since its last commit
// (163 redeliveries per 10 s leader freeze in the chaos matrix).
func TestGroupMembersOutliveTheCoordinatorsStall(t *testing.T) {
	o, clock := clocked(testOpts(t.TempDir()))
	b := open(t, o)
	defer b.Close()
	a1, a2 := twoMembers(t, b)
	gen := a2.Generation

	// The process stalls for 11 s, longer than the 10 s sessions.
	stall := func() {
		b.groups.mu.Lock()
		b.groups.running = time.Now().Add(-11 * time.Second)
		b.groups.mu.Unlock()
		clock.add(11 * time.Second)
	}
	stall()
	if a := gsync(b, "m1", refs(a1)...); a.Generation != gen || !slices.Equal(refs(a), refs(a1)) {
		t.Fatalf("first report after the stall: %+v, want generation %d and %v", a, gen, refs(a1))
	}
	if a := gsync(b, "m2", refs(a2)...); a.Generation != gen || !slices.Equal(refs(a), refs(a2)) {
		t.Fatalf("second member after the stall: %+v, want generation %d and %v", a, gen, refs(a2))
	}

	// A member that is silent while the process runs still expires.
	clock.add(11 * time.Second)
	if a := gsync(b, "m1", refs(a1)...); len(a.Queues) != 4 {
		t.Fatalf("after m2 went silent: %+v", a)
	}
}

// A broker restarted with consumer groups has lost their memberships,
// not their members: for coordinatorGrace it hands no queue nobody
// reported to a member, so the member that still reads it (kill -9 of a
// group's leader in the chaos matrix: 160-320 redeliveries) keeps it.
func TestRestartedCoordinatorWaitsForHolders(t *testing.T) {
	o, clock := clocked(testOpts(t.TempDir()))
	b := open(t, o)
	a1, a2 := twoMembers(t, b)
	if werr := b.Commit(&wire.Commit{Group: "g", Member: "m2", Offsets: []wire.OffsetCommit{{QueueRef: a2.Queues[0].QueueRef, Offset: 3}}}); werr != nil {
		t.Fatal(werr)
	}
	b.Close()

	b = open(t, o)
	// m1 reports first: it keeps its queues and is not handed m2's.
	if a := gsync(b, "m1", refs(a1)...); !slices.Equal(refs(a), refs(a1)) || !a.Pending {
		t.Fatalf("first member after the restart: %+v, want %v and pending", a, refs(a1))
	}
	if a := gsync(b, "m2", refs(a2)...); !slices.Equal(refs(a), refs(a2)) {
		t.Fatalf("second member after the restart: %+v, want %v", a, refs(a2))
	}
	b.Close()

	// m2 did not survive the restart (a new process, holding nothing):
	// its queues wait out the grace, then resume from the commit.
	b = open(t, o)
	defer b.Close()
	gsync(b, "m1", refs(a1)...)
	if a := gsync(b, "m2"); len(a.Queues) != 0 || !a.Pending {
		t.Fatalf("a member holding nothing within the grace: %+v", a)
	}
	clock.add(coordinatorGrace)
	if a := gsync(b, "m2"); !slices.Equal(refs(a), refs(a2)) || a.Queues[0].Committed != 3 {
		t.Fatalf("after the grace: %+v, want %v from offset 3", a, refs(a2))
	}
}

// Committed offsets are records in the log: they survive a restart, and
// survive it without the snapshot too.
func TestCommittedOffsetsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	b := open(t, testOpts(dir))
	b.CreateTopic("t", 2)
	gsync(b, "m1")
	for i := 1; i <= 5; i++ {
		if werr := b.Commit(&wire.Commit{Group: "g", Member: "m1", Offsets: []wire.OffsetCommit{
			{QueueRef: wire.QueueRef{Topic: "t", Queue: 0}, Offset: uint64(i)},
			{QueueRef: wire.QueueRef{Topic: "t", Queue: 1}, Offset: uint64(10 * i)}}}); werr != nil {
			t.Fatal(werr)
		}
	}
	b.Close()
	for _, withSnapshot := range []bool{true, false} {
		if !withSnapshot {
			if err := removeSnapshot(dir); err != nil {
				t.Fatal(err)
			}
		}
		b = open(t, testOpts(dir))
		if c := b.ctl.committed("g", wire.QueueRef{Topic: "t", Queue: 0}); c != 5 {
			t.Fatalf("snapshot=%v: committed %d, want 5", withSnapshot, c)
		}
		if c := b.ctl.committed("g", wire.QueueRef{Topic: "t", Queue: 1}); c != 50 {
			t.Fatalf("snapshot=%v: committed %d, want 50", withSnapshot, c)
		}
		b.Close()
	}
}

func TestStatusReportsPositionsAndQueues(t *testing.T) {
	b := open(t, testOpts(t.TempDir()))
	defer b.Close()
	b.CreateTopic("orders", 2)
	b.CreateTopic("empty", 1)
	b.CreateTopic("zz", 3)
	b.CreateTopic("a", 2)
	for i := 0; i < 3; i++ {
		if _, werr := produce(b, wire.Produce{Topic: "orders", Queue: 1, Body: []byte("x")}); werr != nil {
			t.Fatal(werr)
		}
	}
	s := b.Status()
	p := s.Positions
	if p.Written == 0 || p.Durable != p.Written || p.Dispatched != p.Written {
		t.Fatalf("positions after sync produces: %+v", p)
	}
	if len(s.Warnings) != 0 {
		t.Fatalf("warnings on a healthy broker: %v", s.Warnings)
	}
	var names []string
	for _, ts := range s.Topics {
		names = append(names, ts.Name)
	}
	if strings.Join(names, ",") != "a,empty,orders,zz" {
		t.Fatalf("topics in status: %v (sorted; reserved topics must not show)", names)
	}
	q := s.Topics[2].Queues
	if len(q) != 2 || q[1].Max != 3 || q[1].LastStore == "" || q[0].Max != 0 || q[0].Queue != 0 {
		t.Fatalf("orders queues: %+v", q)
	}
	// Topics never written list their queues too.
	if q := s.Topics[3].Queues; len(q) != 3 || q[0].Queue != 0 || q[2].Queue != 2 || q[2].Max != 0 {
		t.Fatalf("queues of a topic never written: %+v", q)
	}
	if s.TopicsTotal != 4 || s.QueuesTotal != 8 || s.TopicsNext != "" {
		t.Fatalf("totals %d topics, %d queues, next %q; want 4, 8, none", s.TopicsTotal, s.QueuesTotal, s.TopicsNext)
	}
	// Pages, and one topic.
	listed := func(s wire.Status) string {
		var n []string
		for _, ts := range s.Topics {
			n = append(n, ts.Name)
		}
		return strings.Join(n, ",") + " next=" + s.TopicsNext
	}
	p1 := b.StatusOf(wire.StatusSel{Limit: 2})
	p2 := b.StatusOf(wire.StatusSel{From: p1.TopicsNext, Limit: 2})
	one := b.StatusOf(wire.StatusSel{Topic: "orders"})
	none := b.StatusOf(wire.StatusSel{Topic: "nope"})
	if got := listed(p1) + " | " + listed(p2) + " | " + listed(one) + " | " + listed(none); got != "a,empty next=empty | orders,zz next= | orders next= |  next=" {
		t.Fatalf("pages: %s", got)
	}
	if one.Topics[0].Queues[1].Max != 3 || p2.TopicsTotal != 4 || one.TopicsTotal != 4 {
		t.Fatalf("topic orders alone: %+v (totals %d, %d)", one.Topics, p2.TopicsTotal, one.TopicsTotal)
	}
}

// The log's errors reach producers with the right code: BUSY, retryable,
// naming the wait and depth (incident 001; the stall itself is tested in
// log/ and, end to end, in daemon/itest).
func TestStorageErrorsOnTheWire(t *testing.T) {
	werr := storageError(&qlog.BusyError{Waited: 230 * time.Millisecond, Limit: 200 * time.Millisecond, Depth: 880})
	if werr.Code != wire.CodeBusy || !werr.Retryable() ||
		!strings.Contains(werr.Message, "waited 230ms") || !strings.Contains(werr.Message, "size of queue: 880") {
		t.Fatalf("busy error: %v", werr)
	}
	if werr := storageError(fmt.Errorf("x: %w", qlog.ErrFailed)); werr.Code != wire.CodeStorageFailed {
		t.Fatalf("failed log: %v", werr)
	}
	if werr := storageError(errors.New("?")); werr.Code != wire.CodeInternal {
		t.Fatalf("unknown error: %v", werr)
	}
}

func TestConcurrentProducesAreDense(t *testing.T) {
	b := open(t, testOpts(t.TempDir()))
	defer b.Close()
	b.CreateTopic("t", 1)
	var wg sync.WaitGroup
	seen := make([]bool, 800)
	var mu sync.Mutex
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				ack, werr := produce(b, wire.Produce{Topic: "t", Queue: 0, Body: []byte("x")})
				if werr != nil {
					t.Error(werr)
					return
				}
				mu.Lock()
				if seen[ack.Offset] {
					t.Errorf("offset %d acknowledged twice", ack.Offset)
				}
				seen[ack.Offset] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for i, s := range seen {
		if !s {
			t.Fatalf("offset %d never acknowledged", i)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func removeSnapshot(dir string) error {
	return os.Remove(filepath.Join(dir, "state", "snapshot.json"))
}

// Topic and group names are letters, digits, '.', '_' and '-', checked
// wherever a topic is created or a group joined, with an error that says
// so; nothing is created by a refused name.
func TestNames(t *testing.T) {
	b := open(t, testOpts(t.TempDir()))
	defer b.Close()
	for _, name := range []string{"", "a b", "a/b", "a:b", "ünï", strings.Repeat("x", 256), "__internal"} {
		if werr := b.CreateTopic(name, 1); werr == nil || werr.Code != wire.CodeInvalid {
			t.Errorf("CreateTopic(%q): %v, want INVALID", name, werr)
		}
		if _, werr := b.GroupSync(&wire.GroupSync{Group: "g", Member: "m", SessionMs: 1000, Topics: []string{name}}); werr == nil {
			t.Errorf("GroupSync with topic %q was accepted", name)
		}
		if name == "__internal" {
			continue
		}
		if _, werr := b.GroupSync(&wire.GroupSync{Group: name, Member: "m", SessionMs: 1000, Topics: []string{"t"}}); werr == nil ||
			!strings.Contains(werr.Message, "group name") {
			t.Errorf("GroupSync of group %q: %v, want INVALID naming the group", name, werr)
		}
	}
	for _, name := range []string{"orders", "orders.eu-1", "A_b-C.9"} {
		if werr := b.CreateTopic(name, 1); werr != nil {
			t.Errorf("CreateTopic(%q): %v", name, werr)
		}
	}
	if got := len(b.Metadata(nil).Topics); got != 3 {
		t.Fatalf("%d topics exist, want the 3 valid ones", got)
	}
}

// Sends racing a topic's deletion either land before it (and go with the
// topic) or fail UNKNOWN_TOPIC: none is stored after the deletion record,
// where it would turn up in a topic created again under the name.
func TestSendsRacingADeletion(t *testing.T) {
	o := testOpts(t.TempDir())
	o.NoAutoCreate = true
	b := open(t, o)
	defer b.Close()
	for round := 0; round < 20; round++ {
		if werr := b.CreateTopic("t", 2); werr != nil {
			t.Fatal(werr)
		}
		var wg sync.WaitGroup
		var acked atomic.Int64
		stop := make(chan struct{})
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					_, werr := produce(b, wire.Produce{Topic: "t", Queue: wire.AnyQueue, Count: 1, Body: []byte("x")})
					switch {
					case werr == nil:
						acked.Add(1)
					case werr.Code != wire.CodeUnknownTopic:
						t.Errorf("send racing the deletion: %v", werr)
						return
					}
				}
			}()
		}
		for acked.Load() < 10 {
			runtime.Gosched()
		}
		if werr := b.DeleteTopic("t"); werr != nil {
			t.Fatal(werr)
		}
		close(stop)
		wg.Wait()
		if werr := b.CreateTopic("t", 2); werr != nil {
			t.Fatal(werr)
		}
		for q := uint32(0); q < 2; q++ {
			if bd, ok := b.st.Index.Bounds("t", q); ok && bd.Max > bd.Min {
				t.Fatalf("round %d: queue %d of the topic created again holds %d sends made before it", round, q, bd.Max-bd.Min)
			}
		}
		if werr := b.DeleteTopic("t"); werr != nil {
			t.Fatal(werr)
		}
	}
}

// A broker holds at most MaxTopics topics (Route and Metadata answers
// count them in a u16): creations past it are refused, naming the limit,
// and a deletion frees a name.
func TestTopicLimit(t *testing.T) {
	o := testOpts(t.TempDir())
	o.MaxTopics = 3
	b := open(t, o)
	defer b.Close()
	for _, n := range []string{"a", "b", "c"} {
		if werr := b.CreateTopic(n, 1); werr != nil {
			t.Fatal(werr)
		}
	}
	werr := b.CreateTopic("d", 1)
	if werr == nil || werr.Code != wire.CodeInvalid || !strings.Contains(werr.Message, "the most it can (3") {
		t.Fatalf("a fourth topic: %v", werr)
	}
	if _, werr := produce(b, wire.Produce{Topic: "e", Queue: wire.AnyQueue, Count: 1, Body: []byte("x")}); werr == nil || werr.Code != wire.CodeInvalid {
		t.Fatalf("auto-creating a fourth: %v", werr)
	}
	if werr := b.CreateTopic("a", 1); werr != nil {
		t.Fatalf("creating one that exists: %v", werr)
	}
	if werr := b.DeleteTopic("b"); werr != nil {
		t.Fatal(werr)
	}
	if werr := b.CreateTopic("d", 1); werr != nil {
		t.Fatalf("after a deletion: %v", werr)
	}
}
