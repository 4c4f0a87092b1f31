package log

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Record layout, little endian. Length counts every byte after itself; the
// CRC32C covers every byte after itself (magic to the end of the body).
//
//	off size field
//	  0    4 length        (total record size - 4)
//	  4    4 crc32c        (Castagnoli, of bytes [8, 4+length))
//	  8    1 magic         (RecordMagic, the format version)
//	  9    1 flags         (bits 0-1 compression, bit 2 batch, bit 3 control,
//	                        bit 4 producer)
//	 10    2 topic length  (1..MaxTopicLen)
//	 12    4 queue id
//	 16    8 queue offset  (of the first message in the record)
//	 24    8 client time   (unix nanoseconds, as sent)
//	 32    8 store time    (unix nanoseconds, set by the log)
//	 40    4 count         (messages in the record: 1, or the batch size)
//	 44    2 key length
//	 46    2 tags length
//	 48    4 headers length
//	 52    4 body length
//	 56   16 producer id, first sequence number (only with the producer flag)
//	         topic, key, tags, headers, body
//
// The producer fields name an idempotent send (see index/producers.go): they
// are stored so that the sends a broker took can be known again after a
// restart, and on the followers that took the records.
const (
	HeaderSize  = 56
	RecordMagic = 1

	// MaxTopicLen bounds the topic name.
	MaxTopicLen = 255
	// MaxKeyLen bounds the message key.
	MaxKeyLen = 1024
	// MaxTagsLen bounds the tags field.
	MaxTagsLen = 1024
	// MaxRecordSize bounds one record (header included). A producer batch is
	// one record, so this is also the largest batch.
	MaxRecordSize = 16 << 20
)

// Flags stored in a record.
const (
	FlagCompressionMask uint8 = 0x03
	CompressionNone     uint8 = 0
	CompressionZstd     uint8 = 1
	CompressionS2       uint8 = 2
	FlagBatch           uint8 = 1 << 2 // body holds Count messages (see batch.go)
	FlagControl         uint8 = 1 << 3 // internal record (offsets, metadata)
	// FlagProducer: the record names its idempotent send (ProducerID, Seq).
	// The log sets it from Message.ProducerID; a Message may not.
	FlagProducer uint8 = 1 << 4
	flagsKnown         = FlagCompressionMask | FlagBatch | FlagControl | FlagProducer

	// producerFieldsSize is what the producer flag adds to a record.
	producerFieldsSize = 16
)

// Markers in the length field.
const (
	// lengthEnd (zero: preallocated, never written) ends the log.
	lengthEnd = 0
	// lengthSeal ends a segment: the next record is at the next segment's base.
	lengthSeal = 0xFFFFFFFF
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Errors returned by the record codec.
var (
	// ErrCorrupt means bytes that should hold a record do not: bad length,
	// bad CRC, unknown magic or inconsistent field lengths.
	ErrCorrupt = errors.New("log: corrupt record")
	// ErrInvalid means a message that cannot be stored (empty topic, field too long).
	ErrInvalid = errors.New("log: invalid message")
	// ErrTooLarge means a message larger than MaxRecordSize or the segment.
	ErrTooLarge = errors.New("log: message too large")
)

// AckMode says when one append is acknowledged, overriding the log's
// Durability for that append.
type AckMode uint8

const (
	AckDefault AckMode = iota // the log's Durability
	AckSync                   // after its bytes are synced, whatever the log's mode
	AckAsync                  // after the write; synced within AsyncInterval
)

// Message is what a producer asks the log to store. The log copies it; the
// caller may reuse the slices once Append has returned or its callback ran.
type Message struct {
	// Ack is when this append is acknowledged (not stored in the record).
	Ack        AckMode
	Topic      string
	QueueID    uint32
	Flags      uint8  // compression and batch bits as the producer sent them
	Count      uint32 // messages in the record; 0 means 1
	ClientTime int64
	Key        []byte
	Tags       []byte
	Headers    []byte
	Body       []byte
	// ProducerID, when not 0, names an idempotent send, whose messages are
	// the producer's sequence numbers Seq..Seq+count-1; both are stored.
	ProducerID uint64
	Seq        uint64
}

// EncodedSize is the size of m's record on disk.
func (m *Message) EncodedSize() int {
	n := HeaderSize + len(m.Topic) + len(m.Key) + len(m.Tags) + len(m.Headers) + len(m.Body)
	if m.ProducerID != 0 {
		n += producerFieldsSize
	}
	return n
}

// Validate reports whether m can be stored, with a reason.
func (m *Message) Validate() error {
	switch {
	case len(m.Topic) == 0:
		return fmt.Errorf("%w: empty topic", ErrInvalid)
	case len(m.Topic) > MaxTopicLen:
		return fmt.Errorf("%w: topic is %d bytes, limit %d", ErrInvalid, len(m.Topic), MaxTopicLen)
	case len(m.Key) > MaxKeyLen:
		return fmt.Errorf("%w: key is %d bytes, limit %d", ErrInvalid, len(m.Key), MaxKeyLen)
	case len(m.Tags) > MaxTagsLen:
		return fmt.Errorf("%w: tags are %d bytes, limit %d", ErrInvalid, len(m.Tags), MaxTagsLen)
	case m.Flags&^flagsKnown != 0:
		return fmt.Errorf("%w: unknown flags %#x", ErrInvalid, m.Flags)
	case m.Flags&FlagProducer != 0:
		return fmt.Errorf("%w: the producer flag is set by the log (from ProducerID)", ErrInvalid)
	case m.Flags&FlagCompressionMask == 3:
		return fmt.Errorf("%w: unknown compression 3", ErrInvalid)
	case m.Flags&FlagBatch == 0 && m.Count > 1:
		return fmt.Errorf("%w: count %d without the batch flag", ErrInvalid, m.Count)
	case m.Ack > AckAsync:
		return fmt.Errorf("%w: ack mode %d", ErrInvalid, m.Ack)
	case m.EncodedSize() > MaxRecordSize:
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, m.EncodedSize(), MaxRecordSize)
	}
	return nil
}

func (m *Message) wantsSync(d Durability) bool {
	return m.Ack == AckSync || (m.Ack == AckDefault && d == Sync)
}

// flags are the record's flags as stored.
func (m *Message) flags() uint8 {
	if m.ProducerID != 0 {
		return m.Flags | FlagProducer
	}
	return m.Flags
}

func (m *Message) count() uint32 {
	if m.Count == 0 {
		return 1
	}
	return m.Count
}

// encodeRecord writes m's record into dst, which must be EncodedSize() long.
func encodeRecord(dst []byte, m *Message, queueOffset uint64, storeTime int64) {
	le := binary.LittleEndian
	le.PutUint32(dst[0:], uint32(len(dst)-4))
	dst[8] = RecordMagic
	dst[9] = m.flags()
	p := HeaderSize
	if m.ProducerID != 0 {
		le.PutUint64(dst[p:], m.ProducerID)
		le.PutUint64(dst[p+8:], m.Seq)
		p += producerFieldsSize
	}
	le.PutUint16(dst[10:], uint16(len(m.Topic)))
	le.PutUint32(dst[12:], m.QueueID)
	le.PutUint64(dst[16:], queueOffset)
	le.PutUint64(dst[24:], uint64(m.ClientTime))
	le.PutUint64(dst[32:], uint64(storeTime))
	le.PutUint32(dst[40:], m.count())
	le.PutUint16(dst[44:], uint16(len(m.Key)))
	le.PutUint16(dst[46:], uint16(len(m.Tags)))
	le.PutUint32(dst[48:], uint32(len(m.Headers)))
	le.PutUint32(dst[52:], uint32(len(m.Body)))
	p += copy(dst[p:], m.Topic)
	p += copy(dst[p:], m.Key)
	p += copy(dst[p:], m.Tags)
	p += copy(dst[p:], m.Headers)
	copy(dst[p:], m.Body)
	le.PutUint32(dst[4:], crc32.Checksum(dst[8:], crcTable))
}

// Record is a decoded view of one stored record. Its slices alias the buffer
// it was decoded from.
type Record struct {
	Flags       uint8 // as stored: FlagProducer says ProducerID and Seq are set
	Topic       []byte
	QueueID     uint32
	QueueOffset uint64
	ClientTime  int64
	StoreTime   int64
	Count       uint32
	Key         []byte
	Tags        []byte
	Headers     []byte
	Body        []byte
	ProducerID  uint64 // 0 without FlagProducer
	Seq         uint64
}

// Size of the record on disk.
func (r *Record) Size() int {
	n := HeaderSize + len(r.Topic) + len(r.Key) + len(r.Tags) + len(r.Headers) + len(r.Body)
	if r.Flags&FlagProducer != 0 {
		n += producerFieldsSize
	}
	return n
}

// RecordSize returns the size of the record that starts with hdr (at least
// 4 bytes), or 0 for the end-of-log marker and -1 for a segment seal. It does
// not validate the record.
func RecordSize(hdr []byte) int {
	n := binary.LittleEndian.Uint32(hdr)
	switch n {
	case lengthEnd:
		return 0
	case lengthSeal:
		return -1
	}
	if n > MaxRecordSize {
		return int(MaxRecordSize) + 1
	}
	return int(n) + 4
}

// DecodeRecord decodes the record at the start of b into r. It returns the
// record's size, or an error wrapping ErrCorrupt; it never panics and never
// allocates. b may hold more bytes than the record.
func DecodeRecord(b []byte, r *Record) (int, error) {
	le := binary.LittleEndian
	if len(b) < HeaderSize {
		return 0, fmt.Errorf("%w: %d bytes, shorter than a header", ErrCorrupt, len(b))
	}
	length := le.Uint32(b)
	if length == lengthEnd || length == lengthSeal {
		return 0, fmt.Errorf("%w: end marker %#x where a record should be", ErrCorrupt, length)
	}
	if length < HeaderSize-4 || length > MaxRecordSize-4 {
		return 0, fmt.Errorf("%w: length %d out of range", ErrCorrupt, length)
	}
	size := int(length) + 4
	if len(b) < size {
		return 0, fmt.Errorf("%w: length %d but only %d bytes", ErrCorrupt, length, len(b)-4)
	}
	b = b[:size]
	if got, want := crc32.Checksum(b[8:], crcTable), le.Uint32(b[4:]); got != want {
		return 0, fmt.Errorf("%w: crc %#08x, stored %#08x", ErrCorrupt, got, want)
	}
	if b[8] != RecordMagic {
		return 0, fmt.Errorf("%w: magic %d", ErrCorrupt, b[8])
	}
	r.Flags = b[9]
	topicLen := int(le.Uint16(b[10:]))
	r.QueueID = le.Uint32(b[12:])
	r.QueueOffset = le.Uint64(b[16:])
	r.ClientTime = int64(le.Uint64(b[24:]))
	r.StoreTime = int64(le.Uint64(b[32:]))
	r.Count = le.Uint32(b[40:])
	keyLen := int(le.Uint16(b[44:]))
	tagsLen := int(le.Uint16(b[46:]))
	hdrLen := int(le.Uint32(b[48:]))
	bodyLen := int(le.Uint32(b[52:]))
	if r.Flags&^flagsKnown != 0 || r.Flags&FlagCompressionMask == 3 {
		return 0, fmt.Errorf("%w: flags %#x", ErrCorrupt, r.Flags)
	}
	if topicLen == 0 || topicLen > MaxTopicLen || keyLen > MaxKeyLen || tagsLen > MaxTagsLen || r.Count == 0 {
		return 0, fmt.Errorf("%w: field lengths out of range", ErrCorrupt)
	}
	p := HeaderSize
	r.ProducerID, r.Seq = 0, 0
	if r.Flags&FlagProducer != 0 {
		p += producerFieldsSize
	}
	// Sum in int64 so that huge lengths cannot wrap.
	if int64(p)+int64(topicLen)+int64(keyLen)+int64(tagsLen)+int64(hdrLen)+int64(bodyLen) != int64(size) {
		return 0, fmt.Errorf("%w: field lengths do not add up to %d", ErrCorrupt, size)
	}
	if p > HeaderSize {
		r.ProducerID, r.Seq = le.Uint64(b[HeaderSize:]), le.Uint64(b[HeaderSize+8:])
		if r.ProducerID == 0 {
			return 0, fmt.Errorf("%w: producer flag with producer id 0", ErrCorrupt)
		}
	}
	r.Topic, p = b[p:p+topicLen:p+topicLen], p+topicLen
	r.Key, p = b[p:p+keyLen:p+keyLen], p+keyLen
	r.Tags, p = b[p:p+tagsLen:p+tagsLen], p+tagsLen
	r.Headers, p = b[p:p+hdrLen:p+hdrLen], p+hdrLen
	r.Body = b[p : p+bodyLen : p+bodyLen]
	return size, nil
}
