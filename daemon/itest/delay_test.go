package itest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

// arrivals consumes topic as a group in the background and notes when each
// body arrived (every arrival: a body twice is a duplicate).
type arrivals struct {
	mu  sync.Mutex
	got map[string][]time.Time
}

func watch(t *testing.T, cl *sdk.Client, topic string) *arrivals {
	t.Helper()
	a := &arrivals{got: map[string][]time.Time{}}
	c, err := cl.NewConsumer("watch-"+topic, []string{topic}, sdk.WithHeartbeat(200*time.Millisecond, 2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx, func(_ context.Context, m *sdk.Message) error {
			a.mu.Lock()
			a.got[string(m.Body)] = append(a.got[string(m.Body)], time.Now())
			a.mu.Unlock()
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-done; c.Close() })
	return a
}

func (a *arrivals) times(body string) []time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]time.Time(nil), a.got[body]...)
}

// checkOnTime waits for each body to arrive, and checks it came once, not
// before its time and within a second after it (or after notBefore, when
// the broker was down at its time).
func (a *arrivals) checkOnTime(t *testing.T, due map[string]time.Time, notBefore time.Time) {
	t.Helper()
	for body := range due {
		testbroker.WaitFor(t, body+" delivered", func() bool { return len(a.times(body)) > 0 })
	}
	time.Sleep(300 * time.Millisecond) // the fault window for a second copy: none may come
	for body, at := range due {
		ts := a.times(body)
		late := ts[0].Sub(at)
		if from := notBefore.Sub(at); from > 0 {
			late -= from
		}
		if len(ts) != 1 || ts[0].Before(at) || late > time.Second {
			t.Fatalf("%s due at %v arrived %d time(s), first %v after its time (the broker was back %v after it)",
				body, at.Format("15:04:05.000"), len(ts), ts[0].Sub(at), notBefore.Sub(at))
		}
	}
}

// sendAt sends bodies delivered at their times.
func sendAt(t *testing.T, ctx context.Context, p *sdk.Producer, topic string, due map[string]time.Time) {
	t.Helper()
	for body, at := range due {
		if _, err := p.Send(ctx, &sdk.Message{Topic: topic, Body: []byte(body), DeliverAt: at}); err != nil {
			t.Fatal(err)
		}
	}
}

// later starts a broker with topic "later", a consumer watching it and a
// producer (closed at the test's end). The client redials within 200 ms
// (default: up to 10 s, growing while the broker is down): the tests time
// the broker's delivery, not the client's reconnect backoff.
func later(t *testing.T) (*testbroker.Broker, context.Context, *sdk.Producer, *arrivals) {
	t.Helper()
	b := testbroker.Start(t)
	cl := b.Client(sdk.WithReconnectBackoff(50*time.Millisecond, 200*time.Millisecond, 5*time.Second))
	ctx := ctxT(t, 90*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "later", 2); err != nil {
		t.Fatal(err)
	}
	a := watch(t, cl, "later")
	p, err := cl.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return b, ctx, p, a
}

// Delayed messages become visible at their time, not before, within a
// second after it, once each; a message due now goes at once.
func TestDelayedDelivery(t *testing.T) {
	_, ctx, p, a := later(t)
	now := time.Now()
	due := map[string]time.Time{}
	for i := range 6 {
		due[fmt.Sprintf("d%d", i)] = now.Add(2*time.Second + time.Duration(i)*300*time.Millisecond)
	}
	sendAt(t, ctx, p, "later", due)
	if _, err := p.Send(ctx, &sdk.Message{Topic: "later", Body: []byte("now")}); err != nil {
		t.Fatal(err)
	}
	testbroker.WaitFor(t, "the message due now", func() bool { return len(a.times("now")) == 1 })
	for body := range due {
		if len(a.times(body)) > 0 {
			t.Fatalf("%s arrived before its time", body)
		}
	}
	a.checkOnTime(t, due, time.Time{})
	if _, err := p.Send(ctx, &sdk.Message{Topic: "later", Body: []byte("x"), DeliverAt: time.Now().Add(31 * 24 * time.Hour)}); err == nil {
		t.Fatal("a delay of 31 days was taken")
	}
}

// Across kill -9: a message delivered before the kill is not delivered
// again, one due while the broker was down comes as soon as it is back,
// and one due later comes on time.
func TestDelayedDeliverySurvivesKill(t *testing.T) {
	b, ctx, p, a := later(t)
	now := time.Now()
	before := map[string]time.Time{"early": now.Add(1500 * time.Millisecond)}
	during := map[string]time.Time{"during": now.Add(3500 * time.Millisecond)}
	after := map[string]time.Time{"after": now.Add(7 * time.Second)}
	for _, m := range []map[string]time.Time{before, during, after} {
		sendAt(t, ctx, p, "later", m)
	}
	a.checkOnTime(t, before, time.Time{})
	b.Kill()
	time.Sleep(time.Until(during["during"]) + 500*time.Millisecond) // the fault: down at its time
	b.Restart()
	back := time.Now()
	a.checkOnTime(t, during, back)
	a.checkOnTime(t, after, time.Time{})
	if n := len(a.times("early")); n != 1 {
		t.Fatalf("the message delivered before the kill arrived %d times", n)
	}
}

// Across a failover: the leader that holds the delayed messages is killed;
// the follower elected in its place took them, and delivers each once, on
// time.
func TestDelayedDeliverySurvivesFailover(t *testing.T) {
	c := testbroker.StartControlled(t, 3, []string{"--min-insync", "1"}, nil)
	cl := c.Client(t)
	ctx := ctxT(t, 90*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "later", 2); err != nil {
		t.Fatal(err)
	}
	a := watch(t, cl, "later")
	p, err := cl.NewProducer(sdk.WithSendTimeout(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	now := time.Now()
	early := map[string]time.Time{"early": now.Add(1500 * time.Millisecond)}
	due := map[string]time.Time{"f1": now.Add(6 * time.Second), "f2": now.Add(7 * time.Second)}
	sendAt(t, ctx, p, "later", early)
	sendAt(t, ctx, p, "later", due)
	a.checkOnTime(t, early, time.Time{})
	old := c.Leader(t)
	old.Kill()
	if nl := c.Leader(t); nl == old {
		t.Fatal("the killed broker still leads")
	}
	a.checkOnTime(t, due, time.Time{})
	if n := len(a.times("early")); n != 1 {
		t.Fatalf("the message delivered before the failover arrived %d times", n)
	}
}

// How much memory delayed messages cost the broker while they wait: N
// (QUIVER_DELAY_PENDING, e.g. 1000000; make bench-delay) messages due
// between 2 hours and 30 days ahead are sent; the broker's resident
// memory is read before and after. Only an hour that has begun is held in
// memory, so it should not grow with N.
func TestDelayedPendingMemory(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("QUIVER_DELAY_PENDING"))
	if n <= 0 {
		t.Skip("set QUIVER_DELAY_PENDING (make bench-delay)")
	}
	b := testbroker.Start(t, "--durability", "async", "--admin-pprof")
	cl := b.Client()
	ctx := ctxT(t, 30*time.Minute)
	if err := cl.Admin().CreateTopic(ctx, "later", 4); err != nil {
		t.Fatal(err)
	}
	p, err := cl.NewProducer(sdk.WithSendTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// Warm up: the delay topic exists, its queues are touched.
	start := time.Now()
	for i := range 718 { // one in each hour from 2 h to 30 days ahead
		if _, err := p.Send(ctx, &sdk.Message{Topic: "later", Body: []byte("warm"), DeliverAt: start.Add(2*time.Hour + time.Duration(i)*time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	rss0, heap0 := b.RSS(), heapAlloc(t, b)
	body := make([]byte, 100)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	span := int64(30*24*time.Hour - 2*time.Hour)
	for i := range n {
		at := start.Add(2*time.Hour + time.Duration(int64(i)*7919%span))
		wg.Add(1)
		if err := p.SendAsync(ctx, &sdk.Message{Topic: "later", Body: body, DeliverAt: at}, func(_ sdk.SendResult, err error) {
			if err != nil {
				select {
				case errs <- err:
				default:
				}
			}
			wg.Done()
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	took := time.Since(start)
	rss1 := b.RSS()
	heap1 := heapAlloc(t, b)
	// What the waiting messages cost the broker when nothing else happens.
	cpu0 := b.CPU()
	time.Sleep(5 * time.Second) // the span measured
	idle := b.CPU() - cpu0
	t.Logf("idle with %d delayed messages waiting: %.1f%% of a core", n, 100*idle.Seconds()/5)
	t.Logf("%d delayed messages pending (sent in %v, %.0f/s): broker heap in use after a GC %.1f MiB before, %.1f MiB after (%.1f bytes per pending message); RSS %.1f MiB, %.1f MiB (the log's and the server's fixed buffers fill as they are touched)",
		n, took.Round(time.Second), float64(n)/took.Seconds(), float64(heap0)/(1<<20), float64(heap1)/(1<<20), float64(heap1-heap0)/float64(n),
		float64(rss0)/(1<<20), float64(rss1)/(1<<20))
}

// heapAlloc is the broker's live heap after a GC (its pprof heap header).
func heapAlloc(t *testing.T, b *testbroker.Broker) int64 {
	t.Helper()
	for _, l := range strings.Split(string(b.Get("/debug/pprof/heap?debug=1&gc=1")), "\n") {
		if v, ok := strings.CutPrefix(l, "# HeapAlloc = "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no HeapAlloc in the heap profile")
	return 0
}

// How fast the delayer stores a burst: QUIVER_DELAY_BURST messages (make
// bench-delay runs 20,000) due at the same instant; the time from then to
// the last one's arrival at a consumer.
func TestDelayedBurst(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("QUIVER_DELAY_BURST"))
	if n <= 0 {
		t.Skip("set QUIVER_DELAY_BURST (make bench-delay)")
	}
	_, ctx, p, a := later(t)
	due := time.Now().Add(5 * time.Second)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		if err := p.SendAsync(ctx, &sdk.Message{Topic: "later", Body: []byte(fmt.Sprint(i)), DeliverAt: due}, func(_ sdk.SendResult, err error) {
			if err != nil {
				t.Error(err)
			}
			wg.Done()
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if time.Now().After(due) {
		t.Fatalf("sending %d took past their time", n)
	}
	for deadline := due.Add(10 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
		a.mu.Lock()
		got := len(a.got)
		a.mu.Unlock()
		if got == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d delivered 10 minutes after their time", got, n)
		}
	}
	var last time.Time
	a.mu.Lock()
	for _, ts := range a.got {
		if ts[0].After(last) {
			last = ts[0]
		}
	}
	a.mu.Unlock()
	t.Logf("%d delayed messages due at once: the last arrived %v after their time (%.0f/s)", n, last.Sub(due).Round(time.Millisecond), float64(n)/last.Sub(due).Seconds())
}
