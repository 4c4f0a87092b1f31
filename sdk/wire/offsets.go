package wire

import "encoding/binary"

// Offsets asks a broker about a topic's queues it holds: their bounds, the
// first offset stored at or after At, and Group's committed offsets and
// live members. The SDK asks every broker group that hosts the topic.
type Offsets struct {
	Group string // "" for none
	Topic string
	At    int64 // unix nanoseconds; AtOffset is for it
}

// QueueOffsets is one queue's answer.
type QueueOffsets struct {
	Queue     uint32
	Min, Max  uint64 // readable offsets are [Min, Max)
	AtOffset  uint64 // the first offset stored at or after Offsets.At (Max if none)
	Committed int64  // the group's, NoOffset if none
}

// OffsetsResp answers Offsets and Reset. Members counts the group's live
// members on the broker.
type OffsetsResp struct {
	Members uint32
	Queues  []QueueOffsets
}

func (m *Offsets) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.Group)
	dst = appendShortString(dst, m.Topic)
	return binary.LittleEndian.AppendUint64(dst, uint64(m.At))
}

func DecodeOffsets(b []byte, m *Offsets) error {
	d := decoder{b: b}
	m.Group = string(d.short("group", MaxGroupLen))
	m.Topic = d.name("topic", MaxTopicLen)
	m.At = int64(d.u64("at"))
	return d.end()
}

func (m *OffsetsResp) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, m.Members)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(m.Queues)))
	for _, q := range m.Queues {
		dst = binary.LittleEndian.AppendUint32(dst, q.Queue)
		dst = binary.LittleEndian.AppendUint64(dst, q.Min)
		dst = binary.LittleEndian.AppendUint64(dst, q.Max)
		dst = binary.LittleEndian.AppendUint64(dst, q.AtOffset)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(q.Committed))
	}
	return dst
}

func DecodeOffsetsResp(b []byte, m *OffsetsResp) error {
	d := decoder{b: b}
	m.Members = d.u32("members")
	n := int(d.u32("queues"))
	if d.err == nil && (n > MaxQueues || n*36 > len(d.b)) {
		d.fail("%d queues", n)
	}
	if d.err != nil {
		n = 0 // allocate nothing for a count that does not fit
	}
	m.Queues = make([]QueueOffsets, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		q := QueueOffsets{Queue: d.u32("queue"), Min: d.u64("min"), Max: d.u64("max"), AtOffset: d.u64("at offset"),
			Committed: int64(d.u64("committed"))}
		if d.err == nil && (q.Min > q.Max || q.AtOffset < q.Min || q.AtOffset > q.Max || q.Committed < NoOffset) {
			d.fail("queue %d: offsets %d %d %d %d", q.Queue, q.Min, q.Max, q.AtOffset, q.Committed)
		}
		m.Queues = append(m.Queues, q)
	}
	return d.end()
}

// Reset targets.
const (
	ResetEarliest uint8 = iota // each queue's oldest stored message
	ResetLatest                // each queue's end: only what is stored from now on
	ResetTime                  // the first message stored at or after At (unix ns)
	ResetOffset                // offset At, within each queue's bounds
)

// Reset sets Group's committed offsets in the queues of Topic that the
// broker holds. Refused while the group has live members there, unless
// Force: then their queues of Topic are taken back (their commits for them
// refused) and handed out again from the new offsets. Answered with
// OffsetsResp (the new committed offsets).
type Reset struct {
	Group string
	Topic string
	To    uint8
	At    int64
	Force bool
}

func (m *Reset) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.Group)
	dst = appendShortString(dst, m.Topic)
	dst = append(dst, m.To)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.At))
	var f uint8
	if m.Force {
		f = 1
	}
	return append(dst, f)
}

func DecodeReset(b []byte, m *Reset) error {
	d := decoder{b: b}
	m.Group = d.name("group", MaxGroupLen)
	m.Topic = d.name("topic", MaxTopicLen)
	m.To = d.u8("to")
	m.At = int64(d.u64("at"))
	f := d.u8("force")
	if err := d.end(); err != nil {
		return err
	}
	if f > 1 {
		return errorf("force %d", f)
	}
	m.Force = f == 1
	if m.To > ResetOffset {
		return errorf("reset to %d", m.To)
	}
	if m.To == ResetOffset && m.At < 0 {
		return errorf("reset to offset %d", m.At)
	}
	return nil
}

// Lookup asks for the messages of Topic whose key is Key (the broker's key
// index), newest first, at most Max.
type Lookup struct {
	Topic string
	Key   []byte
	Max   uint16
}

// KeyHit is one message Lookup found.
type KeyHit struct {
	Queue  uint32
	Offset uint64
}

// LookupResp answers Lookup.
type LookupResp struct {
	Hits []KeyHit
}

func (m *Lookup) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.Topic)
	dst = appendShort(dst, m.Key)
	return binary.LittleEndian.AppendUint16(dst, m.Max)
}

func DecodeLookup(b []byte, m *Lookup) error {
	d := decoder{b: b}
	m.Topic = d.name("topic", MaxTopicLen)
	m.Key = d.short("key", MaxKeyLen)
	m.Max = d.u16("max")
	if err := d.end(); err != nil {
		return err
	}
	if len(m.Key) == 0 || m.Max == 0 {
		return errorf("lookup of key %q, max %d", m.Key, m.Max)
	}
	return nil
}

func (m *LookupResp) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Hits)))
	for _, h := range m.Hits {
		dst = binary.LittleEndian.AppendUint32(dst, h.Queue)
		dst = binary.LittleEndian.AppendUint64(dst, h.Offset)
	}
	return dst
}

func DecodeLookupResp(b []byte, m *LookupResp) error {
	d := decoder{b: b}
	n := d.count("hits", MaxListLen, 12)
	m.Hits = make([]KeyHit, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		m.Hits = append(m.Hits, KeyHit{Queue: d.u32("queue"), Offset: d.u64("offset")})
	}
	return d.end()
}
