package controller

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quivermq/quiver/sdk/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const key = "peers:a,b,c"

// three brokers registered in one group, b1 elected in epoch 1 with all
// three in sync.
func threeBrokers(t *testing.T) *State {
	t.Helper()
	s := NewState()
	steps := []*Command{
		{Op: OpRegister, Broker: &Broker{ID: "b1", Addr: "a", Group: key}, Peers: []string{"c", "b", "a"}},
		{Op: OpRegister, Broker: &Broker{ID: "b2", Addr: "b", Group: key}},
		{Op: OpRegister, Broker: &Broker{ID: "b3", Addr: "c", Group: key}},
		{Op: OpElect, Group: key, Epoch: 0, Leader: "b1", ISR: []string{"b1"}, Reason: "first election"},
		{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 1, ISR: []string{"b1", "b2", "b3"}},
	}
	for i, c := range steps {
		if err := s.Apply(uint64(i+1), c); err != nil {
			t.Fatalf("step %d (%s): %v", i, c.Op, err)
		}
	}
	return s
}

// Commands as a script: each applies to the state left by the ones
// before, and either changes it as told or is refused with the error.
func TestStateApply(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cmd   *Command
		err   error
		check func(t *testing.T, g *Group)
	}{
		{"an election replaces the leader in the next epoch", &Command{Op: OpElect, Group: key, Epoch: 1, Leader: "b2", ISR: []string{"b2", "b3"}, Reason: "session expired", AtMs: 5},
			nil, func(t *testing.T, g *Group) {
				if g.Leader != "b2" || g.Epoch != 2 || !slices.Equal(g.ISR, []string{"b2", "b3"}) || g.ISRVersion != 3 {
					t.Fatalf("%+v", g)
				}
				if l := g.Left["b1"]; !strings.Contains(l.Reason, "was the leader: session expired") || l.AtMs != 5 {
					t.Fatalf("why b1 left: %+v", g.Left)
				}
				if e := g.Elections[len(g.Elections)-1]; e.From != "b1" || e.To != "b2" || e.Epoch != 2 {
					t.Fatalf("election record %+v", e)
				}
			}},
		{"an election in a stale epoch is refused", &Command{Op: OpElect, Group: key, Epoch: 0, Leader: "b2", ISR: []string{"b2"}}, ErrStaleEpoch, nil},
		{"a member outside the set is not elected cleanly", &Command{Op: OpElect, Group: key, Epoch: 1, Leader: "b4", ISR: []string{"b4"}}, ErrNotElectable, nil},
		{"the new set must hold the new leader", &Command{Op: OpElect, Group: key, Epoch: 1, Leader: "b2", ISR: []string{"b3"}}, ErrBadCommand, nil},
		{"the floor lifts the epoch past the members' histories", &Command{Op: OpElect, Group: key, Epoch: 1, Floor: 7, Leader: "b3", ISR: []string{"b3"}},
			nil, func(t *testing.T, g *Group) {
				if g.Epoch != 8 {
					t.Fatalf("epoch %d, want 8", g.Epoch)
				}
			}},
		{"the set shrinks with the leader's epoch and the set's version", &Command{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 2, ISR: []string{"b1", "b2"},
			Reasons: map[string]string{"b3": "behind the leader for 5s"}}, nil, func(t *testing.T, g *Group) {
			if !slices.Equal(g.ISR, []string{"b1", "b2"}) || g.ISRVersion != 3 || g.Left["b3"].Reason != "behind the leader for 5s" {
				t.Fatalf("%+v", g)
			}
		}},
		{"a change of an older version is refused", &Command{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 1, ISR: []string{"b1"}}, ErrStaleISR, nil},
		{"a change from an older leadership is refused", &Command{Op: OpISR, Group: key, Epoch: 0, ISRVersion: 2, ISR: []string{"b1"}}, ErrStaleEpoch, nil},
		{"the leader stays in the set", &Command{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 2, ISR: []string{"b2", "b3"}}, ErrBadCommand, nil},
		{"only members join the set", &Command{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 2, ISR: []string{"b1", "b9"}}, ErrBadCommand, nil},
		{"topics: the first definition wins", &Command{Op: OpTopics, Group: key, Topics: []wire.TopicInfo{{Name: "orders", Queues: 4}, {Name: "orders", Queues: 8}}},
			nil, func(t *testing.T, g *Group) {
				if g.Topics["orders"] != 4 {
					t.Fatalf("topics %v", g.Topics)
				}
			}},
		{"an unknown group", &Command{Op: OpTopics, Group: "nope"}, ErrUnknown, nil},
		{"an unknown op", &Command{Op: "drop-everything"}, ErrBadCommand, nil},
		{"a broker in the set cannot move to another group", &Command{Op: OpRegister, Broker: &Broker{ID: "b2", Addr: "b", Group: "other"}}, ErrBadCommand, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := threeBrokers(t)
			s.Apply(6, &Command{Op: OpRegister, Broker: &Broker{ID: "b4", Addr: "d", Group: key}})
			before := s.Clone()
			err := s.Apply(7, tc.cmd)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("error %v, want %v", err, tc.err)
				}
				before.Index = 7
				if !reflect.DeepEqual(before, s) {
					t.Fatal("a refused command changed the state")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Index != 7 {
				t.Fatalf("index %d", s.Index)
			}
			tc.check(t, s.Groups[key])
		})
	}
}

// The first election names a group that has no name; a snapshot holds
// the whole state and comes back the same.
func TestStateNameAndSnapshot(t *testing.T) {
	s := threeBrokers(t)
	if g := s.Groups[key]; g.Name != "b1" || !slices.Equal(g.Peers, []string{"a", "b", "c"}) {
		t.Fatalf("group %+v", g)
	}
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalState(b)
	if err != nil {
		t.Fatal(err)
	}
	if b2, _ := back.Marshal(); string(b2) != string(b) || back.Groups[key].Leader != "b1" {
		t.Fatalf("snapshot round trip:\n%s\n%s", b, b2)
	}
	// A snapshot whose leader is outside its set does not load.
	s.Groups[key].Leader = "b9"
	b, _ = s.Marshal()
	if _, err := UnmarshalState(b); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("inconsistent snapshot: %v", err)
	}
}

func report(epoch uint64, durable int64, heard time.Time) Report {
	return Report{Heartbeat: Heartbeat{LastEpoch: epoch, Durable: durable}, Heard: heard}
}

// The election policy, one situation per row: what the controller
// proposes given the state and the brokers' sessions.
func TestDecide(t *testing.T) {
	t0 := time.Unix(1000, 0)
	now := t0.Add(10 * time.Second)
	fresh, stale := now.Add(-100*time.Millisecond), now.Add(-3*time.Second)
	for _, tc := range []struct {
		name    string
		state   func(t *testing.T) *State
		reports map[string]Report
		since   time.Time
		want    *Command // nil: nothing
		waiting string   // a note that must appear
	}{
		{"the leader is live: nothing to do", threeBrokers,
			map[string]Report{"b1": report(1, 100, fresh), "b2": report(1, 100, fresh), "b3": report(1, 100, fresh)}, t0, nil, ""},
		{"the leader's session expired: the in-sync member with the longest log", threeBrokers,
			map[string]Report{"b1": report(1, 100, stale), "b2": report(1, 90, fresh), "b3": report(1, 100, fresh)}, t0,
			&Command{Op: OpElect, Group: key, Epoch: 1, Floor: 1, Leader: "b3", ISR: []string{"b2", "b3"}}, ""},
		{"among equals, not the deciding voter's own broker", threeBrokers,
			map[string]Report{"b1": report(1, 100, stale), "b2": report(1, 100, fresh), "b3": report(1, 100, fresh)}, t0,
			&Command{Op: OpElect, Group: key, Epoch: 1, Floor: 1, Leader: "b3", ISR: []string{"b2", "b3"}}, ""},
		{"the newest epoch wins over the longest log", threeBrokers,
			map[string]Report{"b1": report(1, 100, stale), "b2": report(2, 50, fresh), "b3": report(1, 100, fresh)}, t0,
			&Command{Op: OpElect, Group: key, Epoch: 1, Floor: 2, Leader: "b2", ISR: []string{"b2", "b3"}}, ""},
		{"never a member outside the set", func(t *testing.T) *State {
			s := threeBrokers(t)
			s.Apply(9, &Command{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 2, ISR: []string{"b1", "b2"}})
			return s
		}, map[string]Report{"b1": report(1, 100, stale), "b2": report(1, 10, stale), "b3": report(1, 100, fresh)}, t0, nil, "no live member of the in-sync set"},
		{"a new controller leader gives sessions it never saw time", threeBrokers,
			map[string]Report{"b2": report(1, 100, fresh), "b3": report(1, 100, fresh)}, now.Add(-time.Second), nil, ""},
		{"... and elects once that time is up", threeBrokers,
			map[string]Report{"b2": report(1, 100, fresh), "b3": report(1, 100, fresh)}, now.Add(-2100 * time.Millisecond),
			&Command{Op: OpElect, Group: key, Epoch: 1, Floor: 1, Leader: "b3", ISR: []string{"b2", "b3"}}, ""},
		{"a stopping leader is replaced", threeBrokers,
			map[string]Report{"b1": {Heartbeat: Heartbeat{LastEpoch: 1, Durable: 100, Stopping: true}, Heard: fresh}, "b2": report(1, 100, fresh), "b3": report(1, 99, fresh)}, t0,
			&Command{Op: OpElect, Group: key, Epoch: 1, Floor: 1, Leader: "b2", ISR: []string{"b2", "b3"}}, ""},
		{"a leader whose log failed is replaced at once, and not by a follower whose log failed", threeBrokers,
			map[string]Report{"b1": {Heartbeat: Heartbeat{LastEpoch: 1, Durable: 100, Failed: "fsync: EIO"}, Heard: fresh},
				"b2": {Heartbeat: Heartbeat{LastEpoch: 1, Durable: 100, Failed: "write: EIO"}, Heard: fresh}, "b3": report(1, 99, fresh)}, t0,
			&Command{Op: OpElect, Group: key, Epoch: 1, Floor: 1, Leader: "b3", ISR: []string{"b3"}}, ""},
		{"a follower whose log failed leaves the set", threeBrokers,
			map[string]Report{"b1": report(1, 100, fresh), "b2": report(1, 100, fresh), "b3": {Heartbeat: Heartbeat{LastEpoch: 1, Durable: 100, Failed: "fsync: EIO"}, Heard: fresh}}, t0,
			&Command{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 2, ISR: []string{"b1", "b2"}}, ""},
		{"a follower whose session expired leaves the set", threeBrokers,
			map[string]Report{"b1": report(1, 100, fresh), "b2": report(1, 100, fresh), "b3": report(1, 100, stale)}, t0,
			&Command{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 2, ISR: []string{"b1", "b2"}}, ""},
		{"the first election waits for every configured broker", func(t *testing.T) *State {
			s := NewState()
			s.Apply(1, &Command{Op: OpRegister, Broker: &Broker{ID: "b1", Addr: "a", Group: key}, Peers: []string{"a", "b", "c"}})
			s.Apply(2, &Command{Op: OpRegister, Broker: &Broker{ID: "b2", Addr: "b", Group: key}})
			return s
		}, map[string]Report{"b1": report(0, 0, fresh), "b2": report(0, 0, fresh)}, t0, nil, "2 of 3 brokers registered"},
		{"... and elects the longest log when all are there", func(t *testing.T) *State {
			s := NewState()
			s.Apply(1, &Command{Op: OpRegister, Broker: &Broker{ID: "b1", Addr: "a", Group: key}, Peers: []string{"a", "b", "c"}})
			s.Apply(2, &Command{Op: OpRegister, Broker: &Broker{ID: "b2", Addr: "b", Group: key}})
			s.Apply(3, &Command{Op: OpRegister, Broker: &Broker{ID: "b3", Addr: "c", Group: key}})
			return s
		}, map[string]Report{"b1": report(0, 10, fresh), "b2": report(0, 30, fresh), "b3": report(0, 20, fresh)}, t0,
			&Command{Op: OpElect, Group: key, Leader: "b2", ISR: []string{"b2"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.state(t)
			v := &view{now: now, session: 2 * time.Second, since: tc.since, reports: tc.reports, firstSeen: map[string]time.Time{key: now},
				initialWait: 10 * time.Second, self: "b2"}
			cmds, waiting := decide(s, v)
			if tc.want == nil {
				if len(cmds) != 0 {
					t.Fatalf("proposed %+v", cmds[0])
				}
			} else {
				if len(cmds) != 1 {
					t.Fatalf("%d commands, want 1: %+v", len(cmds), cmds)
				}
				got := cmds[0]
				if got.Op != tc.want.Op || got.Group != tc.want.Group || got.Epoch != tc.want.Epoch || got.Floor != tc.want.Floor ||
					got.Leader != tc.want.Leader || !slices.Equal(got.ISR, tc.want.ISR) || got.ISRVersion != tc.want.ISRVersion {
					t.Fatalf("proposed %+v\nwant     %+v", got, tc.want)
				}
				// What the policy proposes, the state machine takes.
				if err := s.Apply(100, got); err != nil {
					t.Fatalf("the proposal does not apply: %v", err)
				}
			}
			if tc.waiting != "" && !strings.Contains(waiting[key], tc.waiting) {
				t.Fatalf("waiting note %q, want it to say %q", waiting[key], tc.waiting)
			}
		})
	}
}

// quiver admin elect and a leader's handoff.
func TestElectFor(t *testing.T) {
	now := time.Unix(2000, 0)
	s := threeBrokers(t)
	g := s.Groups[key]
	v := &view{now: now, session: 2 * time.Second, since: now.Add(-time.Minute),
		reports: map[string]Report{"b1": report(1, 100, now), "b2": report(1, 100, now), "b3": report(1, 99, now)}}
	c, err := electFor(g, v, "", false, "handoff")
	if err != nil || c.Leader != "b2" || !slices.Equal(c.ISR, []string{"b2", "b3"}) || c.Unclean {
		t.Fatalf("handoff: %+v %v", c, err)
	}
	if _, err := electFor(g, v, "b1", false, "x"); !errors.Is(err, ErrNotElectable) {
		t.Fatalf("electing the leader itself: %v", err)
	}
	// b3 falls out of the set; a clean election cannot choose it, an
	// unclean one can, and its set is itself alone.
	s.Apply(10, &Command{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 2, ISR: []string{"b1", "b2"}})
	g = s.Groups[key]
	if _, err := electFor(g, v, "b3", false, "x"); !errors.Is(err, ErrNotElectable) {
		t.Fatalf("a clean election of a member outside the set: %v", err)
	}
	c, err = electFor(g, v, "b3", true, "operator")
	if err != nil || !c.Unclean || !slices.Equal(c.ISR, []string{"b3"}) {
		t.Fatalf("unclean: %+v %v", c, err)
	}
	if err := s.Apply(11, c); err != nil {
		t.Fatal(err)
	}
	if g := s.Groups[key]; g.Leader != "b3" || !g.Elections[len(g.Elections)-1].Unclean {
		t.Fatalf("after the unclean election: %+v", g)
	}
}

func FuzzDecodeMsg(f *testing.F) {
	hb := Heartbeat{Seq: 1, Broker: "b1", Addr: "a:1", Group: key, Durable: 5}
	for _, m := range []*Msg{{Kind: "heartbeat", Heartbeat: &hb}, {Kind: "request", ID: 3, Req: ReqElect, Group: "g"},
		{Kind: "state", Leader: true, State: NewState()}, {Kind: "result", ID: 2, Error: "x"}} {
		b, _ := AppendMsg(nil, m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMsg(b)
		if err != nil {
			if !errors.Is(err, ErrBadCommand) {
				t.Fatalf("error not ErrBadCommand: %v", err)
			}
			return
		}
		out, err := AppendMsg(nil, m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeMsg(out); err != nil {
			t.Fatalf("a decoded message does not decode again: %v", err)
		}
	})
}

func FuzzDecodeCommand(f *testing.F) {
	f.Add([]byte(`{"op":"elect","group":"g","leader":"b1","isr":["b1"]}`))
	f.Add([]byte(`{"op":"register","broker":{"id":"b","addr":"a","group":"g"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			return
		}
		s := NewState()
		s.Apply(1, c) // must not panic, whatever it says
	})
}

// Eligible members (ELR): a follower that leaves the set while it falls
// below min-insync stays electable, since no send is acknowledged without
// it until the set holds min-insync followers again; the old leader never
// is; an unclean election forgets them.
func TestEligibleMembers(t *testing.T) {
	s := NewState()
	for i, c := range []*Command{
		{Op: OpRegister, Broker: &Broker{ID: "b1", Addr: "a", Group: key, MinInsync: 1}, Peers: []string{"a", "b", "c"}},
		{Op: OpRegister, Broker: &Broker{ID: "b2", Addr: "b", Group: key, MinInsync: 1}},
		{Op: OpRegister, Broker: &Broker{ID: "b3", Addr: "c", Group: key, MinInsync: 1}},
		{Op: OpElect, Group: key, Epoch: 0, Leader: "b1", ISR: []string{"b1"}},
		{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 1, ISR: []string{"b1", "b2", "b3"}},
		{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 2, ISR: []string{"b1", "b2"}}, // b3 leaves: b2 still makes min-insync
		{Op: OpISR, Group: key, Epoch: 1, ISRVersion: 3, ISR: []string{"b1"}},       // b2 leaves: below min-insync
	} {
		if err := s.Apply(uint64(i+1), c); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	g := s.Groups[key]
	if !slices.Equal(g.ELR, []string{"b2"}) {
		t.Fatalf("eligible %v, want [b2] (b3 left while b2 still made min-insync)", g.ELR)
	}
	// The leader dies: the eligible b2, back, is elected; b3 is not.
	now := time.Unix(3000, 0)
	v := &view{now: now, session: 2 * time.Second, since: now.Add(-time.Minute), reports: map[string]Report{
		"b1": report(1, 100, now.Add(-3*time.Second)), "b2": report(1, 100, now), "b3": report(1, 100, now)}}
	cmds, _ := decide(s, v)
	if len(cmds) != 1 || cmds[0].Leader != "b2" || !slices.Equal(cmds[0].ISR, []string{"b2"}) {
		t.Fatalf("proposed %+v", cmds)
	}
	if err := s.Apply(10, cmds[0]); err != nil {
		t.Fatal(err)
	}
	if g := s.Groups[key]; g.Leader != "b2" || slices.Contains(g.ELR, "b1") {
		t.Fatalf("after electing the eligible b2: %+v (the old leader is never eligible)", g)
	}
	// The set grows back to min-insync: nobody outside it is eligible.
	s.Apply(11, &Command{Op: OpISR, Group: key, Epoch: 2, ISRVersion: 5, ISR: []string{"b2", "b3"}})
	if g := s.Groups[key]; len(g.ELR) != 0 {
		t.Fatalf("eligible %v after the set holds min-insync followers again", g.ELR)
	}
	// An unclean election forgets the eligible.
	s.Apply(12, &Command{Op: OpISR, Group: key, Epoch: 2, ISRVersion: 6, ISR: []string{"b2"}})
	if g := s.Groups[key]; !slices.Equal(g.ELR, []string{"b3"}) {
		t.Fatalf("eligible %v, want [b3]", g.ELR)
	}
	if err := s.Apply(13, &Command{Op: OpElect, Group: key, Epoch: 2, Leader: "b1", ISR: []string{"b1"}, Unclean: true}); err != nil {
		t.Fatal(err)
	}
	if g := s.Groups[key]; len(g.ELR) != 0 {
		t.Fatalf("eligible %v after an unclean election", g.ELR)
	}
}
