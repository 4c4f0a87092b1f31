package wire

import "encoding/binary"

// Routing (docs/protocol.md, "Routing").
//
// A cluster is a set of broker groups (a leader and its followers). Every
// broker keeps a view of the cluster by asking the brokers it knows of
// (from its configuration, then from their answers) for their own
// description, about every second. A Route request returns that view, so
// a client learns the whole cluster from any broker.

// Route asks for the cluster as the broker knows it; with RouteSelf, for
// the broker's own description only (what brokers ask each other).
type Route struct {
	Flags uint8
}

// RouteSelf: answer with this broker only.
const RouteSelf = 1

// Limits of routing messages.
const (
	MaxRouteBrokers = 1024  // brokers in a RouteResp, and peers a broker lists
	MaxAddrLen      = 255   // host:port
	MaxRouteTopics  = 65535 // topics one broker reports
	maxRouteErr     = 1024  // a broker's last error, as reported
)

func (m *Route) Append(dst []byte) []byte { return append(dst, m.Flags) }

func DecodeRoute(b []byte, m *Route) error {
	d := decoder{b: b}
	m.Flags = d.u8("flags")
	if err := d.end(); err != nil {
		return err
	}
	if m.Flags&^RouteSelf != 0 {
		return errorf("route flags %#x", m.Flags)
	}
	return nil
}

// RouteBroker describes one broker: by itself (AgeMs 0) or as another
// broker last heard from it.
type RouteBroker struct {
	ID    string `json:"id"`    // "" when never heard from
	Group string `json:"group"` // its broker group ("" until a new follower learns it)
	Addr  string `json:"addr"`  // where clients and peers reach it
	Role  string `json:"role"`  // leader, follower, fenced or waiting (no role from the controller yet); "" when never heard from
	Epoch uint64 `json:"epoch"`
	// Leader is the address of its group's leader as it knows it.
	Leader string `json:"leader,omitempty"`
	// AgeMs is how long ago the answering broker heard this description
	// (0: the answering broker itself).
	AgeMs uint32 `json:"age_ms"`
	// Err is why the answering broker could not ask it lately ("" if it could).
	Err    string      `json:"err,omitempty"`
	Topics []TopicInfo `json:"topics,omitempty"`
	// Peers are the addresses it knows of (configured and learned).
	Peers []string `json:"peers,omitempty"`
}

func (m *RouteBroker) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.ID)
	dst = appendShortString(dst, m.Group)
	dst = appendShortString(dst, m.Addr)
	dst = appendShortString(dst, m.Role)
	dst = binary.LittleEndian.AppendUint64(dst, m.Epoch)
	dst = appendShortString(dst, m.Leader)
	dst = binary.LittleEndian.AppendUint32(dst, m.AgeMs)
	dst = appendShortString(dst, m.Err)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Topics)))
	for _, t := range m.Topics {
		dst = appendShortString(dst, t.Name)
		dst = binary.LittleEndian.AppendUint32(dst, t.Queues)
	}
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Peers)))
	for _, p := range m.Peers {
		dst = appendShortString(dst, p)
	}
	return dst
}

func (d *decoder) routeBroker(m *RouteBroker) {
	m.ID = string(d.short("broker id", MaxClientIDLen)) // "" for a broker never heard from
	m.Group = string(d.short("group", MaxClientIDLen))
	m.Addr = d.name("address", MaxAddrLen)
	m.Role = string(d.short("role", 16))
	m.Epoch = d.u64("epoch")
	m.Leader = string(d.short("leader", MaxAddrLen))
	m.AgeMs = d.u32("age")
	m.Err = string(d.short("error", maxRouteErr))
	n := d.count("topics", MaxRouteTopics, 7)
	m.Topics = make([]TopicInfo, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		t := TopicInfo{Name: d.name("topic", MaxTopicLen), Queues: d.u32("queues")}
		if d.err == nil && (t.Queues == 0 || t.Queues > MaxQueues) {
			d.fail("topic %s has %d queues (1..%d)", t.Name, t.Queues, MaxQueues)
		}
		m.Topics = append(m.Topics, t)
	}
	n = d.count("peers", MaxRouteBrokers, 3)
	m.Peers = make([]string, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		m.Peers = append(m.Peers, d.name("peer", MaxAddrLen))
	}
	switch m.Role {
	case "", "leader", "follower", "fenced", "waiting": // waiting: no role from the controller yet
	default:
		d.fail("role %q", m.Role)
	}
}

// RouteResp answers a Route: the answering broker first, then every
// other broker it knows of.
type RouteResp struct {
	Brokers []RouteBroker
}

func (m *RouteResp) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Brokers)))
	for i := range m.Brokers {
		dst = m.Brokers[i].Append(dst)
	}
	return dst
}

func DecodeRouteResp(b []byte, m *RouteResp) error {
	d := decoder{b: b}
	n := d.count("brokers", MaxRouteBrokers, 29)
	m.Brokers = make([]RouteBroker, n)
	for i := 0; i < n && d.err == nil; i++ {
		d.routeBroker(&m.Brokers[i])
	}
	if err := d.end(); err != nil {
		return err
	}
	if n == 0 {
		return errorf("a route without brokers")
	}
	return nil
}

// KeyHash is FNV-1a (32 bits) of a message key. A keyed message's queue is
// KeyHash(key) mod the topic's queues, counted over its broker groups in
// name order (the SDK), or over one broker's queues when a client sends
// it without a queue (the broker).
func KeyHash(key []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range key {
		h ^= uint32(c)
		h *= 16777619
	}
	return h
}
