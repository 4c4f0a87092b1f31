package console

import "sort"

// lagHistory keeps the last keep samples of every consumer group's lag per
// queue, for at most maxSeries queues at once. A queue gets an id when it
// first appears; an id absent from every kept sample is freed for reuse.
type lagHistory struct {
	keep, maxSeries int
	times           ring[int64]
	snaps           ring[[]int64] // lag by id; -1 (or past the end): absent
	ids             map[lagKey]int
	keys            []lagKey
	lastSeen        []int // the sample seq an id was last present in
	free            []int
	seq             int
	overflow        bool // a queue found no id (maxSeries in use)
}

type lagKey struct {
	group, topic string
	queue        uint32
}

func (h *lagHistory) init(keep, maxSeries int) {
	h.keep, h.maxSeries = keep, maxSeries
	h.times, h.snaps = newRing[int64](keep), newRing[[]int64](keep)
	h.ids = map[lagKey]int{}
}

func (h *lagHistory) add(t int64, lags []QueueLag) {
	h.seq++
	h.overflow = false
	// Reuse the slice of the sample that falls out of the ring.
	var snap []int64
	if h.snaps.count == len(h.snaps.buf) {
		snap = h.snaps.buf[h.snaps.next][:0]
	}
	for _, l := range lags {
		k := lagKey{l.Group, l.Topic, l.Queue}
		id, ok := h.ids[k]
		if !ok {
			switch {
			case len(h.free) > 0:
				id = h.free[len(h.free)-1]
				h.free = h.free[:len(h.free)-1]
				h.keys[id] = k
			case len(h.keys) < h.maxSeries:
				id = len(h.keys)
				h.keys = append(h.keys, k)
				h.lastSeen = append(h.lastSeen, 0)
			default:
				h.overflow = true
				continue
			}
			h.ids[k] = id
		}
		for len(snap) <= id {
			snap = append(snap, -1)
		}
		snap[id] = int64(min(l.Lag, 1<<62))
		h.lastSeen[id] = h.seq
	}
	h.times.push(t)
	h.snaps.push(snap)
	// Free the ids no kept sample has.
	for id, seen := range h.lastSeen {
		if seen != 0 && seen <= h.seq-h.keep {
			delete(h.ids, h.keys[id])
			h.keys[id] = lagKey{}
			h.lastSeen[id] = 0
			h.free = append(h.free, id)
		}
	}
}

// LagSeries is one queue's lag over the kept samples (-1: not sampled).
type LagSeries struct {
	Group string  `json:"group,omitempty"`
	Topic string  `json:"topic,omitempty"`
	Queue *uint32 `json:"queue,omitempty"`
	Lag   []int64 `json:"lag"`
}

// LagHistory answers /ui/api/lag.
type LagHistory struct {
	T        []int64     `json:"t"`
	Series   []LagSeries `json:"series"`
	Overflow bool        `json:"overflow"` // some queues have no history (too many)
}

// group returns group's per-queue lags, or with group "" every group's
// total.
func (h *lagHistory) group(group string) LagHistory {
	out := LagHistory{T: []int64{}, Series: []LagSeries{}, Overflow: h.overflow}
	h.times.each(func(t *int64) { out.T = append(out.T, *t) })
	var snaps [][]int64
	h.snaps.each(func(s *[]int64) { snaps = append(snaps, *s) })
	at := func(s []int64, id int) int64 {
		if id < len(s) {
			return s[id]
		}
		return -1
	}
	if group != "" {
		for id, k := range h.keys {
			if h.lastSeen[id] == 0 || k.group != group {
				continue
			}
			q := k.queue
			ls := LagSeries{Topic: k.topic, Queue: &q, Lag: make([]int64, len(snaps))}
			for i, s := range snaps {
				ls.Lag[i] = at(s, id)
			}
			out.Series = append(out.Series, ls)
		}
		sort.Slice(out.Series, func(i, j int) bool {
			a, b := out.Series[i], out.Series[j]
			return a.Topic < b.Topic || a.Topic == b.Topic && *a.Queue < *b.Queue
		})
		return out
	}
	totals := map[string][]int64{}
	for id, k := range h.keys {
		if h.lastSeen[id] == 0 {
			continue
		}
		t := totals[k.group]
		if t == nil {
			t = make([]int64, len(snaps))
			for i := range t {
				t[i] = -1
			}
			totals[k.group] = t
		}
		for i, s := range snaps {
			if v := at(s, id); v >= 0 {
				t[i] = max(t[i], 0) + v
			}
		}
	}
	for g, t := range totals {
		out.Series = append(out.Series, LagSeries{Group: g, Lag: t})
	}
	sort.Slice(out.Series, func(i, j int) bool { return out.Series[i].Group < out.Series[j].Group })
	return out
}
