package broker

import (
	"fmt"

	"github.com/quivermq/quiver/sdk/wire"
)

// Offsets answers wire.Offsets for the topic's queues on this broker.
func (b *Broker) Offsets(req *wire.Offsets) (wire.OffsetsResp, *wire.Error) {
	t := b.topic(req.Topic)
	if t == nil {
		return wire.OffsetsResp{}, &wire.Error{Code: wire.CodeUnknownTopic, Message: fmt.Sprintf("topic %s does not exist", req.Topic)}
	}
	resp := wire.OffsetsResp{Queues: make([]wire.QueueOffsets, 0, t.queues)}
	if req.Group != "" {
		resp.Members = uint32(b.groups.liveMembers(req.Group))
	}
	b.stMu.RLock()
	defer b.stMu.RUnlock()
	for q := uint32(0); q < t.queues; q++ {
		qo, werr := b.queueOffsets(t.name, q, req.At)
		if werr != nil {
			return wire.OffsetsResp{}, werr
		}
		qo.Committed = wire.NoOffset
		if req.Group != "" {
			qo.Committed = b.ctl.committed(req.Group, wire.QueueRef{Topic: t.name, Queue: q})
		}
		resp.Queues = append(resp.Queues, qo)
	}
	return resp, nil
}

// queueOffsets is one queue's bounds and its first offset stored at or
// after at (unix ns). (stMu held)
func (b *Broker) queueOffsets(topic string, q uint32, at int64) (wire.QueueOffsets, *wire.Error) {
	qo := wire.QueueOffsets{Queue: q}
	bounds, ok := b.st.Index.Bounds(topic, q)
	if !ok {
		return qo, nil // never written: empty at 0
	}
	qo.Min, qo.Max, qo.AtOffset = bounds.Min, bounds.Max, bounds.Max
	if at > 0 {
		off, err := b.st.Index.LookupTime(topic, q, at)
		if err != nil {
			return qo, &wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("%s/%d: time lookup: %v", topic, q, err)}
		}
		qo.AtOffset = min(max(off, qo.Min), qo.Max)
	}
	return qo, nil
}

// Reset sets a group's committed offsets in the topic's queues on this
// broker (a control record, like a commit, replicated and durable before
// the answer). Refused while the group has live members here: they
// consume from the positions they hold in memory and would commit over
// it; stop them first (their sessions end at their Close, or after the
// session timeout). With Force the broker takes the topic's queues back
// from their members first (revoke) and hands them out again from the new
// offsets.
func (b *Broker) Reset(req *wire.Reset) (wire.OffsetsResp, *wire.Error) {
	if b.closed.Load() {
		return wire.OffsetsResp{}, &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"}
	}
	if werr := b.writable(); werr != nil {
		return wire.OffsetsResp{}, werr
	}
	b.groups.resetMu.Lock()
	defer b.groups.resetMu.Unlock()
	if req.Force {
		if n := b.groups.revoke(req.Group, req.Topic); n > 0 {
			b.logger.Warn("forced reset: queues taken back from the group's live members", "group", req.Group, "topic", req.Topic, "queues", n)
		}
	} else if n := b.groups.liveMembers(req.Group); n > 0 {
		return wire.OffsetsResp{}, &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf(
			"group %s has %d live member(s) on this broker group: stop its consumers before resetting its offsets (or force it)", req.Group, n)}
	}
	at := int64(0)
	if req.To == wire.ResetTime {
		at = req.At
	}
	resp, werr := b.Offsets(&wire.Offsets{Group: req.Group, Topic: req.Topic, At: at})
	if werr != nil {
		return resp, werr
	}
	cm := wire.Commit{Group: req.Group, Member: "quiver-reset"}
	for i := range resp.Queues {
		q := &resp.Queues[i]
		var to uint64
		switch req.To {
		case wire.ResetEarliest:
			to = q.Min
		case wire.ResetLatest:
			to = q.Max
		case wire.ResetTime:
			to = q.AtOffset
		case wire.ResetOffset:
			to = min(max(uint64(req.At), q.Min), q.Max)
		}
		q.Committed = int64(to)
		cm.Offsets = append(cm.Offsets, wire.OffsetCommit{QueueRef: wire.QueueRef{Topic: req.Topic, Queue: q.Queue}, Offset: to})
	}
	if err := b.ctl.appendCommit(&cm); err != nil {
		return wire.OffsetsResp{}, b.storageErr(err)
	}
	b.logger.Info("consumer group offsets reset", "group", req.Group, "topic", req.Topic, "to", req.To, "at", req.At)
	return resp, nil
}

// Lookup finds the topic's messages with the key (the key index; hits are
// verified against the records, newest first).
func (b *Broker) Lookup(req *wire.Lookup) (wire.LookupResp, *wire.Error) {
	if b.topic(req.Topic) == nil {
		return wire.LookupResp{}, &wire.Error{Code: wire.CodeUnknownTopic, Message: fmt.Sprintf("topic %s does not exist", req.Topic)}
	}
	b.stMu.RLock()
	hits, err := b.st.Index.LookupKey(req.Topic, req.Key, int(req.Max))
	b.stMu.RUnlock()
	if err != nil {
		return wire.LookupResp{}, &wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("key lookup in %s: %v", req.Topic, err)}
	}
	resp := wire.LookupResp{Hits: make([]wire.KeyHit, 0, len(hits))}
	for _, h := range hits {
		resp.Hits = append(resp.Hits, wire.KeyHit{Queue: h.Queue, Offset: h.QueueOffset})
	}
	return resp, nil
}

// revoke takes the topic's queues back from the group's members (a forced
// reset) and returns how many it took.
func (c *coordinator) revoke(name, topic string) int {
	n := 0
	c.withGroup(name, func(g *group) {
		for q, o := range g.owner {
			if q.Topic == topic && o != "" {
				g.revoked[q] = o
				n++
			}
		}
	})
	return n
}

// liveMembers counts the group's members whose session has not run out.
func (c *coordinator) liveMembers(name string) int {
	now := c.b.opts.Now()
	n := 0
	c.withGroup(name, func(g *group) {
		for _, m := range g.members {
			if now.Sub(m.lastSeen) <= m.session {
				n++
			}
		}
	})
	return n
}

// withGroup calls fn with the group, if there is one, under c.mu.
func (c *coordinator) withGroup(name string, fn func(g *group)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g := c.groups[name]; g != nil {
		fn(g)
	}
}
