package broker

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/quivermq/quiver/index"
	"github.com/quivermq/quiver/internal/fsutil"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk/wire"
)

// control derives the broker's tables (topics, committed offsets) from the
// control records in the log. One applier (catchUp) reads both control
// queues in order and applies what it has not applied yet.
type control struct {
	b    *Broker
	kc   chan struct{}
	mu   sync.RWMutex                        // guards what follows; catchUp holds it to apply
	next map[string]uint64                   // per control topic: next queue offset to apply
	offs map[string]map[wire.QueueRef]uint64 // group -> queue -> committed offset
	// deletedAt is the log position of each topic's latest deletion
	// applied: the two control topics are applied one after the other, so
	// a commit stored before a deletion may be applied after it, and must
	// not bring the deleted topic's offsets back.
	deletedAt map[string]int64
	// changed since the last snapshot
	dirty bool
}

func newControl(b *Broker) *control {
	return &control{b: b, kc: make(chan struct{}, 1), next: map[string]uint64{},
		offs: map[string]map[wire.QueueRef]uint64{}, deletedAt: map[string]int64{}}
}

// reset forgets what was applied (the log was cut): loadLocked applies
// the log again from the start.
func (c *control) reset() {
	c.mu.Lock()
	c.next, c.offs, c.deletedAt, c.dirty = map[string]uint64{}, map[string]map[wire.QueueRef]uint64{}, map[string]int64{}, true
	c.mu.Unlock()
}

func (c *control) kick() {
	select {
	case c.kc <- struct{}{}:
	default:
	}
}

// appendControl appends a control record and applies it. With
// min-insync it obeys the sends' rule: refused while the in-sync set is
// too small, and done only once the set has it durable, so that a topic
// or a committed offset never goes back after a failover.
func (c *control) appendControl(m *qlog.Message) error {
	l, werr := c.b.replicaCheck()
	if werr != nil {
		return werr
	}
	m.Ack, m.Flags, m.ClientTime = qlog.AckSync, qlog.FlagControl, time.Now().UnixNano()
	c.b.stMu.RLock()
	res, err := c.b.log.Append(m)
	c.b.stMu.RUnlock()
	if err == nil {
		err = c.b.replicated(l, res.Pos+int64(res.Size))
	}
	if err != nil {
		return err
	}
	return c.catchUp()
}

// appendTopic stores a topic definition; its body is queues u32.
func (c *control) appendTopic(name string, queues uint32) error {
	var body [4]byte
	binary.LittleEndian.PutUint32(body[:], queues)
	return c.appendControl(&qlog.Message{Topic: topicsTopic, Key: []byte(name), Body: body[:]})
}

// appendTopicDelete stores a topic's deletion: queues 0, tagged
// topicDeleteTag (the index drops the topic's queues on it).
func (c *control) appendTopicDelete(name string) error {
	return c.appendControl(&qlog.Message{Topic: topicsTopic, Key: []byte(name), Tags: []byte(topicDeleteTag), Body: make([]byte, 4)})
}

// topicDeleteTag marks a topic record that deletes the topic.
const topicDeleteTag = "delete"

// DeletedTopic recognises a topic deletion record for the index
// (index.Options.DeletedTopic).
func DeletedTopic(ri *qlog.RecordInfo) ([]byte, bool) {
	if ri.Flags&qlog.FlagControl == 0 || string(ri.Topic) != topicsTopic || string(ri.Tags) != topicDeleteTag {
		return nil, false
	}
	return ri.Key, true
}

// appendCommit stores a group's committed offsets (the Commit's encoding).
func (c *control) appendCommit(cm *wire.Commit) error {
	return c.appendControl(&qlog.Message{Topic: offsetsTopic, Key: []byte(cm.Group), Body: cm.Append(nil)})
}

// committed returns the group's committed offset of q, or wire.NoOffset.
func (c *control) committed(group string, q wire.QueueRef) int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if o, ok := c.offs[group][q]; ok {
		return int64(o)
	}
	return wire.NoOffset
}

// hasGroups reports whether some consumer group committed an offset.
func (c *control) hasGroups() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for g := range c.offs {
		if g != delayGroup { // the delayer's progress
			return true
		}
	}
	return false
}

// groupOffsets returns a copy of a group's committed offsets.
func (c *control) groupOffsets() map[string]map[wire.QueueRef]uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]map[wire.QueueRef]uint64, len(c.offs))
	for g, m := range c.offs {
		cp := make(map[wire.QueueRef]uint64, len(m))
		for k, v := range m {
			cp[k] = v
		}
		out[g] = cp
	}
	return out
}

// catchUp applies every control record not applied yet.
func (c *control) catchUp() error {
	c.b.stMu.RLock()
	defer c.b.stMu.RUnlock()
	return c.catchUpStore()
}

// catchUpStore is catchUp for a caller that holds stMu.
func (c *control) catchUpStore() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range []string{topicsTopic, offsetsTopic} {
		if err := c.catchUpLocked(t); err != nil {
			return err
		}
	}
	return nil
}

func (c *control) catchUpLocked(topic string) error {
	idx, l := c.b.st.Index, c.b.log
	bounds, ok := idx.Bounds(topic, 0)
	if !ok {
		return nil
	}
	next := c.next[topic]
	if next < bounds.Min {
		c.b.logger.Warn("control records were removed by retention before they were snapshotted; tables may miss them",
			"topic", topic, "from", next, "to", bounds.Min)
		next = bounds.Min
	}
	ents := make([]index.Entry, 0, 256)
	var buf []byte
	var r qlog.Record
	for next < bounds.Max {
		var err error
		ents, err = idx.Read(topic, 0, next, ents[:0])
		if err != nil {
			return fmt.Errorf("broker: reading %s: %w", topic, err)
		}
		for _, e := range ents {
			if buf, err = l.ReadRecord(e.Pos, e.Size, buf); err == nil {
				_, err = qlog.DecodeRecord(buf, &r)
			}
			if err != nil {
				return fmt.Errorf("broker: %s offset %d: %w", topic, next, err)
			}
			if err := c.applyLocked(topic, e.Pos, &r); err != nil {
				// A record this version cannot apply is skipped, loudly: the
				// tables are derived data and the log keeps it.
				c.b.logger.Error("control record not applied", "topic", topic, "offset", next, "err", err)
			}
			next++
			c.dirty = true
		}
	}
	c.next[topic] = next
	return nil
}

func (c *control) applyLocked(topic string, pos int64, r *qlog.Record) error {
	switch topic {
	case topicsTopic:
		if len(r.Body) != 4 || len(r.Key) == 0 {
			return errors.New("bad topic record")
		}
		if q := binary.LittleEndian.Uint32(r.Body); q > 0 {
			c.b.addTopic(string(r.Key), q)
		} else {
			c.removeTopicLocked(string(r.Key))
			c.deletedAt[string(r.Key)] = pos
		}
	case offsetsTopic:
		var cm wire.Commit
		if err := wire.DecodeCommit(r.Body, &cm); err != nil {
			return err
		}
		m := c.offs[cm.Group]
		if m == nil {
			m = map[wire.QueueRef]uint64{}
			c.offs[cm.Group] = m
		}
		for _, o := range cm.Offsets {
			if at, ok := c.deletedAt[o.Topic]; ok && pos < at {
				continue // committed before its topic's deletion
			}
			m[o.QueueRef] = o.Offset
		}
	}
	return nil
}

// removeTopicLocked applies a topic's deletion: out of the table, and
// the groups' committed offsets of it dropped (c.mu held).
func (c *control) removeTopicLocked(name string) {
	b := c.b
	b.topics.Lock()
	if _, ok := b.topics.m[name]; ok {
		delete(b.topics.m, name)
		b.groups.topicsChanged()
	}
	b.topics.Unlock()
	for g, m := range c.offs {
		for q := range m {
			if q.Topic == name {
				delete(m, q)
			}
		}
		if len(m) == 0 {
			delete(c.offs, g)
		}
	}
}

// addTopic puts a topic in the table (first definition wins).
func (b *Broker) addTopic(name string, queues uint32) {
	b.topics.Lock()
	defer b.topics.Unlock()
	if _, ok := b.topics.m[name]; !ok && queues > 0 {
		b.topics.m[name] = &topic{name: name, queues: queues}
		b.groups.topicsChanged()
	}
}

// The snapshot of the tables, so that start-up replays only what follows
// it and the tables outlive the retention of old segments.
type snapshotDoc struct {
	Version int                         `json:"version"`
	Next    map[string]uint64           `json:"next"`
	Topics  map[string]uint32           `json:"topics"`
	Offsets map[string][]snapshotOffset `json:"offsets"`
}

type snapshotOffset struct {
	Topic  string `json:"topic"`
	Queue  uint32 `json:"queue"`
	Offset uint64 `json:"offset"`
}

func (c *control) snapshotPath() string {
	return filepath.Join(c.b.opts.Dir, "state", "snapshot.json")
}

// loadLocked reads the snapshot (if any) and applies the records after
// it. The caller holds stMu (or is opening the broker).
func (c *control) loadLocked() error {
	data, err := fsutil.ReadFile(c.b.opts.Store.FS, c.snapshotPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("broker: %w", err)
	default:
		var doc snapshotDoc
		if err := json.Unmarshal(data, &doc); err != nil || doc.Version != 1 {
			// Derived data: rebuild it from the log instead.
			c.b.logger.Warn("ignoring an unreadable snapshot; replaying the control records", "path", c.snapshotPath(), "err", err)
			break
		}
		for t, n := range doc.Next {
			if b, _ := c.b.st.Index.Bounds(t, 0); n > b.Max {
				// The log ends before what the snapshot applied (a repair
				// truncated it): rebuild the tables from the log alone.
				c.b.logger.Warn("the snapshot is ahead of the log; replaying the control records", "topic", t, "snapshot", n, "log", b.Max)
				return c.catchUpStore()
			}
		}
		c.mu.Lock()
		for t, n := range doc.Next {
			c.next[t] = n
		}
		for g, list := range doc.Offsets {
			m := map[wire.QueueRef]uint64{}
			for _, o := range list {
				m[wire.QueueRef{Topic: o.Topic, Queue: o.Queue}] = o.Offset
			}
			c.offs[g] = m
		}
		c.mu.Unlock()
		for name, q := range doc.Topics {
			c.b.addTopic(name, q)
		}
	}
	return c.catchUpStore()
}

// snapshot writes the tables when they changed (temp file, fsync, rename,
// fsync of the directory).
func (c *control) snapshot() error {
	c.mu.Lock()
	if !c.dirty {
		c.mu.Unlock()
		return nil
	}
	doc := snapshotDoc{Version: 1, Next: map[string]uint64{}, Topics: map[string]uint32{}, Offsets: map[string][]snapshotOffset{}}
	for t, n := range c.next {
		doc.Next[t] = n
	}
	for g, m := range c.offs {
		list := make([]snapshotOffset, 0, len(m))
		for q, o := range m {
			list = append(list, snapshotOffset{q.Topic, q.Queue, o})
		}
		sort.Slice(list, func(i, j int) bool {
			if list[i].Topic != list[j].Topic {
				return list[i].Topic < list[j].Topic
			}
			return list[i].Queue < list[j].Queue
		})
		doc.Offsets[g] = list
	}
	c.b.topics.RLock()
	for n, t := range c.b.topics.m {
		doc.Topics[n] = t.queues
	}
	c.b.topics.RUnlock()
	c.dirty = false
	c.mu.Unlock()

	data, err := json.MarshalIndent(doc, "", "  ")
	if err == nil {
		err = writeFileSync(c.b.opts.Store.FS, c.snapshotPath(), data)
	}
	if err != nil {
		c.mu.Lock()
		c.dirty = true
		c.mu.Unlock()
		return fmt.Errorf("broker: snapshot: %w", err)
	}
	return nil
}

// snapshotLoop applies control records as they arrive (records copied
// from a leader arrive without a local append) and snapshots the tables.
func (c *control) snapshotLoop() {
	defer c.b.bg.Done()
	t := time.NewTicker(c.b.opts.SnapshotEvery)
	defer t.Stop()
	for {
		select {
		case <-c.kc:
			if err := c.catchUp(); err != nil {
				c.b.logger.Error("applying control records", "err", err)
			}
		case <-t.C:
			if err := c.snapshot(); err != nil {
				c.b.logger.Warn("snapshot failed", "err", err)
			}
		case <-c.b.stop:
			return
		}
	}
}

func writeFileSync(fs fsutil.FS, path string, data []byte) error {
	if err := fsutil.MkdirAll(fs, filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return fsutil.WriteAtomic(fs, path, data, 0o644)
}
