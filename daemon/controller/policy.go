package controller

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"
)

// Report is what a broker last told the controller of itself, and when.
type Report struct {
	Heartbeat
	Heard time.Time
}

// view is what the policy knows beyond the State: the brokers' sessions,
// as the controller leader holds them.
type view struct {
	now     time.Time
	session time.Duration     // a broker unheard of for longer is not live
	since   time.Time         // this controller's leadership began (a grace for sessions it never saw)
	reports map[string]Report // by broker id
	// firstSeen: when this controller first saw each group without a
	// leader (its first election waits for every configured broker, or
	// initialWait and a majority).
	firstSeen   map[string]time.Time
	initialWait time.Duration
	// self is the broker of the voter that decides: among equal
	// candidates another is elected, so that one crash does not take both
	// a group's leader and the controller's.
	self string
}

// lastHeard is when the broker was last heard of: its last heartbeat, or
// the start of this controller's leadership for a broker it has not heard
// yet (a new controller leader gives every broker a session's time).
func (v *view) lastHeard(id string) time.Time {
	h := v.since
	if r, ok := v.reports[id]; ok && r.Heard.After(h) {
		h = r.Heard
	}
	return h
}

// alive reports whether the broker's session is live and it is not
// stopping, nor fenced by a failed log.
func (v *view) alive(id string) bool {
	if r, ok := v.reports[id]; ok && (r.Stopping || r.Failed != "") && v.now.Sub(r.Heard) <= v.session {
		return false
	}
	return v.now.Sub(v.lastHeard(id)) <= v.session
}

// reported reports whether the broker has a live session with a report
// (the grace counts it live; electing it needs its log's end).
func (v *view) reported(id string) bool {
	r, ok := v.reports[id]
	return ok && v.alive(id) && !r.Heard.Before(v.since)
}

// best orders candidates: the newest epoch in its log, then the longest
// durable log, then not the deciding voter's broker, then the id (for
// determinism).
func (v *view) best(ids []string) string {
	c := slices.Clone(ids)
	sort.Slice(c, func(i, j int) bool {
		a, b := v.reports[c[i]], v.reports[c[j]]
		if a.LastEpoch != b.LastEpoch {
			return a.LastEpoch > b.LastEpoch
		}
		if a.Durable != b.Durable {
			return a.Durable > b.Durable
		}
		if (c[i] == v.self) != (c[j] == v.self) {
			return c[j] == v.self
		}
		return c[i] < c[j]
	})
	if len(c) == 0 {
		return ""
	}
	return c[0]
}

// floor is the newest epoch any live member's log knows: a new epoch
// must be newer (a group that ran before the controller has a history).
func (v *view) floor(g *Group) uint64 {
	var f uint64
	for _, id := range g.Members {
		if v.reported(id) {
			f = max(f, v.reports[id].LastEpoch)
		}
	}
	return f
}

// decide returns the commands the controller should propose now for
// every group, and a note per group that waits for something an operator
// should know (a group with no live in-sync member). Groups are visited
// in key order.
func decide(s *State, v *view) (cmds []*Command, waiting map[string]string) {
	waiting = map[string]string{}
	at := v.now.UnixMilli()
	for _, key := range slices.Sorted(maps.Keys(s.Groups)) {
		g := s.Groups[key]
		switch {
		case g.Leader == "":
			var live []string
			for _, id := range g.Members {
				if v.reported(id) {
					live = append(live, id)
				}
			}
			first, ok := v.firstSeen[key]
			if !ok {
				first = v.now
			}
			all := len(live) > 0 && len(live) >= len(g.Peers)
			quorum := len(live) > len(g.Peers)/2 && v.now.Sub(first) >= v.initialWait
			if !all && !quorum {
				waiting[key] = fmt.Sprintf("first election: %d of %d brokers registered", len(live), max(len(g.Peers), len(g.Members)))
				continue
			}
			l := v.best(live)
			why := "first election"
			if !all {
				why = fmt.Sprintf("first election, with %d of %d brokers after %v", len(live), len(g.Peers), v.initialWait)
			}
			cmds = append(cmds, &Command{Op: OpElect, AtMs: at, Group: key, Epoch: g.Epoch, Floor: v.floor(g), Leader: l,
				ISR: []string{l}, Reason: why})
		case !v.alive(g.Leader):
			var cands, isr []string
			for _, id := range g.ISR {
				if id != g.Leader && v.reported(id) {
					cands = append(cands, id)
					isr = append(isr, id)
				}
			}
			for _, id := range g.ELR {
				if v.reported(id) {
					cands = append(cands, id) // eligible: it has every acknowledged send
				}
			}
			gone := v.now.Sub(v.lastHeard(g.Leader))
			why := fmt.Sprintf("the leader %s's session expired (no heartbeat for %v)", g.Leader, gone.Round(time.Millisecond))
			if r, ok := v.reports[g.Leader]; ok && r.Failed != "" {
				why = fmt.Sprintf("the leader %s's log failed (%s)", g.Leader, r.Failed)
			} else if ok && r.Stopping {
				why = fmt.Sprintf("the leader %s is stopping", g.Leader)
			}
			if len(cands) == 0 {
				elig := ""
				if len(g.ELR) > 0 {
					elig = " (nor of the eligible " + fmt.Sprint(g.ELR) + ")"
				}
				waiting[key] = why + "; no live member of the in-sync set " + fmt.Sprint(g.ISR) + elig +
					" to elect: the group waits for one to come back (quiver admin elect --unclean elects outside it, losing what only the set had)"
				continue
			}
			l := v.best(cands)
			if !slices.Contains(isr, l) {
				isr = append(isr, l)
			}
			cmds = append(cmds, &Command{Op: OpElect, AtMs: at, Group: key, Epoch: g.Epoch, Floor: v.floor(g), Leader: l,
				ISR: isr, Reason: why, TookMs: gone.Milliseconds()})
		default:
			var keep []string
			reasons := map[string]string{}
			for _, id := range g.ISR {
				if id == g.Leader || v.alive(id) {
					keep = append(keep, id)
					continue
				}
				if r, ok := v.reports[id]; ok && r.Failed != "" {
					reasons[id] = "its log failed: " + r.Failed
				} else if ok && r.Stopping {
					reasons[id] = "stopping"
				} else {
					reasons[id] = fmt.Sprintf("controller session expired (no heartbeat for %v)", v.now.Sub(v.lastHeard(id)).Round(time.Millisecond))
				}
			}
			if len(reasons) > 0 {
				cmds = append(cmds, &Command{Op: OpISR, AtMs: at, Group: key, Epoch: g.Epoch, ISRVersion: g.ISRVersion, ISR: keep, Reasons: reasons})
			}
		}
	}
	return cmds, waiting
}

// nextDecision is when decide may have something new to say without a
// new heartbeat: the earliest moment a live session expires or a first
// election's wait ends.
func nextDecision(s *State, v *view) time.Time {
	var next time.Time
	earlier := func(t time.Time) {
		if t.After(v.now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for key, g := range s.Groups {
		for _, id := range g.Members {
			if v.alive(id) {
				earlier(v.lastHeard(id).Add(v.session + time.Millisecond))
			}
		}
		if g.Leader == "" {
			if f, ok := v.firstSeen[key]; ok {
				earlier(f.Add(v.initialWait))
			}
		}
	}
	return next
}

// electFor answers an elect request (quiver admin elect, or a leader's
// handoff): the command for group g, electing target (or the best live
// candidate). Without unclean the candidates are the live members of the
// in-sync set but the leader; with it, any live member.
func electFor(g *Group, v *view, target string, unclean bool, reason string) (*Command, error) {
	var cands, isr []string
	for _, id := range g.ISR {
		if v.reported(id) && id != g.Leader {
			isr = append(isr, id)
		}
	}
	eligible := slices.Clone(isr)
	for _, id := range g.ELR {
		if v.reported(id) && id != g.Leader {
			eligible = append(eligible, id)
		}
	}
	if unclean {
		for _, id := range g.Members {
			if v.reported(id) && id != g.Leader {
				cands = append(cands, id)
			}
		}
	} else {
		cands = eligible
	}
	if target != "" {
		if !slices.Contains(cands, target) {
			what := "a live member of the in-sync set " + fmt.Sprint(g.ISR) + " or eligible " + fmt.Sprint(g.ELR)
			if unclean {
				what = "a live member of the group " + fmt.Sprint(g.Members)
			}
			return nil, fmt.Errorf("%w: %s is not %s (or it is the leader)", ErrNotElectable, target, what)
		}
	} else if target = v.best(cands); target == "" {
		return nil, fmt.Errorf("%w: group %s has no live candidate besides its leader %s (in-sync set %v, members %v)",
			ErrNotElectable, g.displayName(), g.Leader, g.ISR, g.Members)
	}
	if unclean && !slices.Contains(isr, target) {
		isr = []string{target} // only the new leader's log is the truth now
	} else if !slices.Contains(isr, target) {
		isr = append(isr, target)
	}
	return &Command{Op: OpElect, AtMs: v.now.UnixMilli(), Group: g.Key, Epoch: g.Epoch, Floor: v.floor(g), Leader: target,
		ISR: isr, Reason: reason, Unclean: unclean && !slices.Contains(g.ISR, target) && !slices.Contains(g.ELR, target)}, nil
}
