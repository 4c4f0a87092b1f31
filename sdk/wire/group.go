package wire

import "encoding/binary"

// Consumer groups.
//
// A member joins, heartbeats and leaves with GroupSync; the broker answers
// every GroupSync with the member's Assignment. Queues move between members
// cooperatively: a queue is assigned to its new member only after its old
// member has stopped reporting it in Owned (having committed its offset),
// or has left or expired. So two members never consume one queue at once,
// and a rebalance causes no duplicates beyond what was in flight.

// QueueRef names one queue of a topic.
type QueueRef struct {
	Topic string `json:"topic"`
	Queue uint32 `json:"queue"`
}

// GroupSync flags.
const (
	GroupLeave uint8 = 1 << 0 // the member leaves: its queues are released now
)

// GroupSync is a member's join, heartbeat or leave.
type GroupSync struct {
	Group     string
	Member    string
	Flags     uint8
	SessionMs uint32     // the member is expired after this long without a GroupSync
	Topics    []string   // topics the member subscribes to
	Owned     []QueueRef // queues the member consumes now
}

func (m *GroupSync) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.Group)
	dst = appendShortString(dst, m.Member)
	dst = append(dst, m.Flags)
	dst = binary.LittleEndian.AppendUint32(dst, m.SessionMs)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Topics)))
	for _, t := range m.Topics {
		dst = appendShortString(dst, t)
	}
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Owned)))
	for _, q := range m.Owned {
		dst = appendShortString(dst, q.Topic)
		dst = binary.LittleEndian.AppendUint32(dst, q.Queue)
	}
	return dst
}

func DecodeGroupSync(b []byte, m *GroupSync) error {
	d := decoder{b: b}
	m.Group = d.name("group", MaxGroupLen)
	m.Member = d.name("member", MaxMemberLen)
	m.Flags = d.u8("flags")
	m.SessionMs = d.u32("session")
	n := d.count("topics", MaxListLen, 3)
	m.Topics = make([]string, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		m.Topics = append(m.Topics, d.name("topic", MaxTopicLen))
	}
	n = d.count("owned", MaxListLen, 7)
	m.Owned = make([]QueueRef, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		m.Owned = append(m.Owned, QueueRef{Topic: d.name("topic", MaxTopicLen), Queue: d.u32("queue")})
	}
	if err := d.end(); err != nil {
		return err
	}
	if m.Flags&^GroupLeave != 0 {
		return errorf("group flags %#x", m.Flags)
	}
	return nil
}

// NoOffset is the committed offset of a queue the group never committed.
const NoOffset = -1

// Assigned is one queue of an Assignment with the group's committed offset.
type Assigned struct {
	QueueRef
	Committed int64 // NoOffset when the group has none
}

// Assignment answers a GroupSync: the queues the member may consume now.
// Pending is set while queues of the member's topics wait to move between
// members; the member should sync again soon.
type Assignment struct {
	Generation uint64
	Pending    bool
	Queues     []Assigned
}

func (m *Assignment) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, m.Generation)
	var p uint8
	if m.Pending {
		p = 1
	}
	dst = append(dst, p)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Queues)))
	for _, q := range m.Queues {
		dst = appendShortString(dst, q.Topic)
		dst = binary.LittleEndian.AppendUint32(dst, q.Queue)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(q.Committed))
	}
	return dst
}

func DecodeAssignment(b []byte, m *Assignment) error {
	d := decoder{b: b}
	m.Generation = d.u64("generation")
	p := d.u8("pending")
	n := d.count("queues", MaxListLen, 15)
	m.Queues = make([]Assigned, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		q := Assigned{QueueRef: QueueRef{Topic: d.name("topic", MaxTopicLen), Queue: d.u32("queue")},
			Committed: int64(d.u64("committed"))}
		if d.err == nil && q.Committed < NoOffset {
			d.fail("committed offset %d", q.Committed)
		}
		m.Queues = append(m.Queues, q)
	}
	if err := d.end(); err != nil {
		return err
	}
	if p > 1 {
		return errorf("pending %d", p)
	}
	m.Pending = p == 1
	return nil
}

// OffsetCommit is one queue's committed offset: the next offset the group
// will consume.
type OffsetCommit struct {
	QueueRef
	Offset uint64
}

// Commit commits offsets for queues the member owns.
type Commit struct {
	Group   string
	Member  string
	Offsets []OffsetCommit
}

func (m *Commit) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.Group)
	dst = appendShortString(dst, m.Member)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Offsets)))
	for _, o := range m.Offsets {
		dst = appendShortString(dst, o.Topic)
		dst = binary.LittleEndian.AppendUint32(dst, o.Queue)
		dst = binary.LittleEndian.AppendUint64(dst, o.Offset)
	}
	return dst
}

func DecodeCommit(b []byte, m *Commit) error {
	d := decoder{b: b}
	m.Group = d.name("group", MaxGroupLen)
	m.Member = d.name("member", MaxMemberLen)
	n := d.count("offsets", MaxListLen, 15)
	m.Offsets = make([]OffsetCommit, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		m.Offsets = append(m.Offsets, OffsetCommit{QueueRef: QueueRef{Topic: d.name("topic", MaxTopicLen), Queue: d.u32("queue")},
			Offset: d.u64("offset")})
	}
	return d.end()
}
