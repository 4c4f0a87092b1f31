//go:build chaos

package itest

// The fault-injection suite (`make chaos`, docs in BENCHMARKS.md): three
// broker groups of a leader and a follower (min-insync 1) on loopback, a
// steady open-loop load of sends and two consumers, and one fault at a
// time on g1's leader for FAULT (default 10s): SIGKILL (then restart),
// SIGSTOP (then SIGCONT), 300 ms added to everything it sends (a UDP
// relay in front of it, through which clients and the other brokers reach
// it; this kernel has no netem), and its disk stalled so that its send
// queue waits past max-queue-wait. Each fault runs with every fault
// avoidance mode. Environment: CHAOS_RATE (msgs/s, default 1000),
// CHAOS_FAULTS, CHAOS_MODES (comma lists), CHAOS_OUT (results directory).
//
// TestChaosFailover is the automatic failover row: one group of three
// brokers under a controller, each behind a relay on its own loopback
// address, the same load, and a fault on its leader: SIGKILL, SIGSTOP, or
// a partition (nothing in or out); CHAOS_FAILOVER_FAULTS and
// CHAOS_FAILOVER_MODES narrow it.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

type chaosFault struct {
	name, what   string
	inject, heal func(t *testing.T, bad *testbroker.Broker, front *relay)
	// partition: inject and heal are the environment's (cut the bad broker
	// off from everyone, in and out; heal it).
	partition bool
}

var chaosFaults = []chaosFault{
	{"kill", "SIGKILL of g1's leader, restarted after the fault",
		func(t *testing.T, b *testbroker.Broker, _ *relay) { b.Kill() },
		func(t *testing.T, b *testbroker.Broker, _ *relay) { b.Restart() }, false},
	{"stop", "SIGSTOP of g1's leader, SIGCONT after the fault",
		func(t *testing.T, b *testbroker.Broker, _ *relay) { b.Pause() },
		func(t *testing.T, b *testbroker.Broker, _ *relay) { b.Resume() }, false},
	{"slow", "300 ms added to every datagram g1's leader sends (a relay in front of it)",
		func(t *testing.T, _ *testbroker.Broker, r *relay) { r.delay.Store(int64(300 * time.Millisecond)) },
		func(t *testing.T, _ *testbroker.Broker, r *relay) { r.delay.Store(0) }, false},
	{"stall", "g1's leader's disk stalled: its send queue waits past max-queue-wait (200 ms)",
		func(t *testing.T, b *testbroker.Broker, _ *relay) { b.Post("/debug/faults/stall") },
		func(t *testing.T, b *testbroker.Broker, _ *relay) { b.Post("/debug/faults/resume") }, false},
	{"partition", "the leader cut off from clients and brokers both ways (relays), healed after the fault",
		nil, nil, true},
}

type chaosResult struct {
	Layout              string // "groups" (3 groups run by hand) or "controlled" (one group of 3 under a controller)
	Fault, Mode         string
	Rate                int
	Sent, Acked, Errors int
	Lost, Duplicates    int
	// Duplicates split: extra stored copies of a send (a retry whose first
	// attempt had landed: the producer's duplicates) and extra deliveries
	// of one stored copy (the consumer group's redeliveries).
	StoredTwice, Redelivered int
	Corrupt                  int     // consumed with a body that is not what was sent
	P50Ms, P99Ms, MaxMs      float64 // send latency (from the intended time) of sends due during the fault
	E2EP99Ms                 float64 // publish to consume, same sends
	TouchedPct               float64 // sends due during the fault that tried the bad broker
	BeforePct                float64 // sends due before the fault that went to the bad broker
	AvoidedAfterMs           int64   // -1: never
	// FailoverMs: from the fault to the first send acknowledged in a newer
	// epoch (controlled layout; -1: none during the fault).
	FailoverMs int64
	FirstError string `json:",omitempty"`
	// Diagnostics: duplicates of sends due before, during and after the
	// fault; touched sends per 250 ms window of the fault; how often the
	// producer's client set each broker aside (by role).
	DupsByPhase [3]int
	DupExamples []string `json:",omitempty"` // where the first duplicates were delivered
	Windows     []int
	Isolations  map[string]int64
}

// chaosPos is where a message was stored.
type chaosPos struct {
	group  string
	queue  uint32
	offset uint64
}

// chaosSend is one send of the load.
type chaosSend struct {
	due, acked time.Time
	err        error
	epoch      uint64
	touched    bool // an attempt went to the bad broker
}

func envList(name, def string) []string {
	v := os.Getenv(name)
	if v == "" {
		v = def
	}
	return strings.Split(v, ",")
}

func TestChaos(t *testing.T) {
	chaosMatrix(t, "chaos", "CHAOS_FAULTS", "kill,stop,slow,stall", "CHAOS_MODES", "adaptive,table,off", groupsEnv)
}

// TestChaosFailover is the automatic failover row: one group of three
// brokers under a controller (min-insync 1), the same load, and a fault
// on whichever broker leads when it begins: SIGKILL, SIGSTOP, a
// partition. Adaptive avoidance (CHAOS_FAILOVER_MODES to change it).
func TestChaosFailover(t *testing.T) {
	chaosMatrix(t, "failover", "CHAOS_FAILOVER_FAULTS", "kill,stop,partition", "CHAOS_FAILOVER_MODES", "adaptive", controlledEnv)
}

// chaosMatrix runs every fault of faultsVar (default faults) with every
// avoidance mode of modesVar on the clusters build makes, and prints and
// saves the table as name.
func chaosMatrix(t *testing.T, name, faultsVar, faults, modesVar, modes string, build func(*testing.T, sdk.FaultAvoidance) *chaosEnv) {
	rate := 1000
	if v, err := strconv.Atoi(os.Getenv("CHAOS_RATE")); err == nil && v > 0 {
		rate = v
	}
	fault := 10 * time.Second
	if d, err := time.ParseDuration(os.Getenv("CHAOS_FAULT")); err == nil {
		fault = d
	}
	byName := map[string]sdk.FaultAvoidance{"adaptive": sdk.AvoidAdaptive, "table": sdk.AvoidTable, "off": sdk.AvoidOff}
	var results []chaosResult
	for _, fname := range envList(faultsVar, faults) {
		var f *chaosFault
		for i := range chaosFaults {
			if chaosFaults[i].name == fname {
				f = &chaosFaults[i]
			}
		}
		if f == nil {
			t.Fatalf("unknown fault %q", fname)
		}
		if f.partition && name != "failover" {
			t.Fatalf("fault %q needs the controlled layout (TestChaosFailover)", fname)
		}
		for _, mname := range envList(modesVar, modes) {
			mode, ok := byName[mname]
			if !ok {
				t.Fatalf("unknown mode %q", mname)
			}
			t.Run(fname+"/"+mname, func(t *testing.T) {
				r := runChaos(t, f, mode, rate, fault, build)
				results = append(results, r)
				t.Logf("%+v", r)
			})
		}
	}
	printChaos(t, results, rate, fault, name)
}

// chaosEnv is a cluster ready for a chaos run.
type chaosEnv struct {
	layout   string
	pcl, ccl *sdk.Client
	brokers  []*testbroker.Broker
	// bad picks the broker to fault when the fault begins, with the
	// relay in front of it.
	bad func(t *testing.T) (*testbroker.Broker, *relay)
	// partition cuts b off (true) or heals it (false).
	partition func(b *testbroker.Broker, cut bool)
	// epoch is the epoch of the group the fault hits, when it begins.
	epoch func(t *testing.T, b *testbroker.Broker) uint64
}

// groupsEnv: three groups of a leader and a follower run by hand, a relay
// in front of g1's leader.
func groupsEnv(t *testing.T, mode sdk.FaultAvoidance) *chaosEnv {
	var front *relay // in front of g1's leader (broker 2), in every run
	c := testbroker.StartClusterVia(t, 3, 1, []string{"--min-insync", "1", "--debug-faults", "--max-queue-wait", "200ms"}, nil,
		func(i int, listen string) string {
			if i != 2 {
				return listen
			}
			front = newRelay(t, listen)
			return front.addr()
		})
	bad := c.Groups[1].Leader
	ctx := ctxT(t, time.Minute)
	pcl := c.Client(sdk.WithFaultAvoidance(mode))
	ccl := c.Client(sdk.WithFaultAvoidance(mode))
	testbroker.WaitFor(t, "the clients to see every group", func() bool {
		g1, _, err1 := pcl.Admin().Cluster(ctx)
		g2, _, err2 := ccl.Admin().Cluster(ctx)
		return err1 == nil && err2 == nil && len(g1) == 3 && len(g2) == 3
	})
	return &chaosEnv{layout: "groups", pcl: pcl, ccl: ccl, brokers: c.Brokers(),
		bad: func(*testing.T) (*testbroker.Broker, *relay) { return bad, front }}
}

// controlledEnv: one group of three under a controller, each broker on
// its own loopback address behind a relay (so that a partition cuts it
// off both ways).
func controlledEnv(t *testing.T, mode sdk.FaultAvoidance) *chaosEnv {
	hosts := []string{"127.0.0.21", "127.0.0.22", "127.0.0.23"}
	relays := map[int]*relay{}
	c := testbroker.StartControlledGroups(t, testbroker.Spec{Prefix: "b", N: 3, Hosts: hosts,
		Args: []string{"--min-insync", "1", "--debug-faults", "--max-queue-wait", "200ms"},
		Front: func(i int, listen string) string {
			relays[i] = newRelay(t, listen)
			return relays[i].addr()
		}})[0]
	pcl := c.Client(t, sdk.WithFaultAvoidance(mode))
	ccl := c.Client(t, sdk.WithFaultAvoidance(mode))
	index := func(b *testbroker.Broker) int { return slices.Index(c.Brokers, b) }
	return &chaosEnv{layout: "controlled", pcl: pcl, ccl: ccl, brokers: c.Brokers,
		bad: func(t *testing.T) (*testbroker.Broker, *relay) {
			l := c.Leader(t)
			return l, relays[index(l)]
		},
		partition: func(b *testbroker.Broker, cut bool) {
			i := index(b)
			relays[i].cut.Store(cut)
			for j, r := range relays {
				if j == i {
					continue
				}
				if cut {
					r.block(hosts[i])
				} else {
					r.unblock(hosts[i])
				}
			}
		},
		epoch: func(t *testing.T, b *testbroker.Broker) uint64 { _, e := b.Role(); return e },
	}
}

func runChaos(t *testing.T, f *chaosFault, mode sdk.FaultAvoidance, rate int, faultFor time.Duration, build func(*testing.T, sdk.FaultAvoidance) *chaosEnv) chaosResult {
	env := build(t, mode)
	pcl, ccl := env.pcl, env.ccl
	ctx := ctxT(t, 10*time.Minute)
	if err := pcl.Admin().CreateTopic(ctx, "chaos", 4); err != nil {
		t.Fatal(err)
	}

	// Consumers: what arrived, how often, and when.
	var rmu sync.Mutex
	received := map[uint64]int{}
	where := map[uint64][]string{} // id -> group/queue@offset of each delivery (duplicates' diagnosis)
	// id -> the distinct positions it was delivered from: more than one
	// means the producer stored it twice; more deliveries than positions
	// are consumer redeliveries of one stored copy.
	stored := map[uint64]map[chaosPos]struct{}{}
	corrupt := 0
	recvAt := map[uint64]time.Time{}
	cctx, cstop := context.WithCancel(ctx)
	var cwg sync.WaitGroup
	for i := 0; i < 2; i++ {
		cons, err := ccl.NewConsumer("chaos-readers", []string{"chaos"})
		if err != nil {
			t.Fatal(err)
		}
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			defer cons.Close()
			cons.Run(cctx, func(_ context.Context, m *sdk.Message) error {
				id := binary.LittleEndian.Uint64(m.Body)
				rmu.Lock()
				if !chaosBodyOK(m.Body) {
					corrupt++
					rmu.Unlock()
					return nil
				}
				received[id]++
				if received[id] == 1 {
					recvAt[id] = time.Now()
				}
				if len(where[id]) < 3 {
					where[id] = append(where[id], fmt.Sprintf("%s/%d@%d", m.Group, m.Queue, m.Offset))
				}
				if stored[id] == nil {
					stored[id] = map[chaosPos]struct{}{}
				}
				stored[id][chaosPos{m.Group, m.Queue, m.Offset}] = struct{}{}
				rmu.Unlock()
				return nil
			})
		}()
	}

	// The load: open loop at rate, latency from the intended send time.
	// QUIVER_CHAOS_COALESCE=0 runs it with natural batching off.
	var popts []sdk.ProducerOpt
	if os.Getenv("QUIVER_CHAOS_COALESCE") == "0" {
		popts = append(popts, sdk.WithoutCoalescing())
	}
	p, err := pcl.NewProducer(popts...)
	if err != nil {
		t.Fatal(err)
	}
	warm, before := 3*time.Second, 5*time.Second
	total := warm + before + faultFor + 10*time.Second
	n := int(total.Seconds() * float64(rate))
	sends := make([]chaosSend, n)
	start := time.Now().Add(100 * time.Millisecond)
	faultAt, healAt := start.Add(warm+before), start.Add(warm+before+faultFor)
	// The broker to fault is picked before the load starts (a controlled
	// group's leader), and the fault goes on it however roles change.
	bad, front := env.bad(t)
	var faultEpoch uint64
	if env.epoch != nil {
		faultEpoch = env.epoch(t, bad)
	}
	go func() {
		time.Sleep(time.Until(faultAt))
		if f.partition {
			env.partition(bad, true)
		} else {
			f.inject(t, bad, front)
		}
		time.Sleep(time.Until(healAt))
		if f.partition {
			env.partition(bad, false)
		} else {
			f.heal(t, bad, front)
		}
	}()
	interval := time.Second / time.Duration(rate)
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		body := chaosBody(uint64(i))
		s := &sends[i]
		s.due = due
		err := p.SendAsync(ctx, &sdk.Message{Topic: "chaos", Body: body}, func(res sdk.SendResult, err error) {
			s.acked, s.err, s.epoch = time.Now(), err, res.Epoch
			touched := res.Broker == bad.Public
			for _, a := range res.Failed {
				touched = touched || a.Broker == bad.Public
			}
			var se *sdk.SendError
			if errors.As(err, &se) {
				for _, a := range se.Attempts {
					touched = touched || a.Broker == bad.Public
				}
			}
			s.touched = touched
		})
		if err != nil {
			s.err = err
		}
	}
	p.Close() // waits for every callback

	// Wait for the consumers to have every acknowledged message.
	r := chaosResult{Layout: env.layout, Fault: f.name, Mode: mode.String(), Rate: rate, Sent: n, AvoidedAfterMs: -1, FailoverMs: -1}
	if env.epoch != nil {
		for i := range sends {
			if s := &sends[i]; s.err == nil && s.epoch > faultEpoch && s.acked.After(faultAt) && s.acked.Before(healAt) {
				if ms := s.acked.Sub(faultAt).Milliseconds(); r.FailoverMs < 0 || ms < r.FailoverMs {
					r.FailoverMs = ms
				}
			}
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		missing := 0
		rmu.Lock()
		for i := range sends {
			if sends[i].err == nil && received[uint64(i)] == 0 {
				missing++
			}
		}
		rmu.Unlock()
		if missing == 0 || time.Now().After(deadline) {
			r.Lost = missing
			break
		}
		time.Sleep(200 * time.Millisecond) // polling the consumers' progress
	}
	cstop()
	cwg.Wait()
	r.Corrupt = corrupt

	var lat, e2e []float64
	var pre, beforeBad int
	windows := map[int64][2]int{} // 250 ms window of the fault -> (sends, touched)
	for i := range sends {
		s := &sends[i]
		if s.err != nil {
			r.Errors++
			if r.FirstError == "" {
				r.FirstError = s.err.Error()
			}
		} else {
			r.Acked++
		}
		rmu.Lock()
		if k := received[uint64(i)]; k > 1 {
			if r.Duplicates < 5 {
				r.DupExamples = append(r.DupExamples, fmt.Sprintf("send %d due %v after the fault began: %v",
					i, s.due.Sub(faultAt).Round(time.Millisecond), where[uint64(i)]))
			}
			r.Duplicates += k - 1
			copies := len(stored[uint64(i)])
			r.StoredTwice += copies - 1
			r.Redelivered += k - copies
			switch {
			case s.due.Before(faultAt):
				r.DupsByPhase[0] += k - 1
			case s.due.Before(healAt):
				r.DupsByPhase[1] += k - 1
			default:
				r.DupsByPhase[2] += k - 1
			}
		}
		at, ok := recvAt[uint64(i)]
		rmu.Unlock()
		if s.due.Before(faultAt) && !s.due.Before(start.Add(warm)) {
			pre++
			if s.touched {
				beforeBad++
			}
		}
		if s.due.Before(faultAt) || !s.due.Before(healAt) {
			continue
		}
		if s.err == nil {
			lat = append(lat, float64(s.acked.Sub(s.due).Microseconds())/1000)
			if ok {
				e2e = append(e2e, float64(at.Sub(s.due).Microseconds())/1000)
			}
		}
		w := int64(s.due.Sub(faultAt) / (250 * time.Millisecond))
		c := windows[w]
		c[0]++
		if s.touched {
			c[1]++
		}
		windows[w] = c
	}
	if pre > 0 {
		r.BeforePct = 100 * float64(beforeBad) / float64(pre)
	}
	sort.Float64s(lat)
	sort.Float64s(e2e)
	r.P50Ms, r.P99Ms, r.MaxMs = pct(lat, 50), pct(lat, 99), pct(lat, 100)
	r.E2EP99Ms = pct(e2e, 99)
	var all, touched int
	nw := int64(faultFor / (250 * time.Millisecond))
	for w := int64(0); w < nw; w++ {
		all += windows[w][0]
		touched += windows[w][1]
		r.Windows = append(r.Windows, windows[w][1])
	}
	r.Isolations = map[string]int64{}
	for _, h := range pcl.BrokerHealth() {
		name := h.Addr
		for _, b := range env.brokers {
			if b.Public == h.Addr {
				for j := 0; j+1 < len(b.Args); j++ {
					if b.Args[j] == "--broker-id" {
						name = b.Args[j+1]
					}
				}
			}
		}
		r.Isolations[name] = h.Isolations
	}
	if all > 0 {
		r.TouchedPct = 100 * float64(touched) / float64(all)
	}
	// Avoided from the first window after which no window of the fault
	// sent more than 1% of its sends to the bad broker. One send in a
	// window is a probe (one at a time per broker), which avoidance makes
	// on purpose: it counts as avoided.
	for w := nw - 1; w >= 0; w-- {
		c := windows[w]
		if c[1] > 1 && float64(c[1]) > 0.01*float64(c[0]) {
			if w+1 < nw {
				r.AvoidedAfterMs = (w + 1) * 250
			}
			break
		}
		if w == 0 {
			r.AvoidedAfterMs = 0
		}
	}
	if r.Lost != 0 {
		t.Errorf("%d acknowledged messages never reached the consumers", r.Lost)
	}
	if r.Corrupt != 0 {
		t.Errorf("%d messages consumed with a body that was not sent", r.Corrupt)
	}
	return r
}

// chaosBody is message id's 256-byte body: the id, then bytes that depend
// on it, so that a consumer can tell a damaged or mixed-up body.
func chaosBody(id uint64) []byte {
	b := make([]byte, 256)
	binary.LittleEndian.PutUint64(b, id)
	for j := 8; j < len(b); j++ {
		b[j] = byte(id*31 + uint64(j))
	}
	return b
}

func chaosBodyOK(b []byte) bool {
	return len(b) == 256 && string(b) == string(chaosBody(binary.LittleEndian.Uint64(b)))
}

func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

func printChaos(t *testing.T, rs []chaosResult, rate int, fault time.Duration, name string) {
	var b strings.Builder
	if name == "failover" {
		fmt.Fprintf(&b, "\nchaos: one group of 3 under a controller, min-insync 1, %d msgs/s open loop, 256 B, fault %v on its leader\n\n", rate, fault)
	} else {
		fmt.Fprintf(&b, "\nchaos: 3 groups x (leader + follower), min-insync 1, %d msgs/s open loop, 256 B, fault %v on g1's leader\n\n", rate, fault)
	}
	b.WriteString("| fault | avoidance | acked | lost | corrupt | app errors | duplicates (stored twice / redelivered) | p50 ms | p99 ms | max ms | e2e p99 ms | sends to the bad broker | avoided after | failover |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		avoided := "never"
		if r.AvoidedAfterMs >= 0 {
			avoided = fmt.Sprintf("%.2f s", float64(r.AvoidedAfterMs)/1000)
		}
		failover := "-"
		if r.FailoverMs >= 0 {
			failover = fmt.Sprintf("%.2f s", float64(r.FailoverMs)/1000)
		}
		fmt.Fprintf(&b, "| %s | %s | %d / %d | %d | %d | %d | %d (%d / %d) | %.1f | %.1f | %.1f | %.1f | %.1f %% | %s | %s |\n",
			r.Fault, r.Mode, r.Acked, r.Sent, r.Lost, r.Corrupt, r.Errors, r.Duplicates, r.StoredTwice, r.Redelivered, r.P50Ms, r.P99Ms, r.MaxMs, r.E2EP99Ms, r.TouchedPct, avoided, failover)
	}
	fmt.Print(b.String())
	out := os.Getenv("CHAOS_OUT")
	if out == "" {
		return
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	js, _ := json.MarshalIndent(rs, "", "  ")
	os.WriteFile(filepath.Join(out, name+".json"), js, 0o644)
	os.WriteFile(filepath.Join(out, name+".md"), []byte(b.String()), 0o644)
}

// Incident 004 for a whole minute: a client whose every Hello is refused
// (its credentials are wrong) keeps sending; it opens a bounded number of
// sessions (hard failures back off from 5 s, doubling) and the broker
// writes at most one line per minute about it.
func TestChaosIncident004(t *testing.T) {
	b := testbroker.Start(t, "--tokens", "s3cret")
	cl := b.Client(sdk.WithCredentials([]byte("expired")), sdk.WithClientID("dead-webapp"))
	p, _ := cl.NewProducer()
	defer p.Close()
	ctx := ctxT(t, 2*time.Minute)
	sends := 0
	for start := time.Now(); time.Since(start) < time.Minute; sends++ {
		if _, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: []byte("x")}); err == nil {
			t.Fatal("a send with refused credentials succeeded")
		}
		time.Sleep(10 * time.Millisecond) // the application's own loop: 100 sends a second
	}
	var sessions int64
	for _, f := range b.Status().Connections.FailedHandshakes {
		if f.ClientID == "dead-webapp" {
			sessions += f.Count
		}
	}
	lines := strings.Count(b.Log(), "connections closed before a session was established")
	fmt.Printf("\nincident 004, 60 s: %d sends by the application, %d refused sessions, %d broker log lines about them\n", sends, sessions, lines)
	// Backoff from 5 s (never under half), doubling: at most 5 sessions
	// in a minute; one log line per source per minute (two if the minute
	// straddles).
	if sessions < 1 || sessions > 5 || lines < 1 || lines > 2 {
		t.Fatalf("%d sessions, %d log lines in a minute", sessions, lines)
	}
}
