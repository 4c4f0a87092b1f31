package sdk

import (
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func trackerAt(m FaultAvoidance) (*faultTracker, *fakeClock) {
	c := &fakeClock{t: time.Unix(1e9, 0)}
	f := newFaultTracker(m)
	f.now = c.now
	return f, c
}

// asideFor reports how long addr stays set aside from now, to the
// millisecond, by moving the clock (then puts it back).
func asideFor(f *faultTracker, c *fakeClock, addr string) time.Duration {
	start := c.t
	defer func() { c.t = start }()
	for d := time.Duration(0); d <= time.Minute; d += time.Millisecond {
		c.t = start.Add(d)
		if f.usable(addr) {
			return d
		}
	}
	return -1
}

var errNet = &NetError{Broker: "b", Err: errors.New("connection reset")}

// The table mode is RocketMQ 5.1.4's MQFaultStrategy, row for row.
func TestFaultTable(t *testing.T) {
	cases := []struct {
		lat   time.Duration
		err   error
		aside time.Duration
	}{
		{40 * time.Millisecond, nil, 0},
		{99 * time.Millisecond, nil, 0},
		{549 * time.Millisecond, nil, 0},
		{550 * time.Millisecond, nil, 2 * time.Second},
		{1800 * time.Millisecond, nil, 5 * time.Second},
		{3500 * time.Millisecond, nil, 6 * time.Second},
		{6 * time.Second, nil, 10 * time.Second},
		{20 * time.Second, nil, 30 * time.Second},
		{time.Millisecond, errNet, 10 * time.Second},
		{time.Millisecond, &wire.Error{Code: wire.CodeBusy}, 10 * time.Second},
	}
	for _, c := range cases {
		f, clk := trackerAt(AvoidTable)
		f.sent("b", c.lat, c.err, false)
		if got := asideFor(f, clk, "b"); got != c.aside {
			t.Errorf("latency %v, err %v: set aside for %v, want %v", c.lat, c.err, got, c.aside)
		}
	}
}

// After its time aside a broker gets one probe at a time, and full
// traffic only once a probe came back good.
func TestFaultProbeBeforeFullTraffic(t *testing.T) {
	for _, mode := range []FaultAvoidance{AvoidTable, AvoidAdaptive} {
		f, clk := trackerAt(mode)
		f.sent("b", time.Millisecond, errNet, false)
		if ok, _ := f.acquire("b"); ok {
			t.Fatalf("%v: a failed broker took a send at once", mode)
		}
		clk.add(time.Minute)
		ok, probe := f.acquire("b")
		if !ok || !probe {
			t.Fatalf("%v: after its time aside: ok %v probe %v, want a probe", mode, ok, probe)
		}
		if ok, _ := f.acquire("b"); ok {
			t.Fatalf("%v: a second send while the probe is out", mode)
		}
		f.sent("b", time.Millisecond, errNet, true) // the probe failed: aside again
		if ok, _ := f.acquire("b"); ok {
			t.Fatalf("%v: a failed probe left it usable", mode)
		}
		clk.add(time.Minute)
		if _, probe := f.acquire("b"); !probe {
			t.Fatalf("%v: no second probe", mode)
		}
		f.release("b", true) // the probe went nowhere: give it back
		ok, probe = f.acquire("b")
		if !ok || !probe {
			t.Fatalf("%v: a released probe was not given again", mode)
		}
		f.sent("b", time.Millisecond, nil, true)
		for i := 0; i < 3; i++ {
			if ok, probe := f.acquire("b"); !ok || probe {
				t.Fatalf("%v: after a good probe: ok %v probe %v, want full traffic", mode, ok, probe)
			}
		}
	}
}

// Adaptive: slow is slow against the other brokers, a fault in a row
// doubles the time aside, and a good probe resets it.
func TestFaultAdaptive(t *testing.T) {
	f, clk := trackerAt(AvoidAdaptive)
	// A lone broker is never slow: there is nowhere else to go.
	f.sent("a", 300*time.Millisecond, nil, false)
	if !f.usable("a") {
		t.Fatal("a lone slow broker was set aside")
	}
	f, clk = trackerAt(AvoidAdaptive)
	for i := 0; i < 10; i++ {
		f.sent("a", time.Millisecond, nil, false)
		f.sent("b", 2*time.Millisecond, nil, false)
	}
	// 300 ms (an injected delay) against 1 ms elsewhere: aside, doubling.
	f.sent("c", 300*time.Millisecond, nil, false)
	want := time.Second
	for i := 0; i < 7; i++ {
		if got := asideFor(f, clk, "c"); got != want {
			t.Fatalf("fault %d in a row: aside %v, want %v", i+1, got, want)
		}
		clk.add(want)
		f.sent("a", time.Millisecond, nil, false) // the others stay fresh
		if _, probe := f.acquire("c"); !probe {
			t.Fatalf("fault %d: no probe after the time aside", i+1)
		}
		f.sent("c", 300*time.Millisecond, nil, true)
		want = min(2*want, 30*time.Second)
	}
	// 45 ms is under the floor, 3 ms under four times the best: not slow.
	f2, _ := trackerAt(AvoidAdaptive)
	f2.sent("a", time.Millisecond, nil, false)
	f2.sent("b", 45*time.Millisecond, nil, false)
	f2.sent("b", 3*time.Millisecond, nil, false)
	if !f2.usable("b") {
		t.Fatal("a broker under the floor was set aside")
	}
	// A good probe resets the doubling.
	clk.add(time.Minute)
	f.sent("a", time.Millisecond, nil, false)
	f.acquire("c")
	f.sent("c", time.Millisecond, nil, true)
	f.sent("c", time.Millisecond, errNet, false)
	if got := asideFor(f, clk, "c"); got != time.Second {
		t.Fatalf("after a good probe the next fault sets aside for %v, want 1s", got)
	}
	for _, h := range f.health() {
		if h.Addr == "c" && (h.Isolations != 9 || !h.Aside) {
			t.Fatalf("health of c: %+v, want 9 isolations and aside", h)
		}
	}
}

// Adaptive: the sends in flight when a broker fails fail together; they
// count as one fault, not as many in a row (which would set it aside for
// the 30 s maximum after one blip). A failed probe then doubles.
func TestFaultAdaptiveBurstIsOneFault(t *testing.T) {
	f, clk := trackerAt(AvoidAdaptive)
	for i := 0; i < 34; i++ {
		f.sent("b", time.Second, errNet, false)
	}
	if got := asideFor(f, clk, "b"); got != time.Second {
		t.Fatalf("34 sends failing at once set b aside for %v, want 1s", got)
	}
	clk.add(time.Second)
	if _, probe := f.acquire("b"); !probe {
		t.Fatal("no probe after the time aside")
	}
	f.sent("b", time.Second, errNet, true)
	if got := asideFor(f, clk, "b"); got != 2*time.Second {
		t.Fatalf("a failed probe set b aside for %v, want 2s", got)
	}
	for _, h := range f.health() {
		if h.Addr == "b" && h.Isolations != 2 {
			t.Fatalf("isolations of b: %d, want 2", h.Isolations)
		}
	}
}

func TestFaultOff(t *testing.T) {
	f, _ := trackerAt(AvoidOff)
	f.sent("b", time.Minute, errNet, false)
	if ok, probe := f.acquire("b"); !ok || probe || !f.usable("b") {
		t.Fatal("avoidance off set a broker aside")
	}
}

// Adaptive: a broker that answers nothing while sends wait on it is
// skipped after 100 ms (or 8 times its average), long before those sends
// time out, and taken again as soon as it answers.
func TestFaultStall(t *testing.T) {
	f, clk := trackerAt(AvoidAdaptive)
	f.sent("b", time.Millisecond, nil, false)
	f.begin("b")
	clk.add(90 * time.Millisecond)
	if ok, _ := f.acquire("b"); !ok {
		t.Fatal("skipped after 90 ms without an answer")
	}
	f.begin("b")
	clk.add(20 * time.Millisecond)
	if ok, _ := f.acquire("b"); ok || f.usable("b") {
		t.Fatal("a broker silent for 110 ms with sends waiting was not skipped")
	}
	f.end("b", false) // one timed out: still nothing from it
	if f.usable("b") {
		t.Fatal("a timeout counted as an answer")
	}
	f.end("b", true) // it answered
	if !f.usable("b") {
		t.Fatal("still skipped after it answered")
	}
	// Idle for long, then one send: not stalled at once.
	clk.add(time.Hour)
	f.begin("b")
	if !f.usable("b") {
		t.Fatal("a send to an idle broker made it stalled")
	}
	// The table mode knows nothing of stalls.
	ft, ct := trackerAt(AvoidTable)
	ft.begin("b")
	ct.add(time.Hour)
	if !ft.usable("b") {
		t.Fatal("table mode skipped a broker for silence")
	}
}

// choose spreads a set-aside broker's share evenly over the others (not
// all of it to the broker after it), gives it one probe once its time is
// up, and with avoidance off is plain round-robin.
func TestFaultChooseSpreadsEvenly(t *testing.T) {
	addrs := []string{"a", "b", "c"}
	count := func(f *faultTracker, from, n uint32) map[string]int {
		got := map[string]int{}
		for i := from; i < from+n; i++ {
			j, probe := f.choose(addrs, i)
			if j < 0 {
				t.Fatalf("choose %d: none usable", i)
			}
			if probe {
				got["probe "+addrs[j]]++
			}
			got[addrs[j]]++
		}
		return got
	}
	f, clk := trackerAt(AvoidAdaptive)
	f.sent("b", time.Millisecond, errNet, false)
	if got := count(f, 0, 600); got["a"] != 300 || got["c"] != 300 || got["b"] != 0 {
		t.Fatalf("b set aside: %v, want a and c 300 each", got)
	}
	clk.add(time.Minute)
	if got := count(f, 0, 600); got["b"] != 1 || got["probe b"] != 1 {
		t.Fatalf("b's time aside over: %v, want one probe of b and nothing more while it is out", got)
	}
	f.sent("b", time.Millisecond, nil, true)
	if got := count(f, 0, 600); got["a"] != 200 || got["b"] != 200 || got["c"] != 200 {
		t.Fatalf("b's probe came back good: %v, want 200 each", got)
	}
	off, _ := trackerAt(AvoidOff)
	off.sent("b", time.Millisecond, errNet, false)
	if got := count(off, 7, 600); got["a"] != 200 || got["b"] != 200 || got["c"] != 200 {
		t.Fatalf("avoidance off: %v, want 200 each", got)
	}
	if j, _ := f.choose(nil, 1); j != -1 {
		t.Fatalf("choose among none: %d", j)
	}
}

// When no broker a send has not failed on is usable, fallback still picks
// one, in classes: not failed on (though set aside); failed on but usable
// again; failed on and set aside; silent while sends wait on it (stalled)
// last. The replay of a failure seen under load: two live groups answered
// BUSY, and the send spent the rest of its deadline on the killed third.
func TestFaultFallback(t *testing.T) {
	type state int
	const (
		usable  state = iota
		aside         // failed 10 ms ago: aside for 1 s
		stalled       // a send has waited 200 ms with no answer
	)
	cases := []struct {
		name   string
		states []state // of a, b, c
		fresh  int     // a send has not failed on addrs[:fresh]
		want   []int   // the indexes picked over 6 consecutive n, in any order
	}{
		{"fresh ones aside: spread over them", []state{aside, aside, usable}, 2, []int{0, 1}},
		{"a fresh one stalled: the tried ones first", []state{stalled, aside, aside}, 1, []int{1, 2}},
		{"tried: the usable one first", []state{aside, usable, aside}, 0, []int{1}},
		{"tried: set aside before stalled", []state{stalled, aside, stalled}, 0, []int{1}},
		{"fresh set aside before tried usable", []state{aside, usable, usable}, 1, []int{0}},
		{"all stalled: spread anyway", []state{stalled, stalled, stalled}, 3, []int{0, 1, 2}},
	}
	addrs := []string{"a", "b", "c"}
	for _, c := range cases {
		f, clk := trackerAt(AvoidAdaptive)
		for i, s := range c.states {
			f.sent(addrs[i], time.Millisecond, nil, false)
			switch s {
			case aside:
				f.sent(addrs[i], time.Millisecond, errNet, false)
			case stalled:
				f.begin(addrs[i])
			}
		}
		clk.add(200 * time.Millisecond)
		got := map[int]bool{}
		for n := range uint32(6) {
			got[f.fallback(addrs, c.fresh, n)] = true
		}
		want := map[int]bool{}
		for _, i := range c.want {
			want[i] = true
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: picked %v, want %v", c.name, got, want)
		}
	}
	f, _ := trackerAt(AvoidAdaptive)
	if i := f.fallback(nil, 0, 3); i != -1 {
		t.Fatalf("fallback among none: %d", i)
	}
	// Avoidance off: every broker alike, round-robin over all.
	off, _ := trackerAt(AvoidOff)
	got := map[int]bool{}
	for n := range uint32(3) {
		got[off.fallback(addrs, 0, n)] = true
	}
	if len(got) != 3 {
		t.Fatalf("avoidance off: picked %v, want all three", got)
	}
}
