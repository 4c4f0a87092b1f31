package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Type is a frame's payload type.
type Type uint8

// Frame types.
const (
	TypeHello      Type = 1 // client -> broker, first frame on a connection
	TypeHelloOK    Type = 2
	TypeError      Type = 3 // broker -> client, the response to a failed request
	TypeProduce    Type = 4
	TypeProduceAck Type = 5
	TypeFetch      Type = 6
	TypeFetchResp  Type = 7
	TypeMetadata   Type = 8  // topics and their queue counts
	TypeMetaResp   Type = 9  //
	TypeCreate     Type = 10 // create a topic
	TypeOK         Type = 11 // empty success response
	TypeGroupSync  Type = 12 // join, heartbeat or leave a consumer group
	TypeAssignment Type = 13 //
	TypeCommit     Type = 14 // commit consumer offsets (answered with OK)
	TypeStatus     Type = 15 // the broker's status document
	TypeStatusResp Type = 16 //
	TypeReplStart  Type = 17 // a follower asks its leader for the log (replica/)
	TypeReplHello  Type = 18 // the leader's answer: epochs, where to start
	TypeReplData   Type = 19 // leader -> follower: records, or a heartbeat
	TypeReplAck    Type = 20 // follower -> leader: what it has durable
	TypePromote    Type = 21 // admin: make this follower the leader (answered with EpochInfo)
	TypeEpochInfo  Type = 22 // a broker's epoch and leader; also sent to fence an old leader
	TypeRoute      Type = 23 // the cluster as the broker knows it (or the broker itself)
	TypeRouteResp  Type = 24 //
	TypeElect      Type = 25 // admin: have the controller elect a group's leader (answered with EpochInfo)
	// Peer streams (quiverd to quiverd only, on PeerALPN; docs/protocol.md,
	// "Peers"). The first frame of a peer stream says what it carries.
	TypeRaft       Type = 26 // the stream carries the controller quorum's raft traffic (hashicorp/raft's framing) from here on
	TypeCtlSession Type = 27 // a broker's session with the controller: heartbeats and requests out, state and results back
	TypeCtlMsg     Type = 28 // one message of a controller session (JSON, see daemon/controller)

	TypeOffsets      Type = 29 // a topic's queues: bounds, offset at a time, a group's commits (offsets.go)
	TypeOffsetsResp  Type = 30
	TypeReset        Type = 31 // admin: set a group's committed offsets (answered with OffsetsResp)
	TypeLookup       Type = 32 // a topic's messages with a key
	TypeLookupResp   Type = 33
	TypeFetchTags    Type = 34 // a Fetch of the messages with some tags (tags.go), answered with FetchResp
	TypeProduceAt    Type = 35 // a Produce delivered at a time (delay.go), answered with ProduceAck
	TypeClientReport Type = 36 // the brokers a client sets aside (report.go), answered with OK
	TypeDeleteTopic  Type = 37 // admin: delete a topic, answered with OK
	typeLimit             = 38
)

// MaxTopics is how many topics a broker holds at most: Route and Metadata
// answers count them in a u16, and a broker creates no more (65,535 less
// room for its own).
const MaxTopics = 65000

// ProtocolVersion is the version this package speaks. 2: ProduceAck and
// ReplAck carry the leader epoch; Elect. 3: Produce carries a producer id
// and sequence (idempotent sends); later Offsets, Reset and Lookup (new
// requests: a broker without them answers INVALID, nothing else changed).
// 4: Hello carries the client's build (a broker logs which builds talk to
// it and lists them in its status).
const ProtocolVersion = 4

// MinProtocolVersion is the oldest version a broker of this package
// accepts: version 3 differs only in Hello.
const MinProtocolVersion = 3

// ALPN is the application protocol Quiver negotiates over QUIC's TLS.
const ALPN = "quiver/1"

// PeerALPN is the protocol brokers speak to each other (replication, the
// controller quorum, a controller's sessions): both sides present a
// certificate of the group's bundle (peer_ca). Clients never offer it.
const PeerALPN = "quiver-peer/1"

// FrameNoReply, in a Produce frame's flags, asks the broker not to answer
// (oneway sends: lossy by design, see the SDK).
const FrameNoReply uint8 = 1

// Limits. Every decoder enforces them, so a peer cannot make the other side
// allocate more than they allow.
const (
	HeaderSize        = 16
	MaxFrameSize      = 32 << 20
	MaxTopicLen       = 255
	MaxKeyLen         = 1024
	MaxTagsLen        = 1024
	MaxHeadersLen     = 64 << 10
	MaxBodyLen        = 16<<20 - 128<<10 // a whole record, every field at its limit, fits in the log's 16 MiB
	MaxClientIDLen    = 255
	MaxCredentialsLen = 4096
	MaxMessageLen     = 4096
	MaxFetchMessages  = 4096
	MaxGroupLen       = 255
	MaxMemberLen      = 255
	MaxListLen        = 4096     // topics in a Metadata or GroupSync, queues in an Assignment or Commit
	MaxQueues         = 1024     // queues of one topic
	MaxStatusLen      = 16 << 20 // the status document
	MaxReplChunk      = 24 << 20 // records in one ReplData
	MaxEpochs         = 4096     // entries of an epoch history
)

var (
	// ErrMalformed wraps every decoding failure.
	ErrMalformed = errors.New("wire: malformed")
	// ErrFrameTooLarge is returned for a frame whose length exceeds MaxFrameSize.
	ErrFrameTooLarge = errors.New("wire: frame too large")
)

// Header is a frame's fixed part.
type Header struct {
	Type      Type
	Flags     uint8
	RequestID uint64
}

// AppendFrame appends a frame holding payload (already encoded).
func AppendFrame(dst []byte, h Header, payload []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(HeaderSize-4+len(payload)))
	dst = append(dst, byte(h.Type), h.Flags, 0, 0)
	dst = binary.LittleEndian.AppendUint64(dst, h.RequestID)
	return append(dst, payload...)
}

// BeginFrame appends a frame header with a placeholder length; the caller
// appends the payload and calls EndFrame. It saves a copy of the payload.
func BeginFrame(dst []byte, h Header) ([]byte, int) {
	start := len(dst)
	return AppendFrame(dst, h, nil), start
}

// EndFrame sets the length of the frame that starts at start.
func EndFrame(b []byte, start int) []byte {
	binary.LittleEndian.PutUint32(b[start:], uint32(len(b)-start-4))
	return b
}

// DecodeHeader decodes the 16-byte header and returns it with the payload
// length.
func DecodeHeader(b []byte) (Header, int, error) {
	if len(b) < HeaderSize {
		return Header{}, 0, fmt.Errorf("%w: header of %d bytes", ErrMalformed, len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if n < HeaderSize-4 {
		return Header{}, 0, fmt.Errorf("%w: frame length %d", ErrMalformed, n)
	}
	if n > MaxFrameSize {
		return Header{}, 0, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, MaxFrameSize)
	}
	h := Header{Type: Type(b[4]), Flags: b[5], RequestID: binary.LittleEndian.Uint64(b[8:])}
	if h.Type == 0 || h.Type >= typeLimit {
		return Header{}, 0, fmt.Errorf("%w: unknown frame type %d", ErrMalformed, h.Type)
	}
	if b[6] != 0 || b[7] != 0 {
		return Header{}, 0, fmt.Errorf("%w: reserved bytes set", ErrMalformed)
	}
	return h, int(n) - (HeaderSize - 4), nil
}

// ReadFrame reads one frame from r into buf (grown when needed, never past
// MaxFrameSize) and returns its header and payload, which aliases buf.
func ReadFrame(r io.Reader, buf []byte) (Header, []byte, []byte, error) {
	if cap(buf) < HeaderSize {
		buf = make([]byte, 0, 4096)
	}
	buf = buf[:HeaderSize]
	if _, err := io.ReadFull(r, buf); err != nil {
		return Header{}, nil, buf, err
	}
	h, n, err := DecodeHeader(buf)
	if err != nil {
		return Header{}, nil, buf, err
	}
	if cap(buf) < HeaderSize+n {
		nb := make([]byte, HeaderSize+n)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:HeaderSize+n]
	if _, err := io.ReadFull(r, buf[HeaderSize:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Header{}, nil, buf, err
	}
	return h, buf[HeaderSize:], buf, nil
}
