package wire

import (
	"encoding/binary"
	"fmt"
	"net/url"
	"strconv"
)

// Metadata asks for topics and their queue counts; no topics means all.
type Metadata struct {
	Topics []string
}

func (m *Metadata) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Topics)))
	for _, t := range m.Topics {
		dst = appendShortString(dst, t)
	}
	return dst
}

func DecodeMetadata(b []byte, m *Metadata) error {
	d := decoder{b: b}
	n := d.count("topics", MaxListLen, 3)
	m.Topics = make([]string, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		m.Topics = append(m.Topics, d.name("topic", MaxTopicLen))
	}
	return d.end()
}

// TopicInfo is one topic in a MetaResp. Queues is 0 for a topic asked
// for by name that does not exist.
type TopicInfo struct {
	Name   string `json:"name"`
	Queues uint32 `json:"queues"`
}

// MetaResp answers a Metadata request.
type MetaResp struct {
	BrokerID string
	Topics   []TopicInfo
}

func (m *MetaResp) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.BrokerID)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Topics)))
	for _, t := range m.Topics {
		dst = appendShortString(dst, t.Name)
		dst = binary.LittleEndian.AppendUint32(dst, t.Queues)
	}
	return dst
}

func DecodeMetaResp(b []byte, m *MetaResp) error {
	d := decoder{b: b}
	m.BrokerID = string(d.short("broker id", MaxClientIDLen))
	n := d.count("topics", MaxListLen, 7)
	m.Topics = make([]TopicInfo, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		t := TopicInfo{Name: d.name("topic", MaxTopicLen), Queues: d.u32("queues")}
		if d.err == nil && t.Queues > MaxQueues {
			d.fail("topic %s has %d queues, limit %d", t.Name, t.Queues, MaxQueues)
		}
		m.Topics = append(m.Topics, t)
	}
	return d.end()
}

// Create creates a topic with Queues queues. Creating a topic that exists
// with the same number of queues succeeds; with another number it fails.
type Create struct {
	Topic  string
	Queues uint32
}

func (m *Create) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.Topic)
	return binary.LittleEndian.AppendUint32(dst, m.Queues)
}

func DecodeCreate(b []byte, m *Create) error {
	d := decoder{b: b}
	m.Topic = d.name("topic", MaxTopicLen)
	m.Queues = d.u32("queues")
	if err := d.end(); err != nil {
		return err
	}
	if m.Queues == 0 || m.Queues > MaxQueues {
		return errorf("queues %d (1..%d)", m.Queues, MaxQueues)
	}
	return nil
}

// DeleteTopic asks a broker to delete a topic (TypeDeleteTopic).
type DeleteTopic struct {
	Topic string
}

func (m *DeleteTopic) Append(dst []byte) []byte { return appendShortString(dst, m.Topic) }

func DecodeDeleteTopic(b []byte, m *DeleteTopic) error {
	d := decoder{b: b}
	m.Topic = d.name("topic", MaxTopicLen)
	return d.end()
}

// StatusSel selects the topics a status document lists: the payload of
// a Status request (empty: the defaults), and /status's query
// (?topic=T&topics_from=NAME&topics_limit=N). With tens of thousands of
// topics a document of them all would be megabytes, built on every call.
type StatusSel struct {
	Topic string // only this topic
	From  string // the topics after this name (paging: a document's TopicsNext)
	Limit uint32 // at most this many topics (0: DefaultStatusTopics; at most MaxStatusTopics)
}

// How many topics a status document lists at most, by default and when asked.
const (
	DefaultStatusTopics = 1000
	MaxStatusTopics     = 10000
)

// Append encodes sel; the zero StatusSel encodes as nothing (what brokers
// before StatusSel expect).
func (m *StatusSel) Append(dst []byte) []byte {
	if *m == (StatusSel{}) {
		return dst
	}
	dst = appendShortString(dst, m.Topic)
	dst = appendShortString(dst, m.From)
	return binary.LittleEndian.AppendUint32(dst, m.Limit)
}

func DecodeStatusSel(b []byte, m *StatusSel) error {
	*m = StatusSel{}
	if len(b) == 0 {
		return nil
	}
	d := decoder{b: b}
	m.Topic = string(d.short("topic", MaxTopicLen))
	m.From = string(d.short("from", MaxTopicLen))
	m.Limit = d.u32("limit")
	if err := d.end(); err != nil {
		return err
	}
	if m.Limit > MaxStatusTopics {
		return errorf("limit %d (0..%d)", m.Limit, MaxStatusTopics)
	}
	return nil
}

// ParseStatusQuery reads a StatusSel from /status's query:
// topic=T, topics_from=NAME, topics_limit=N.
func ParseStatusQuery(q url.Values) (StatusSel, error) {
	sel := StatusSel{Topic: q.Get("topic"), From: q.Get("topics_from")}
	if v := q.Get("topics_limit"); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n > MaxStatusTopics {
			return sel, fmt.Errorf("topics_limit: %q is not a number from 0 to %d", v, MaxStatusTopics)
		}
		sel.Limit = uint32(n)
	}
	return sel, nil
}

// AppendStatusResp encodes the broker's status document (JSON).
func AppendStatusResp(dst, doc []byte) []byte { return appendLong(dst, doc) }

// DecodeStatusResp returns the status document; it aliases b.
func DecodeStatusResp(b []byte) ([]byte, error) {
	d := decoder{b: b}
	doc := d.long("status", MaxStatusLen)
	return doc, d.end()
}

// DecodeEmpty checks that a payload that must be empty (OK, Status) is.
func DecodeEmpty(b []byte) error {
	d := decoder{b: b}
	return d.end()
}
