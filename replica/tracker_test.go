package replica

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// clock is a fake clock for the tracker.
type clock struct{ now time.Time }

func (c *clock) at(d time.Duration) time.Time { c.now = c.now.Add(d); return c.now }

func newClock() *clock { return &clock{now: time.Unix(1_000_000, 0)} }

// outcome collects a waiter's answer.
type outcome struct {
	done bool
	err  error
}

func (o *outcome) fn(err error) { o.done, o.err = true, err }

// settle runs Step and answers what it returns, as the Leader does.
func settle(t *Tracker, now time.Time) *Proposal {
	done, p := t.Step(now)
	for _, w := range done {
		w.done(w.err)
	}
	return p
}

// caughtUp connects the followers and has them ack end at now, having had
// everything the leader had.
func caughtUp(t *Tracker, now time.Time, end int64, ids ...string) {
	for _, id := range ids {
		t.Connected(id, end, now)
		t.Acked(id, end)
		t.CaughtUp(id, now)
	}
}

// The replay of commitPos(k): with two in-sync followers and min-insync 1,
// a send that one follower has is not acknowledged until the other has it
// too (or the controller has committed the set without it): electing the
// other must not lose it.
func TestAckNeedsEveryInSyncFollower(t *testing.T) {
	c := newClock()
	tr := NewTracker(1, 5*time.Second, []string{"f1", "f2"}, 3, 0, c.now)
	caughtUp(tr, c.now, 0, "f1", "f2")
	needsBoth(t, tr, c, 100)
}

// needsBoth checks that a send ending at end is acknowledged once f2 has
// it too, not when f1 alone has it.
func needsBoth(t *testing.T, tr *Tracker, c *clock, end int64) {
	t.Helper()
	var o outcome
	tr.Wait(end, c.now.Add(2*time.Second), o.fn)
	tr.Acked("f1", end)
	settle(tr, c.at(time.Millisecond))
	if o.done {
		t.Fatalf("send to %d acknowledged with f1 alone while f2 is in the in-sync set", end)
	}
	tr.Acked("f2", end)
	settle(tr, c.at(time.Millisecond))
	if !o.done || o.err != nil {
		t.Fatalf("send to %d not acknowledged once both have it: %+v", end, o)
	}
}

// A lagging member is proposed out after the lag; until the controller
// commits that, sends keep waiting for it; once committed they go on
// without it.
func TestShrinkOnlyOnceCommitted(t *testing.T) {
	c := newClock()
	tr := NewTracker(1, 5*time.Second, []string{"f1", "f2"}, 3, 0, c.now)
	caughtUp(tr, c.now, 0, "f1", "f2")
	var o outcome
	tr.Wait(100, c.now.Add(10*time.Second), o.fn)
	tr.Acked("f1", 100)
	tr.CaughtUp("f1", c.now)
	if p := settle(tr, c.at(4*time.Second)); p != nil {
		t.Fatalf("proposed within the lag: %v", p)
	}
	tr.CaughtUp("f1", c.now)
	p := settle(tr, c.at(1500*time.Millisecond)) // f2: 5.5 s without catching up
	if p == nil || !slices.Equal(p.ISR, []string{"f1"}) || p.Base != 3 || !strings.Contains(p.Removed["f2"], "behind the leader") {
		t.Fatalf("proposal: %+v", p)
	}
	if o.done {
		t.Fatal("acknowledged before the shrink was committed")
	}
	if settle(tr, c.at(100*time.Millisecond)) != nil {
		t.Fatal("a second proposal while one is pending")
	}
	if !tr.Commit([]string{"f1"}, 4) {
		t.Fatal("commit refused")
	}
	settle(tr, c.now)
	if !o.done || o.err != nil {
		t.Fatalf("not acknowledged after the shrink: %+v", o)
	}
}

// A follower proposed for the set counts at once, and is proposed only
// when it has every acknowledged send.
func TestExpansionCountsAtOnce(t *testing.T) {
	c := newClock()
	tr := NewTracker(1, 5*time.Second, []string{"f1"}, 1, 500, c.now)
	caughtUp(tr, c.now, 500, "f1")
	// f2 caught up with the leader's end but has not synced the epoch's
	// start yet: not a candidate.
	tr.Connected("f2", 0, c.now)
	tr.Acked("f2", 400)
	tr.CaughtUp("f2", c.now)
	if p := settle(tr, c.at(time.Millisecond)); p != nil {
		t.Fatalf("proposed a follower without every acknowledged send: %v", p)
	}
	var o1 outcome
	tr.Wait(600, c.now.Add(2*time.Second), o1.fn)
	tr.Acked("f1", 600)
	settle(tr, c.at(time.Millisecond))
	if !o1.done || o1.err != nil {
		t.Fatalf("first send: %+v", o1)
	}
	tr.Acked("f2", 599) // below the acknowledged 600
	if p := settle(tr, c.at(time.Millisecond)); p != nil {
		t.Fatalf("proposed a follower missing an acknowledged send: %v", p)
	}
	tr.Acked("f2", 600)
	p := settle(tr, c.at(time.Millisecond))
	if p == nil || !slices.Equal(p.ISR, []string{"f1", "f2"}) || !slices.Equal(p.Added, []string{"f2"}) {
		t.Fatalf("proposal: %+v", p)
	}
	needsBoth(t, tr, c, 700) // the proposed member counts at once
}

// Admission and lateness: fewer committed followers than min-insync
// refuses a send at once; a send the set does not acknowledge in time
// fails naming who did not.
func TestAdmitAndDeadline(t *testing.T) {
	c := newClock()
	tr := NewTracker(2, 5*time.Second, []string{"f1"}, 1, 0, c.now)
	if err := tr.Admit(); !errors.Is(err, ErrNotEnoughReplicas) || !strings.Contains(err.Error(), "min-insync is 2, the in-sync set has 1") {
		t.Fatalf("admit: %v", err)
	}
	tr = NewTracker(1, 5*time.Second, []string{"f1", "f2"}, 1, 0, c.now)
	if err := tr.Admit(); err != nil {
		t.Fatal(err)
	}
	caughtUp(tr, c.now, 0, "f1", "f2")
	var o outcome
	tr.Wait(100, c.now.Add(2*time.Second), o.fn)
	tr.Acked("f1", 100)
	if d := tr.NextDeadline(); !d.After(c.now.Add(2*time.Second)) || d.After(c.now.Add(2*time.Second+time.Millisecond)) {
		t.Fatalf("next deadline %v, want just after the send's", d.Sub(c.now))
	}
	settle(tr, c.at(2*time.Second))
	if o.done {
		t.Fatal("failed at its deadline, not after it")
	}
	settle(tr, c.at(time.Millisecond))
	if !o.done || !errors.Is(o.err, ErrNotEnoughReplicas) || !strings.Contains(o.err.Error(), "f2 did not acknowledge in time") {
		t.Fatalf("late send: %+v", o)
	}
}

// A proposal is handed out again when no commit came; a commit of an
// older version is ignored; any newer one settles the proposal.
func TestProposalRetryAndStaleCommits(t *testing.T) {
	c := newClock()
	tr := NewTracker(1, time.Second, []string{"f1", "f2"}, 5, 0, c.now)
	caughtUp(tr, c.now, 0, "f1")
	p := settle(tr, c.at(1100*time.Millisecond))
	if p == nil || !strings.Contains(p.Removed["f2"], "no replication session") {
		t.Fatalf("f2 never connected: %+v", p)
	}
	if settle(tr, c.at(500*time.Millisecond)) != nil {
		t.Fatal("handed out again before ProposalRetry")
	}
	if again := settle(tr, c.at(ProposalRetry)); again != p {
		t.Fatalf("not handed out again after ProposalRetry: %v", again)
	}
	if tr.Commit([]string{"f1"}, 4) {
		t.Fatal("an older version was taken")
	}
	// The controller refused it and went its own way (a newer version
	// with f2 still in): the proposal is settled, and made again.
	tr.Commit([]string{"f1", "f2"}, 6)
	if tr.Pending() != nil {
		t.Fatal("the proposal is still pending after a newer commit")
	}
	if p := settle(tr, c.at(time.Millisecond)); p == nil || p.Base != 6 {
		t.Fatalf("not proposed again on the new version: %+v", p)
	}
}

// A follower in the set that disconnects and stays away leaves it with
// the reason; a committed member that comes back and catches up joins
// again.
func TestLeaveAndRejoin(t *testing.T) {
	c := newClock()
	tr := NewTracker(1, 2*time.Second, []string{"f1", "f2"}, 1, 0, c.now)
	caughtUp(tr, c.now, 0, "f1", "f2")
	tr.Disconnected("f2", c.at(time.Second))
	tr.CaughtUp("f1", c.now)
	if d := tr.NextDeadline(); !d.Equal(c.now.Add(time.Second + time.Nanosecond)) {
		t.Fatalf("next deadline in %v, want f2's lag to pass in 1s", d.Sub(c.now))
	}
	tr.CaughtUp("f1", c.at(1500*time.Millisecond))
	p := settle(tr, c.now)
	if p == nil || !slices.Equal(p.ISR, []string{"f1"}) || !strings.Contains(p.Removed["f2"], "no replication session for 2.5s") {
		t.Fatalf("proposal: %+v", p)
	}
	tr.Commit(p.ISR, 2)
	caughtUp(tr, c.at(time.Second), 0, "f2")
	p = settle(tr, c.now)
	if p == nil || !slices.Equal(p.ISR, []string{"f1", "f2"}) {
		t.Fatalf("rejoin proposal: %+v", p)
	}
}

func TestFailAll(t *testing.T) {
	c := newClock()
	tr := NewTracker(1, time.Second, []string{"f1"}, 1, 0, c.now)
	var a, b outcome
	tr.Wait(10, c.now.Add(time.Second), a.fn)
	tr.Wait(5, c.now.Add(time.Second), b.fn)
	stop := errors.New("stopping")
	for _, w := range tr.FailAll(stop) {
		w.done(w.err)
	}
	if !a.done || !b.done || a.err != stop || b.err != stop {
		t.Fatalf("%+v %+v", a, b)
	}
}

// An append with async durability can complete before an earlier one: the
// earlier end is released first, not held behind the later one.
func TestWaitersInLogOrder(t *testing.T) {
	c := newClock()
	tr := NewTracker(1, time.Second, []string{"f1"}, 1, 0, c.now)
	caughtUp(tr, c.now, 0, "f1")
	var a, b outcome
	tr.Wait(500, c.now.Add(time.Hour), a.fn)
	tr.Wait(400, c.now.Add(time.Hour), b.fn)
	tr.Acked("f1", 450)
	settle(tr, c.at(time.Millisecond))
	if !b.done || b.err != nil || a.done {
		t.Fatalf("after 450, with 500 added before 400: 400 %+v, 500 %+v", b, a)
	}
}

// A proposal the controller refuses (a follower it sees no session of) is
// withdrawn: the follower stops counting for acknowledgements at once,
// and is not proposed again before ProposalRetry. (A stopping broker that
// followed the new leader held every send of the group until the end of
// the stop.)
func TestRefusedExpansionIsWithdrawn(t *testing.T) {
	c := newClock()
	tr := NewTracker(1, 5*time.Second, []string{"f1"}, 1, 0, c.now)
	caughtUp(tr, c.now, 0, "f1", "f2")
	p := settle(tr, c.at(time.Millisecond))
	if p == nil || !slices.Equal(p.Added, []string{"f2"}) {
		t.Fatalf("proposal %+v", p)
	}
	var o outcome
	tr.Wait(100, c.now.Add(time.Hour), o.fn)
	tr.Acked("f1", 100)
	settle(tr, c.at(time.Millisecond))
	if o.done {
		t.Fatal("acknowledged without the proposed f2")
	}
	tr.Refuse(p, c.now)
	if q := settle(tr, c.at(time.Millisecond)); q != nil {
		t.Fatalf("proposed again at once: %v", q)
	}
	if !o.done || o.err != nil {
		t.Fatalf("not acknowledged once f2's joining was refused: %+v", o)
	}
	tr.Acked("f2", 100)
	tr.CaughtUp("f2", c.now)
	if q := settle(tr, c.at(ProposalRetry)); q == nil || !slices.Equal(q.Added, []string{"f2"}) {
		t.Fatalf("not proposed again after ProposalRetry: %+v", q)
	}
}
