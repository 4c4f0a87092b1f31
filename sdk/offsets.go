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

// QueueOffsets is one queue of a topic in one broker group: its readable
// offsets [Min, Max), the first offset stored at or after the time asked
// (AtOffset), and the consumer group's committed offset (NoOffset: none).
type QueueOffsets struct {
	Group     string // the broker group
	Queue     uint32
	Min, Max  uint64
	AtOffset  uint64
	Committed int64
}

// NoOffset is the committed offset of a queue a group never committed.
const NoOffset = wire.NoOffset

// Lag is the messages between the committed offset (or the start) and the end.
func (q QueueOffsets) Lag() uint64 {
	from := q.Min
	if q.Committed != NoOffset {
		from = max(uint64(q.Committed), q.Min)
	}
	return q.Max - min(from, q.Max)
}

// GroupOffsets is a consumer group's position in a topic: every queue in
// every broker group that hosts the topic, and the group's live members
// there.
type GroupOffsets struct {
	Queues  []QueueOffsets
	Members int
}

// perGroup calls fn on every broker group hosting topic, at once; it
// fails naming the groups that failed.
func (a *Admin) perGroup(ctx context.Context, topic string, fn func(group string) error) error {
	a.cl.router.start()
	if err := a.cl.router.refresh(ctx); err != nil {
		return err
	}
	groups := a.cl.router.table().hostsOf(topic)
	if len(groups) == 0 {
		return &wire.Error{Code: wire.CodeUnknownTopic, Message: fmt.Sprintf("topic %s does not exist", topic)}
	}
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := retrying(ctx, func() error { return fn(g) }); err != nil {
				errs[i] = fmt.Errorf("broker group %s: %w", g, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// offsetsCall makes one Offsets or Reset request to a broker group.
func (a *Admin) offsetsCall(ctx context.Context, group string, typ wire.Type, payload func([]byte) []byte) (wire.OffsetsResp, error) {
	call, err := a.cl.requestGroup(ctx, group, streamControl, typ, payload)
	if err != nil {
		return wire.OffsetsResp{}, err
	}
	defer call.release()
	var resp wire.OffsetsResp
	return resp, wire.DecodeOffsetsResp(call.resp, &resp)
}

// collect gathers the answers of every broker group into one sorted view.
type collect struct {
	mu  sync.Mutex
	out GroupOffsets
}

func (c *collect) add(group string, resp wire.OffsetsResp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out.Members += int(resp.Members)
	for _, q := range resp.Queues {
		c.out.Queues = append(c.out.Queues, QueueOffsets{Group: group, Queue: q.Queue, Min: q.Min, Max: q.Max, AtOffset: q.AtOffset, Committed: q.Committed})
	}
}

func (c *collect) sorted() GroupOffsets {
	sort.Slice(c.out.Queues, func(i, j int) bool {
		a, b := c.out.Queues[i], c.out.Queues[j]
		if a.Group != b.Group {
			return a.Group < b.Group
		}
		return a.Queue < b.Queue
	})
	return c.out
}

// Offsets returns topic's queues in every broker group that hosts it, with
// the first offset stored at or after at (zero time: the end) and, when
// group is not empty, that consumer group's committed offsets and live
// members.
func (a *Admin) Offsets(ctx context.Context, group, topic string, at time.Time) (GroupOffsets, error) {
	req := wire.Offsets{Group: group, Topic: topic}
	if !at.IsZero() {
		req.At = at.UnixNano()
	}
	var c collect
	err := a.perGroup(ctx, topic, func(g string) error {
		resp, err := a.offsetsCall(ctx, g, wire.TypeOffsets, req.Append)
		if err == nil {
			c.add(g, resp)
		}
		return err
	})
	return c.sorted(), err
}

// ResetTo says where Admin.ResetOffsets moves a group: one of Earliest,
// Latest, a Time, or an Offset (in every queue, within its bounds).
type ResetTo struct {
	Earliest, Latest bool
	Time             time.Time
	Offset           *uint64
	// Force resets a group with live members: the brokers take the topic's
	// queues back from them (their commits for those queues are refused)
	// and hand them out again, read from the new offsets; what a member
	// was handling when they were taken is delivered again.
	Force bool
}

// ResetOffsets sets consumer group's committed offsets in every queue of
// topic (Kafka's kafka-consumer-groups --reset-offsets). Without
// to.Force it is refused on a broker group where the group has live
// members (INVALID, saying so): they consume from the positions they hold
// and would commit over it. It returns the new committed offsets.
func (a *Admin) ResetOffsets(ctx context.Context, group, topic string, to ResetTo) (GroupOffsets, error) {
	if err := wire.ValidName("group", group); err != nil {
		return GroupOffsets{}, fmt.Errorf("quiver: %w", err)
	}
	req := wire.Reset{Group: group, Topic: topic, Force: to.Force}
	n := 0
	if to.Earliest {
		req.To, n = wire.ResetEarliest, n+1
	}
	if to.Latest {
		req.To, n = wire.ResetLatest, n+1
	}
	if !to.Time.IsZero() {
		req.To, req.At, n = wire.ResetTime, to.Time.UnixNano(), n+1
	}
	if to.Offset != nil {
		if *to.Offset > 1<<63-1 {
			return GroupOffsets{}, fmt.Errorf("quiver: offset %d out of range", *to.Offset)
		}
		req.To, req.At, n = wire.ResetOffset, int64(*to.Offset), n+1
	}
	if n != 1 {
		return GroupOffsets{}, errors.New("quiver: reset to exactly one of earliest, latest, a time or an offset")
	}
	var c collect
	err := a.perGroup(ctx, topic, func(g string) error {
		resp, err := a.offsetsCall(ctx, g, wire.TypeReset, req.Append)
		if err == nil {
			c.add(g, resp)
		}
		return err
	})
	return c.sorted(), err
}

// Lookup returns up to max messages of topic whose key is key, from every
// broker group that hosts it, newest first in each (the brokers' key
// indexes; a hash collision is never returned).
func (a *Admin) Lookup(ctx context.Context, topic string, key []byte, max int) ([]*Message, error) {
	if len(key) == 0 || max < 1 || max > 1<<16-1 {
		return nil, fmt.Errorf("quiver: lookup of key %q, max %d (1..65535)", key, max)
	}
	req := wire.Lookup{Topic: topic, Key: key, Max: uint16(max)}
	var mu sync.Mutex
	var out []*Message
	err := a.perGroup(ctx, topic, func(g string) error {
		call, err := a.cl.requestGroup(ctx, g, streamControl, wire.TypeLookup, req.Append)
		if err != nil {
			return err
		}
		var resp wire.LookupResp
		err = wire.DecodeLookupResp(call.resp, &resp)
		call.release()
		if err != nil {
			return err
		}
		var found []*Message
		for _, h := range resp.Hits {
			ms, err := a.fetchOne(ctx, g, topic, h.Queue, h.Offset)
			if err != nil {
				return err
			}
			found = append(found, ms...)
		}
		mu.Lock()
		out = append(out, found...)
		mu.Unlock()
		return nil
	})
	return out, err
}

// fetchOne reads the message at offset of a queue in a broker group.
func (a *Admin) fetchOne(ctx context.Context, group, topic string, queue uint32, offset uint64) ([]*Message, error) {
	req := wire.Fetch{Topic: topic, Queue: queue, Offset: offset, MaxMessages: 1, MaxBytes: 1}
	call, err := a.cl.requestGroup(ctx, group, streamFetch, wire.TypeFetch, req.Append)
	if err != nil {
		return nil, err
	}
	resp := append([]byte(nil), call.resp...)
	call.release()
	_, recs, err := wire.DecodeFetchResp(resp, nil)
	if err != nil {
		return nil, err
	}
	var out []*Message
	for i := range recs {
		if out, err = unpack(out, topic, queue, &recs[i], offset); err != nil {
			return nil, err
		}
	}
	for _, m := range out {
		m.Group = group
	}
	if len(out) > 1 {
		out = out[:1] // a batch record: the one message asked for
	}
	return out, nil
}
