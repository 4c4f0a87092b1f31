package sdk

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// FaultAvoidance is how the client sets aside brokers whose requests fail
// or are slow (incident 002). It is per client: producers and consumers
// made from it share what it learned.
type FaultAvoidance uint8

const (
	// AvoidAdaptive (the default) judges a send slow against the other
	// brokers' recent latency rather than fixed thresholds: a broker is set
	// aside when a send took over 4 times the fastest broker's average and
	// at least 50 ms, or failed, for 1 s doubling with each failed probe
	// (up to 30 s); the sends in flight when it failed count as one fault. It then gets one probe send at a time until one
	// succeeds at normal speed. A broker that answers nothing for 100 ms
	// while sends wait on it is skipped until it answers, so a dead or
	// stopped broker is avoided before its sends time out.
	AvoidAdaptive FaultAvoidance = iota
	// AvoidTable uses RocketMQ 5.1.4's fixed table: a send that took 50,
	// 100, 550, 1800, 3000, 5000 or 15000 ms sets its broker aside for 0,
	// 0, 2, 5, 6, 10 or 30 s; a failure counts as 10000 ms (10 s). It then
	// gets one probe send at a time until one succeeds under 550 ms.
	AvoidTable
	// AvoidOff sends to every broker in turn whatever happened before;
	// failed sends are still retried on another broker.
	AvoidOff
)

func (m FaultAvoidance) String() string {
	switch m {
	case AvoidAdaptive:
		return "adaptive"
	case AvoidTable:
		return "table"
	case AvoidOff:
		return "off"
	}
	return "unknown"
}

// RocketMQ 5.1.4's latency-fault table (MQFaultStrategy).
var (
	tableLatency  = [...]time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 550 * time.Millisecond, 1800 * time.Millisecond, 3 * time.Second, 5 * time.Second, 15 * time.Second}
	tableIsolate  = [...]time.Duration{0, 0, 2 * time.Second, 5 * time.Second, 6 * time.Second, 10 * time.Second, 30 * time.Second}
	tableFailure  = 10 * time.Second // latency a failure counts as
	adaptiveBase  = time.Second
	adaptiveMax   = 30 * time.Second
	adaptiveFloor = 50 * time.Millisecond
	adaptiveRatio = 4.0
	// Adaptive: a broker that answered nothing for this long (or 8 times
	// its average, if longer) while sends wait on it is skipped until it
	// answers, before those sends time out.
	stallFloor = 100 * time.Millisecond
	// A broker's average counts as a reference for others while it is this
	// recent.
	referenceAge = 10 * time.Second
)

func tableDuration(lat time.Duration) time.Duration {
	for i := len(tableLatency) - 1; i >= 0; i-- {
		if lat >= tableLatency[i] {
			return tableIsolate[i]
		}
	}
	return 0
}

// faultTracker keeps, per broker address, whether it is set aside.
type faultTracker struct {
	mode FaultAvoidance
	now  func() time.Time

	mu sync.Mutex
	m  map[string]*brokerHealth
}

type brokerHealth struct {
	inflight   int       // sends waiting for its answer (adaptive)
	waiting    time.Time // since when sends have waited with no answer from it
	until      time.Time // set aside until then
	suspect    bool      // set aside once and not yet proven by a probe
	probing    bool      // a probe is in flight
	faults     int       // in a row (first fault, failed probes), for the adaptive doubling
	avg        float64   // EWMA of good sends' latency, ns
	avgAt      time.Time // when avg was last updated
	isolations int64     // times set aside (not while already aside), for status and tests
	reason     string    // why it was last set aside (ClientReport)
}

func newFaultTracker(mode FaultAvoidance) *faultTracker {
	return &faultTracker{mode: mode, now: time.Now, m: map[string]*brokerHealth{}}
}

func (f *faultTracker) get(addr string) *brokerHealth {
	h := f.m[addr]
	if h == nil {
		h = &brokerHealth{}
		f.m[addr] = h
	}
	return h
}

// usable reports whether requests may go to addr now (no probe taken).
func (f *faultTracker) usable(addr string) bool {
	if f.mode == AvoidOff {
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.usableLocked(f.m[addr], f.now())
}

// troubled reports whether some broker is set aside or silent while
// sends wait on it now (the routes are then refreshed more often: a
// failover's new leader is learned within a fraction of a second).
func (f *faultTracker) troubled() bool {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range f.m {
		if !f.usableLocked(h, now) || f.stalledLocked(h, now) {
			return true
		}
	}
	return false
}

func (f *faultTracker) usableLocked(h *brokerHealth, now time.Time) bool {
	return h == nil || (!now.Before(h.until) && !(h.suspect && h.probing) && !f.stalledLocked(h, now))
}

// stalledLocked (adaptive): sends wait on the broker and it has answered
// none for stallFloor, or 8 times its average latency: a broker killed,
// stopped or cut off shows this long before any send times out.
func (f *faultTracker) stalledLocked(h *brokerHealth, now time.Time) bool {
	if f.mode != AvoidAdaptive || h.inflight == 0 {
		return false
	}
	return now.Sub(h.waiting) > max(stallFloor, time.Duration(8*h.avg))
}

// begin records a send to addr going out; end records that it ended,
// answered when the broker answered it (with an ack or an error code).
func (f *faultTracker) begin(addr string) {
	if f.mode != AvoidAdaptive {
		return
	}
	f.mu.Lock()
	h := f.get(addr)
	if h.inflight == 0 {
		h.waiting = f.now()
	}
	h.inflight++
	f.mu.Unlock()
}

func (f *faultTracker) end(addr string, answered bool) {
	if f.mode != AvoidAdaptive {
		return
	}
	f.mu.Lock()
	h := f.get(addr)
	h.inflight = max(h.inflight-1, 0)
	if answered {
		h.waiting = f.now()
	}
	f.mu.Unlock()
}

// acquire asks to send to addr. ok is false while it is set aside; probe
// is true when this send is the one probe it gets before full traffic:
// its outcome must be reported with sent (or the probe given back with
// release).
func (f *faultTracker) acquire(addr string) (ok, probe bool) {
	if f.mode == AvoidOff {
		return true, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.acquireLocked(f.m[addr], f.now())
}

func (f *faultTracker) acquireLocked(h *brokerHealth, now time.Time) (ok, probe bool) {
	switch {
	case h == nil:
		return true, false
	case now.Before(h.until), f.stalledLocked(h, now):
		return false, false
	case !h.suspect:
		return true, false
	case h.probing:
		return false, false
	}
	h.probing = true
	return true, true
}

// choose acquires one of addrs, chosen by n among those usable now, so
// that a broker set aside hands its share to all the others evenly, not
// to the one after it. i is -1 when none is usable. One lock for the lot.
func (f *faultTracker) choose(addrs []string, n uint32) (i int, probe bool) {
	if len(addrs) == 0 {
		return -1, false
	}
	if f.mode == AvoidOff {
		return int(n % uint32(len(addrs))), false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	var buf [16]int
	ok := buf[:0]
	for j, a := range addrs {
		if f.usableLocked(f.m[a], now) {
			ok = append(ok, j)
		}
	}
	if len(ok) == 0 {
		return -1, false
	}
	i = ok[n%uint32(len(ok))]
	_, probe = f.acquireLocked(f.m[addrs[i]], now) // usable: always ok
	return i, probe
}

// fallback picks where a send goes when none of the brokers it has not
// failed on yet is usable (choose found none in addrs[:fresh]; addrs[fresh:]
// are those it failed on): better one set aside than none. The classes, in
// order: not failed on by this send; failed on but usable again; failed on
// and still set aside; and last a broker that is silent while sends wait
// on it (stalled: killed, stopped or cut off), which would only spend the
// send's deadline. Round-robin by n within the first class that has any,
// so that the traffic still spreads. -1 when addrs is empty.
func (f *faultTracker) fallback(addrs []string, fresh int, n uint32) int {
	if len(addrs) == 0 {
		return -1
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	class := func(j int) int {
		h := f.m[addrs[j]]
		switch {
		case h != nil && f.stalledLocked(h, now):
			return 3
		case j < fresh:
			return 0
		case f.usableLocked(h, now):
			return 1
		}
		return 2
	}
	var buf [16]int
	best, in := 4, buf[:0]
	for j := range addrs {
		switch c := class(j); {
		case c < best:
			best, in = c, append(in[:0], j)
		case c == best:
			in = append(in, j)
		}
	}
	return in[n%uint32(len(in))]
}

// release gives a probe back without an outcome (the send went nowhere).
func (f *faultTracker) release(addr string, probe bool) {
	if !probe {
		return
	}
	f.mu.Lock()
	if h := f.m[addr]; h != nil {
		h.probing = false
	}
	f.mu.Unlock()
}

// brokerFault reports whether err says something about the broker's
// health (rather than about the request, or about routing).
func brokerFault(err error) bool {
	var be *wire.Error
	var he *HandshakeError
	if errors.Is(err, context.Canceled) {
		return false // the caller gave up, the broker did not fail
	}
	if errors.As(err, &he) {
		return true // it refuses this client: send elsewhere meanwhile
	}
	if errors.As(err, &be) {
		switch be.Code {
		case wire.CodeBusy, wire.CodeTimeout, wire.CodeStopping, wire.CodeStorageFailed, wire.CodeDiskFull, wire.CodeNotEnoughReplicas:
			return true
		}
		return false
	}
	return Retryable(err)
}

// sent records the outcome of a request to addr that took lat: err nil
// for a success, else a failure that says something about the broker
// (brokerFault).
func (f *faultTracker) sent(addr string, lat time.Duration, err error, probe bool) {
	if f.mode == AvoidOff {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sentLocked(f.get(addr), addr, lat, err, probe, f.now())
}

// succeeded is end(addr, true) and sent(addr, lat, nil, probe) under one
// lock: the path every acknowledged send takes.
func (f *faultTracker) succeeded(addr string, lat time.Duration, probe bool) {
	if f.mode == AvoidOff {
		return
	}
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	h := f.get(addr)
	if f.mode == AvoidAdaptive {
		h.inflight = max(h.inflight-1, 0)
		h.waiting = now
	}
	f.sentLocked(h, addr, lat, nil, probe, now)
}

func (f *faultTracker) sentLocked(h *brokerHealth, addr string, lat time.Duration, err error, probe bool, now time.Time) {
	if probe {
		h.probing = false
	}
	var isolate time.Duration
	switch f.mode {
	case AvoidTable:
		if err != nil {
			isolate = tableDuration(tableFailure)
		} else {
			isolate = tableDuration(lat)
		}
	case AvoidAdaptive:
		slow := err == nil && f.slowLocked(addr, lat, now)
		if err == nil && !slow {
			if h.avgAt.IsZero() || now.Sub(h.avgAt) > referenceAge {
				h.avg = float64(lat)
			} else {
				h.avg = 0.8*h.avg + 0.2*float64(lat)
			}
			h.avgAt = now
		}
		if err != nil || slow {
			// A fault in a row is a first fault or a failed probe. The
			// other sends that were in flight when the broker failed
			// fail with it: they keep it aside, but do not double its
			// time (34 sends timing out together are one fault).
			if probe || !h.suspect || h.faults == 0 {
				h.faults++
			}
			isolate = min(adaptiveBase<<min(h.faults-1, 8), adaptiveMax)
		}
	}
	if isolate > 0 {
		if !now.Before(h.until) {
			h.isolations++
		}
		if err != nil {
			h.reason = "failed: " + err.Error()
		} else {
			h.reason = fmt.Sprintf("slow: answered in %v", lat.Round(time.Millisecond))
		}
		if until := now.Add(isolate); until.After(h.until) {
			h.until = until
		}
		h.suspect = true
		return
	}
	if probe {
		// The probe came back good: full traffic again.
		h.suspect, h.faults = false, 0
	}
}

// slowLocked: lat is over adaptiveRatio times the fastest other broker's
// recent average, and over adaptiveFloor. With no other broker to compare
// with, nothing is slow: there is nowhere else to send.
func (f *faultTracker) slowLocked(addr string, lat time.Duration, now time.Time) bool {
	if lat < adaptiveFloor {
		return false
	}
	best := -1.0
	for a, h := range f.m {
		if a == addr || h.avgAt.IsZero() || now.Sub(h.avgAt) > referenceAge || now.Before(h.until) {
			continue
		}
		if best < 0 || h.avg < best {
			best = h.avg
		}
	}
	return best >= 0 && float64(lat) > adaptiveRatio*best
}

// BrokerHealth is what fault avoidance knows of one broker.
type BrokerHealth struct {
	Addr string
	// Aside is true while new sends avoid it (set aside, or not answering
	// while sends wait on it).
	Aside bool
	// Isolations counts the times it was set aside.
	Isolations int64
	// AvgLatency is the recent average of its good sends (adaptive).
	AvgLatency time.Duration
}

// asideReport lists the brokers set aside now, for a ClientReport.
func (f *faultTracker) asideReport() []wire.AsideReport {
	if f.mode == AvoidOff {
		return nil
	}
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []wire.AsideReport
	for a, h := range f.m {
		stalled := f.stalledLocked(h, now)
		if !now.Before(h.until) && !stalled {
			continue
		}
		r := wire.AsideReport{Addr: a, Isolations: uint32(min(h.isolations, 1<<32-1)), Reason: h.reason}
		if now.Before(h.until) {
			r.ForMs = uint32(min(h.until.Sub(now).Milliseconds()+1, 1<<32-1))
		} else {
			r.Reason = fmt.Sprintf("no answer for %v with %d sends waiting", now.Sub(h.waiting).Round(time.Millisecond), h.inflight)
		}
		if len(r.Reason) > wire.MaxAsideReason {
			r.Reason = r.Reason[:wire.MaxAsideReason]
		}
		if len(a) <= wire.MaxAddrLen && len(out) < wire.MaxAsideReports {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

func (f *faultTracker) health() []BrokerHealth {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	out := make([]BrokerHealth, 0, len(f.m))
	for a, h := range f.m {
		aside := f.mode != AvoidOff && (now.Before(h.until) || f.stalledLocked(h, now))
		out = append(out, BrokerHealth{Addr: a, Aside: aside, Isolations: h.isolations, AvgLatency: time.Duration(h.avg)})
	}
	return out
}
