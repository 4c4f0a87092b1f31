package wire

import (
	"encoding/binary"
	"math"
)

// Hello opens a session: the first frame a client sends on a connection.
type Hello struct {
	Version     uint16
	ClientID    string
	Credentials []byte
	// Build is the client's build, from version 4 on: "quiver-go/<version>
	// (<commit>; <go version>; <os/arch>)" for this SDK.
	Build string
}

// MaxBuildLen bounds Hello.Build.
const MaxBuildLen = 255

func (m *Hello) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, m.Version)
	dst = appendShortString(dst, m.ClientID)
	dst = appendLong(dst, m.Credentials)
	if m.Version >= 4 {
		dst = appendShortString(dst, m.Build)
	}
	return dst
}

// DecodeHello decodes a Hello payload; the fields alias b.
func DecodeHello(b []byte, m *Hello) error {
	d := decoder{b: b}
	m.Version = d.u16("version")
	m.ClientID = string(d.short("client id", MaxClientIDLen))
	m.Credentials = d.long("credentials", MaxCredentialsLen)
	m.Build = ""
	switch {
	case m.Version > ProtocolVersion:
		// A newer client's: what follows is not ours to judge (the
		// broker answers UNSUPPORTED_VERSION).
		return d.err
	case m.Version >= 4:
		m.Build = string(d.short("build", MaxBuildLen))
	}
	return d.end()
}

// HelloOK accepts a session.
type HelloOK struct {
	Version  uint16
	BrokerID string
	Session  uint64
}

func (m *HelloOK) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, m.Version)
	dst = appendShortString(dst, m.BrokerID)
	return binary.LittleEndian.AppendUint64(dst, m.Session)
}

func DecodeHelloOK(b []byte, m *HelloOK) error {
	d := decoder{b: b}
	m.Version = d.u16("version")
	m.BrokerID = string(d.short("broker id", MaxClientIDLen))
	m.Session = d.u64("session")
	return d.end()
}

// AppendError encodes e as an Error payload.
func AppendError(dst []byte, e *Error) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(e.Code))
	msg := e.Message
	if len(msg) > MaxMessageLen {
		msg = msg[:MaxMessageLen]
	}
	return appendShortString(dst, msg)
}

// DecodeError decodes an Error payload. An unknown code is kept as is (it
// reads as not retryable), so newer brokers can add codes.
func DecodeError(b []byte) (*Error, error) {
	d := decoder{b: b}
	code := Code(d.u16("code"))
	msg := d.short("message", MaxMessageLen)
	if err := d.end(); err != nil {
		return nil, err
	}
	if code == CodeOK {
		return nil, &Error{Code: CodeInvalid, Message: "error frame with code OK"}
	}
	return &Error{Code: code, Message: string(msg)}, nil
}

// AnyQueue in Produce.Queue lets the broker pick the queue.
const AnyQueue = -1

// Durability requested by a Produce.
const (
	DurabilityDefault uint8 = 0 // the topic's or broker's setting
	DurabilitySync    uint8 = 1
	DurabilityAsync   uint8 = 2
)

// Produce stores one record (a message, or a producer batch with Count
// messages and the batch flag) in a topic.
type Produce struct {
	Topic      string
	Queue      int32
	Durability uint8
	Flags      uint8
	Count      uint32
	ClientTime int64
	// ProducerID and Seq make the send idempotent (0: not): the broker
	// stores a send with the Seq of an earlier one of the same producer
	// once, and answers it with the earlier one's position. Seq numbers
	// the first message; a batch of Count messages holds Seq..Seq+Count-1.
	ProducerID uint64
	Seq        uint64
	Key        []byte
	Tags       []byte
	Headers    []byte
	Body       []byte
}

func (m *Produce) Append(dst []byte) []byte { return m.appendAs(dst, true) }

// AppendStored encodes m in the stored layout: a Produce as protocol 2 sent
// it, without producer id and sequence. Files that keep requests (the SDK's
// outbox) use it, so that they stay readable whatever later protocol
// versions add to Produce.
func (m *Produce) AppendStored(dst []byte) []byte { return m.appendAs(dst, false) }

func (m *Produce) appendAs(dst []byte, idempotence bool) []byte {
	dst = appendShortString(dst, m.Topic)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(m.Queue))
	dst = append(dst, m.Durability, m.Flags)
	dst = binary.LittleEndian.AppendUint32(dst, m.Count)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.ClientTime))
	if idempotence {
		dst = binary.LittleEndian.AppendUint64(dst, m.ProducerID)
		dst = binary.LittleEndian.AppendUint64(dst, m.Seq)
	}
	dst = appendShort(dst, m.Key)
	dst = appendShort(dst, m.Tags)
	dst = appendLong(dst, m.Headers)
	return appendLong(dst, m.Body)
}

// DecodeProduce decodes a Produce payload; byte fields alias b. The topic
// is the one allocation (a string the broker keeps).
func DecodeProduce(b []byte, m *Produce) error { return decodeProduceAs(b, m, true) }

// DecodeStoredProduce decodes what AppendStored encoded (no producer id or
// sequence: both 0).
func DecodeStoredProduce(b []byte, m *Produce) error { return decodeProduceAs(b, m, false) }

func decodeProduceAs(b []byte, m *Produce, idempotence bool) error {
	d := decoder{b: b}
	topic := d.short("topic", MaxTopicLen)
	m.Queue = int32(d.u32("queue"))
	m.Durability = d.u8("durability")
	m.Flags = d.u8("flags")
	m.Count = d.u32("count")
	m.ClientTime = int64(d.u64("client time"))
	m.ProducerID, m.Seq = 0, 0
	if idempotence {
		m.ProducerID = d.u64("producer id")
		m.Seq = d.u64("sequence")
	}
	m.Key = d.short("key", MaxKeyLen)
	m.Tags = d.short("tags", MaxTagsLen)
	m.Headers = d.long("headers", MaxHeadersLen)
	m.Body = d.long("body", MaxBodyLen)
	if err := d.end(); err != nil {
		return err
	}
	switch {
	case len(topic) == 0:
		return errorf("empty topic")
	case m.Queue < AnyQueue:
		return errorf("queue %d", m.Queue)
	case m.Durability > DurabilityAsync:
		return errorf("durability %d", m.Durability)
	case m.ProducerID != 0 && m.Seq > math.MaxUint64-uint64(max(m.Count, 1)):
		return errorf("sequence %d of %d messages overflows", m.Seq, m.Count)
	}
	m.Topic = string(topic)
	return nil
}

// ProduceAck acknowledges a Produce: where the record was stored, and the
// epoch of the leadership that stored it.
type ProduceAck struct {
	Queue     uint32
	Offset    uint64 // queue offset of the record's first message
	StoreTime int64
	Epoch     uint64
}

func (m *ProduceAck) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, m.Queue)
	dst = binary.LittleEndian.AppendUint64(dst, m.Offset)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.StoreTime))
	return binary.LittleEndian.AppendUint64(dst, m.Epoch)
}

func DecodeProduceAck(b []byte, m *ProduceAck) error {
	d := decoder{b: b}
	m.Queue = d.u32("queue")
	m.Offset = d.u64("offset")
	m.StoreTime = int64(d.u64("store time"))
	m.Epoch = d.u64("epoch")
	return d.end()
}

// Fetch asks for messages of one queue from an offset on, waiting up to
// MaxWaitMs for the first one (long poll).
type Fetch struct {
	Topic       string
	Queue       uint32
	Offset      uint64
	MaxMessages uint32
	MaxBytes    uint32
	MaxWaitMs   uint32
}

func (m *Fetch) Append(dst []byte) []byte {
	dst = appendShortString(dst, m.Topic)
	dst = binary.LittleEndian.AppendUint32(dst, m.Queue)
	dst = binary.LittleEndian.AppendUint64(dst, m.Offset)
	dst = binary.LittleEndian.AppendUint32(dst, m.MaxMessages)
	dst = binary.LittleEndian.AppendUint32(dst, m.MaxBytes)
	return binary.LittleEndian.AppendUint32(dst, m.MaxWaitMs)
}

func DecodeFetch(b []byte, m *Fetch) error {
	d := decoder{b: b}
	topic := d.short("topic", MaxTopicLen)
	m.Queue = d.u32("queue")
	m.Offset = d.u64("offset")
	m.MaxMessages = d.u32("max messages")
	m.MaxBytes = d.u32("max bytes")
	m.MaxWaitMs = d.u32("max wait")
	if err := d.end(); err != nil {
		return err
	}
	switch {
	case len(topic) == 0:
		return errorf("empty topic")
	case m.MaxMessages == 0 || m.MaxMessages > MaxFetchMessages:
		return errorf("max messages %d (1..%d)", m.MaxMessages, MaxFetchMessages)
	}
	m.Topic = string(topic)
	return nil
}

// FetchedMessage is one message in a FetchResp. Byte fields alias the frame.
type FetchedMessage struct {
	Offset     uint64
	StoreTime  int64
	ClientTime int64
	Flags      uint8
	Count      uint32
	Key        []byte
	Tags       []byte
	Headers    []byte
	Body       []byte
}

func (m *FetchedMessage) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, m.Offset)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.StoreTime))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.ClientTime))
	dst = append(dst, m.Flags)
	dst = binary.LittleEndian.AppendUint32(dst, m.Count)
	dst = appendShort(dst, m.Key)
	dst = appendShort(dst, m.Tags)
	dst = appendLong(dst, m.Headers)
	return appendLong(dst, m.Body)
}

// minFetched is the encoded size of an empty FetchedMessage.
const minFetched = 8 + 8 + 8 + 1 + 4 + 2 + 2 + 4 + 4

// FetchHeader starts a fetch response: the offset to ask for next, the
// queue's readable offsets [Min, Max) when the response was made, and the
// number of messages that follow.
type FetchHeader struct {
	Next, Min, Max uint64
	Count          uint32
}

// AppendFetchResp encodes a fetch response header; the messages follow,
// appended with FetchedMessage.Append.
func AppendFetchResp(dst []byte, h FetchHeader) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, h.Next)
	dst = binary.LittleEndian.AppendUint64(dst, h.Min)
	dst = binary.LittleEndian.AppendUint64(dst, h.Max)
	return binary.LittleEndian.AppendUint32(dst, h.Count)
}

// DecodeFetchResp decodes a fetch response, appending its messages to dst.
// The count is checked against the payload's size before anything grows.
func DecodeFetchResp(b []byte, dst []FetchedMessage) (FetchHeader, []FetchedMessage, error) {
	d := decoder{b: b}
	var h FetchHeader
	h.Next = d.u64("next offset")
	h.Min = d.u64("min offset")
	h.Max = d.u64("max offset")
	n := d.u32("count")
	h.Count = n
	if d.err == nil && (n > MaxFetchMessages || int64(n)*minFetched > int64(len(d.b))) {
		d.fail("%d messages cannot fit in %d bytes", n, len(d.b))
	}
	for i := uint32(0); i < n && d.err == nil; i++ {
		var m FetchedMessage
		m.Offset = d.u64("offset")
		m.StoreTime = int64(d.u64("store time"))
		m.ClientTime = int64(d.u64("client time"))
		m.Flags = d.u8("flags")
		m.Count = d.u32("count")
		m.Key = d.short("key", MaxKeyLen)
		m.Tags = d.short("tags", MaxTagsLen)
		m.Headers = d.long("headers", MaxHeadersLen)
		m.Body = d.long("body", MaxBodyLen)
		dst = append(dst, m)
	}
	if err := d.end(); err != nil {
		return FetchHeader{}, dst, err
	}
	return h, dst, nil
}

func errorf(format string, args ...any) error {
	d := decoder{}
	d.fail(format, args...)
	return d.err
}
