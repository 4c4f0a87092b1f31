package replica

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Tracker is a leader's account of its followers for synchronous
// replication: what each has durable, the committed in-sync set, a change
// of it that is proposed and not committed yet, and the sends that wait
// for acknowledgements. It does no I/O, starts no goroutine and reads no
// clock: every method takes the time, so tests drive it with a fake one.
// It is not safe for concurrent use (the Leader calls it under its mutex).
//
// The rule, which is the invariant of automatic failover (every
// acknowledged send is durable on every broker the controller could
// elect, and it elects only from the committed in-sync set):
//
//   - A send that waits for min-insync = K is acknowledged once every
//     follower of the committed set has it durable, and every follower of
//     a proposed set too, and the committed set holds at least K
//     followers. (Not "any K followers": with two in-sync followers and
//     K = 1, a send on one only could be lost by electing the other.)
//   - A send is refused at once while the committed set holds fewer than
//     K followers.
//   - The set shrinks only once the controller has committed it smaller:
//     until then the leader keeps waiting for the member it proposed to
//     drop. It grows at once: a follower proposed for the set counts for
//     acknowledgements from the moment it is proposed, and it is proposed
//     only when it has every acknowledged send durable (Kafka's "maximal
//     ISR"), so that it may be elected as soon as the controller commits.
//
// A follower leaves the set when it has not had everything the leader
// had for the lag (it fell behind, or it is gone), and joins it when it
// has had everything recently and has every acknowledged send durable.
type Tracker struct {
	k     int
	lag   time.Duration
	retry time.Duration
	start time.Time // the tracker's (the leadership's) start
	// floor is what a follower must have durable to join the set: the
	// leader's log end when its epoch began, then the highest end
	// acknowledged to a client.
	floor   int64
	isr     []string // committed, followers only, sorted
	version uint64
	pending *Proposal
	fs      map[string]*fstate
	waiters []*waiter // in log order (by end)
	// refused: followers whose joining the controller refused lately (it
	// saw no live session), not proposed again for a retry's time.
	refused map[string]time.Time
}

// fstate is what the tracker knows of one follower.
type fstate struct {
	acked     int64     // durable on the follower, in this epoch
	connected bool      // a replication session is live
	since     time.Time // when it connected or disconnected last
	caughtUp  time.Time // when it last had everything the leader had (zero: never)
}

// Proposal is a change of the in-sync set for the controller to commit.
type Proposal struct {
	ISR     []string          // the whole proposed set (followers only, sorted)
	Base    uint64            // the committed version it changes
	Removed map[string]string // follower -> why it leaves
	Added   []string
	At      time.Time // when it was (last) handed out
}

func (p *Proposal) String() string {
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(p.Removed)) {
		parts = append(parts, fmt.Sprintf("-%s (%s)", id, p.Removed[id]))
	}
	for _, id := range p.Added {
		parts = append(parts, "+"+id)
	}
	return fmt.Sprintf("in-sync set v%d -> %v: %s", p.Base, p.ISR, strings.Join(parts, ", "))
}

// waiter is a send that waits for its followers (synchronous replication).
type waiter struct {
	end      int64
	deadline time.Time
	done     func(error)
	err      error
}

// ErrNotEnoughReplicas fails a send when the committed in-sync set is
// smaller than min-insync, or its followers did not acknowledge in time.
var ErrNotEnoughReplicas = errors.New("replica: not enough in-sync followers")

// ProposalRetry is how long a proposal waits for its commit before it is
// handed out again (the controller may not have received it).
const ProposalRetry = time.Second

// NewTracker starts the account of a leadership that begins at now, with
// the log ending at floor, the controller's committed in-sync set isr
// (followers only) at version, and min-insync k.
func NewTracker(k int, lag time.Duration, isr []string, version uint64, floor int64, now time.Time) *Tracker {
	t := &Tracker{k: k, lag: lag, retry: ProposalRetry, start: now, floor: floor, fs: map[string]*fstate{}, refused: map[string]time.Time{}}
	t.setISR(isr, version)
	return t
}

func (t *Tracker) setISR(isr []string, version uint64) {
	t.isr = slices.Sorted(slices.Values(isr))
	t.isr = slices.Compact(t.isr)
	t.version = version
	for _, id := range t.isr {
		t.follower(id)
	}
}

func (t *Tracker) follower(id string) *fstate {
	f := t.fs[id]
	if f == nil {
		f = &fstate{since: t.start}
		t.fs[id] = f
	}
	return f
}

// Connected records that follower id opened a replication session; its
// acknowledgements start again from what it reports having (acked).
func (t *Tracker) Connected(id string, acked int64, now time.Time) {
	f := t.follower(id)
	f.connected, f.since = true, now
	f.acked = min(f.acked, acked)
}

// Disconnected records that id's session ended.
func (t *Tracker) Disconnected(id string, now time.Time) {
	f := t.follower(id)
	f.connected, f.since = false, now
}

// Acked records that id has the log durable up to durable.
func (t *Tracker) Acked(id string, durable int64) {
	f := t.follower(id)
	f.acked = max(f.acked, durable)
}

// CaughtUp records that id had, at at, everything the leader had.
func (t *Tracker) CaughtUp(id string, at time.Time) {
	f := t.follower(id)
	if at.After(f.caughtUp) {
		f.caughtUp = at
	}
}

// Commit takes the controller's committed set at version; an older
// version than the tracker's is ignored. A proposal on an older base is
// settled by it: committed or refused, the next one starts from here.
func (t *Tracker) Commit(isr []string, version uint64) bool {
	if version < t.version {
		return false
	}
	t.setISR(isr, version)
	if t.pending != nil && version > t.pending.Base {
		t.pending = nil
	}
	return true
}

// Refuse settles p as refused by the controller (not committed: a
// refusal is an answer, unlike a lost request, whose proposal stays
// pending). The followers it added stop counting for acknowledgements,
// and are not proposed again for a retry's time.
func (t *Tracker) Refuse(p *Proposal, now time.Time) {
	if t.pending != p {
		return
	}
	t.pending = nil
	for _, id := range p.Added {
		t.refused[id] = now
	}
}

// ISR is the committed set and its version.
func (t *Tracker) ISR() ([]string, uint64) { return slices.Clone(t.isr), t.version }

// Pending is the proposal waiting for its commit, or nil.
func (t *Tracker) Pending() *Proposal { return t.pending }

// Admit refuses a send when the committed set is smaller than min-insync.
func (t *Tracker) Admit() error {
	if len(t.isr) < t.k {
		return fmt.Errorf("%w: min-insync is %d, the in-sync set has %d follower(s)%s", ErrNotEnoughReplicas, t.k, len(t.isr), t.outside())
	}
	return nil
}

// outside names the followers that are not in the set, and why.
func (t *Tracker) outside() string {
	var out []string
	for _, id := range slices.Sorted(maps.Keys(t.fs)) {
		if slices.Contains(t.isr, id) {
			continue
		}
		f := t.fs[id]
		switch {
		case !f.connected:
			out = append(out, id+" not connected")
		case f.caughtUp.IsZero():
			out = append(out, id+" catching up")
		default:
			out = append(out, id+" joining")
		}
	}
	if len(out) == 0 {
		return ""
	}
	return " (" + strings.Join(out, ", ") + ")"
}

// required is the committed set and the proposed one, together.
func (t *Tracker) required(yield func(string) bool) {
	for _, id := range t.isr {
		if !yield(id) {
			return
		}
	}
	if t.pending != nil {
		for _, id := range t.pending.ISR {
			if !slices.Contains(t.isr, id) && !yield(id) {
				return
			}
		}
	}
}

// HW is the log position every required follower has durable (the
// committed and proposed sets; MaxInt64 when they are empty).
func (t *Tracker) HW() int64 {
	hw := int64(math.MaxInt64)
	for id := range t.required {
		hw = min(hw, t.fs[id].acked)
	}
	return hw
}

// Wait adds a send that ends at end and waits until deadline.
func (t *Tracker) Wait(end int64, deadline time.Time, done func(error)) {
	w := &waiter{end: end, deadline: deadline, done: done}
	i := len(t.waiters)
	for i > 0 && t.waiters[i-1].end > end {
		i--
	}
	t.waiters = slices.Insert(t.waiters, i, w)
}

// Step settles what can be settled at now: it returns the sends to
// answer (w.err set for a failure) and, when the set should change and no
// change is pending (or the pending one is due to be handed out again),
// the proposal.
func (t *Tracker) Step(now time.Time) (done []*waiter, p *Proposal) {
	if len(t.waiters) > 0 {
		hw := t.HW()
		ok := len(t.isr) >= t.k
		n := 0
		for n < len(t.waiters) && ok && t.waiters[n].end <= hw {
			t.floor = max(t.floor, t.waiters[n].end)
			n++
		}
		for n < len(t.waiters) && now.After(t.waiters[n].deadline) {
			t.waiters[n].err = t.lateError(t.waiters[n].end)
			n++
		}
		if n > 0 {
			done = slices.Clone(t.waiters[:n])
			clear(t.waiters[:n])
			t.waiters = t.waiters[n:]
		}
	}
	return done, t.propose(now)
}

func (t *Tracker) lateError(end int64) error {
	if len(t.isr) < t.k {
		return fmt.Errorf("%w: min-insync is %d, and the in-sync set has %d follower(s)%s", ErrNotEnoughReplicas, t.k, len(t.isr), t.outside())
	}
	var missing []string
	for id := range t.required {
		if t.fs[id].acked < end {
			missing = append(missing, id)
		}
	}
	return fmt.Errorf("%w: %s did not acknowledge in time", ErrNotEnoughReplicas, strings.Join(missing, ", "))
}

func (t *Tracker) propose(now time.Time) *Proposal {
	if p := t.pending; p != nil {
		if now.Sub(p.At) < t.retry {
			return nil
		}
		p.At = now
		return p
	}
	removed := map[string]string{}
	for _, id := range t.isr {
		f := t.fs[id]
		good := f.caughtUp
		if good.Before(t.start) {
			good = t.start
		}
		behind := now.Sub(good)
		if behind <= t.lag {
			continue
		}
		if f.connected {
			removed[id] = fmt.Sprintf("behind the leader for %v", behind.Round(time.Millisecond))
		} else {
			removed[id] = fmt.Sprintf("no replication session for %v", behind.Round(time.Millisecond))
		}
	}
	var added []string
	if len(removed) == 0 {
		for id, f := range t.fs {
			if slices.Contains(t.isr, id) || !f.connected || f.caughtUp.IsZero() {
				continue
			}
			if r, ok := t.refused[id]; ok && now.Sub(r) < t.retry {
				continue
			}
			if now.Sub(f.caughtUp) <= t.lag && f.acked >= t.floor {
				added = append(added, id)
			}
		}
		sort.Strings(added)
	}
	if len(removed) == 0 && len(added) == 0 {
		return nil
	}
	isr := append(slices.DeleteFunc(slices.Clone(t.isr), func(id string) bool { _, gone := removed[id]; return gone }), added...)
	sort.Strings(isr)
	t.pending = &Proposal{ISR: isr, Base: t.version, Removed: removed, Added: added, At: now}
	return t.pending
}

// NextDeadline is when Step has something to do next without another
// event (the zero time: nothing until an event).
func (t *Tracker) NextDeadline() time.Time {
	var next time.Time
	earlier := func(x time.Time) {
		if next.IsZero() || x.Before(next) {
			next = x
		}
	}
	if len(t.waiters) > 0 {
		earlier(t.waiters[0].deadline.Add(time.Nanosecond)) // "after the deadline"
	}
	if t.pending != nil {
		earlier(t.pending.At.Add(t.retry))
	} else {
		for _, id := range t.isr {
			good := t.fs[id].caughtUp
			if good.Before(t.start) {
				good = t.start
			}
			earlier(good.Add(t.lag + time.Nanosecond))
		}
	}
	return next
}

// FailAll fails every waiting send with err.
func (t *Tracker) FailAll(err error) []*waiter {
	w := t.waiters
	t.waiters = nil
	for _, x := range w {
		x.err = err
	}
	return w
}

// FollowerState is the tracker's view of one follower, for status.
type FollowerState struct {
	ID        string
	InISR     bool
	Proposed  bool // in the proposed set, not the committed one
	Leaving   string
	Acked     int64
	Connected bool
	CaughtUp  time.Time
}

// Followers lists every follower the tracker knows, by id.
func (t *Tracker) Followers() []FollowerState {
	out := make([]FollowerState, 0, len(t.fs))
	for id, f := range t.fs {
		st := FollowerState{ID: id, InISR: slices.Contains(t.isr, id), Acked: f.acked, Connected: f.connected, CaughtUp: f.caughtUp}
		if p := t.pending; p != nil {
			st.Proposed = !st.InISR && slices.Contains(p.ISR, id)
			st.Leaving = p.Removed[id]
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
