package wire

import "encoding/binary"

// Replication (docs/protocol.md, "Replication").
//
// A follower opens a session like any client, then a stream on which its
// first frame is ReplStart. The leader answers ReplHello, then streams
// ReplData frames (records, or heartbeats when it has none) while the
// follower sends ReplAck frames: after every batch it applies and on its
// own timer, which nothing else resets (incident 000).

// Epoch is one entry of an epoch history: the leadership Epoch began at log
// position Start, led by Leader (a broker id).
type Epoch struct {
	Epoch  uint64 `json:"epoch"`
	Start  int64  `json:"start"`
	Leader string `json:"leader"`
}

func appendEpochs(dst []byte, es []Epoch) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(es)))
	for _, e := range es {
		dst = binary.LittleEndian.AppendUint64(dst, e.Epoch)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(e.Start))
		dst = appendShortString(dst, e.Leader)
	}
	return dst
}

func (d *decoder) epochs() []Epoch {
	n := d.count("epochs", MaxEpochs, 18)
	es := make([]Epoch, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		e := Epoch{Epoch: d.u64("epoch"), Start: int64(d.u64("start")), Leader: string(d.short("leader", MaxClientIDLen))}
		if d.err == nil && e.Start < 0 {
			d.fail("epoch %d starts at %d", e.Epoch, e.Start)
		}
		es = append(es, e)
	}
	return es
}

// ReplStart asks the leader for its log from the follower's end.
type ReplStart struct {
	Follower    string // broker id
	SegmentSize int64  // must equal the leader's
	LastEpoch   uint64 // the newest epoch the follower's log has data of (0: none)
	End         int64  // the follower's log end
	HeartbeatMs uint32 // how often the follower acks when it has nothing else to say
}

func (m *ReplStart) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.Follower)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.SegmentSize))
	dst = binary.LittleEndian.AppendUint64(dst, m.LastEpoch)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.End))
	return binary.LittleEndian.AppendUint32(dst, m.HeartbeatMs)
}

func DecodeReplStart(b []byte, m *ReplStart) error {
	d := decoder{b: b}
	m.Follower = d.name("follower", MaxClientIDLen)
	m.SegmentSize = int64(d.u64("segment size"))
	m.LastEpoch = d.u64("last epoch")
	m.End = int64(d.u64("end"))
	m.HeartbeatMs = d.u32("heartbeat")
	if err := d.end(); err != nil {
		return err
	}
	if m.SegmentSize <= 0 || m.End < 0 {
		return errorf("segment size %d, end %d", m.SegmentSize, m.End)
	}
	return nil
}

// NoTruncate in ReplHello.TruncateTo: the follower's log is a prefix of the
// leader's.
const NoTruncate = -1

// ReplHello answers ReplStart. When TruncateTo is set, the follower's log
// has records the leader's does not (it diverged after a failover): the
// follower cuts its log back there and asks again. Otherwise records follow
// from From.
type ReplHello struct {
	Leader      string
	Epoch       uint64
	Epochs      []Epoch // the leader's whole history
	TruncateTo  int64
	From        int64
	TimeoutMs   uint32 // the leader drops the follower after this long without an ack
	HeartbeatMs uint32 // the leader sends a heartbeat after this long without data
}

func (m *ReplHello) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.Leader)
	dst = binary.LittleEndian.AppendUint64(dst, m.Epoch)
	dst = appendEpochs(dst, m.Epochs)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.TruncateTo))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.From))
	dst = binary.LittleEndian.AppendUint32(dst, m.TimeoutMs)
	return binary.LittleEndian.AppendUint32(dst, m.HeartbeatMs)
}

func DecodeReplHello(b []byte, m *ReplHello) error {
	d := decoder{b: b}
	m.Leader = d.name("leader", MaxClientIDLen)
	m.Epoch = d.u64("epoch")
	m.Epochs = d.epochs()
	m.TruncateTo = int64(d.u64("truncate to"))
	m.From = int64(d.u64("from"))
	m.TimeoutMs = d.u32("timeout")
	m.HeartbeatMs = d.u32("heartbeat")
	if err := d.end(); err != nil {
		return err
	}
	if m.TruncateTo < NoTruncate || m.From < 0 {
		return errorf("truncate to %d, from %d", m.TruncateTo, m.From)
	}
	return nil
}

// ReplData carries the leader's records [Pos, Pos+len(Records)) and says
// where the next ones start (Next: after them, or the next segment's base
// when the leader's segment ends there). Empty Records with Next == Pos is
// a heartbeat. Visible is the leader's readable end, for the follower's lag.
type ReplData struct {
	Epoch   uint64
	Pos     int64
	Next    int64
	Visible int64
	Records []byte
}

// AppendReplDataHeader encodes everything but the records, followed by the
// records' length; the caller appends the records themselves.
func AppendReplDataHeader(dst []byte, m *ReplData) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, m.Epoch)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Pos))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Next))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Visible))
	return binary.LittleEndian.AppendUint32(dst, uint32(len(m.Records)))
}

func (m *ReplData) Append(dst []byte) []byte {
	return append(AppendReplDataHeader(dst, m), m.Records...)
}

// DecodeReplData decodes a ReplData; Records aliases b.
func DecodeReplData(b []byte, m *ReplData) error {
	d := decoder{b: b}
	m.Epoch = d.u64("epoch")
	m.Pos = int64(d.u64("pos"))
	m.Next = int64(d.u64("next"))
	m.Visible = int64(d.u64("visible"))
	m.Records = d.long("records", MaxReplChunk)
	if err := d.end(); err != nil {
		return err
	}
	if m.Pos < 0 || m.Next < m.Pos+int64(len(m.Records)) || m.Visible < 0 {
		return errorf("pos %d, next %d, %d bytes", m.Pos, m.Next, len(m.Records))
	}
	return nil
}

// ReplAck reports what the follower has: Durable (synced) and Written,
// as a follower of Epoch (a leader ends a session whose acks carry
// another epoch).
type ReplAck struct {
	Epoch   uint64
	Durable int64
	Written int64
}

func (m *ReplAck) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, m.Epoch)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Durable))
	return binary.LittleEndian.AppendUint64(dst, uint64(m.Written))
}

func DecodeReplAck(b []byte, m *ReplAck) error {
	d := decoder{b: b}
	m.Epoch = d.u64("epoch")
	m.Durable = int64(d.u64("durable"))
	m.Written = int64(d.u64("written"))
	if err := d.end(); err != nil {
		return err
	}
	if m.Durable < 0 || m.Written < m.Durable {
		return errorf("durable %d, written %d", m.Durable, m.Written)
	}
	return nil
}

// EpochInfo is a broker's view of its group: its epoch, who leads it and
// where that leader listens. A broker sends it to a peer to fence an old
// leader; Promote is answered with it.
type EpochInfo struct {
	Epoch      uint64
	Leader     string
	LeaderAddr string
}

func (m *EpochInfo) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, m.Epoch)
	dst = appendShortString(dst, m.Leader)
	return appendShortString(dst, m.LeaderAddr)
}

func DecodeEpochInfo(b []byte, m *EpochInfo) error {
	d := decoder{b: b}
	m.Epoch = d.u64("epoch")
	m.Leader = string(d.short("leader", MaxClientIDLen))
	m.LeaderAddr = string(d.short("leader address", MaxClientIDLen))
	return d.end()
}

// Elect asks for a new leader of a broker group (quiver admin elect): the
// broker that receives it passes it to the controller, which elects an
// in-sync member (Broker, when given and in sync; else the best one) in a
// new epoch. With ElectUnclean it may elect a member outside the in-sync
// set, which can lose acknowledged sends: an operator's last resort.
type Elect struct {
	Group  string
	Broker string // "" : the controller's choice
	Flags  uint8
}

// ElectUnclean: allow a member outside the in-sync set.
const ElectUnclean = 1

func (m *Elect) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.Group)
	dst = appendShortString(dst, m.Broker)
	return append(dst, m.Flags)
}

func DecodeElect(b []byte, m *Elect) error {
	d := decoder{b: b}
	m.Group = d.name("group", MaxGroupLen)
	m.Broker = string(d.short("broker", MaxClientIDLen))
	m.Flags = d.u8("flags")
	if err := d.end(); err != nil {
		return err
	}
	if m.Flags&^ElectUnclean != 0 {
		return errorf("elect flags %#x", m.Flags)
	}
	return nil
}
