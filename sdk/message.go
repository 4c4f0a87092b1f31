package sdk

import (
	"fmt"
	"sync"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/quivermq/quiver/sdk/wire"
)

// Header is one user header of a message.
type Header = wire.UserHeader

// Message is a message to send, or one received. For sends, the SDK does
// not keep its slices once the send has completed.
type Message struct {
	Topic string
	// Key orders: the messages of a key go to one queue, and are
	// consumed in the order they were sent (Producer, WithKeyFailover).
	Key     []byte
	Tags    []byte
	Headers []Header
	Body    []byte
	// DeliverAt, for Send and SendAsync, makes the message visible to
	// consumers at that time (1 s to 30 days ahead; sooner: at once). The
	// broker keeps it until then, across restarts and failovers; its
	// SendResult is the position of that scheduled copy.
	DeliverAt time.Time

	// Set on received messages.
	Group      string // the broker group of its queue
	Queue      uint32
	Offset     uint64
	StoreTime  time.Time
	ClientTime time.Time

	lease *queueState // the consumer's hold on the message's queue
	redo  *redelivery // a redelivered message (redelivery.go)
	epoch uint64      // its queue's seek epoch when it was fetched
}

// Compression of a batch.
type Compression uint8

const (
	NoCompression Compression = iota
	Zstd
	S2
)

var (
	zenc     *zstd.Encoder
	zOnce    sync.Once
	errZInit error
)

func zstdEncoder() (*zstd.Encoder, error) {
	zOnce.Do(func() {
		zenc, errZInit = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	})
	return zenc, errZInit
}

// packBatch encodes msgs as one batch body, compressed as asked; it
// returns the body and the record flags.
func packBatch(msgs []*Message, comp Compression) ([]byte, uint8, error) {
	var raw []byte
	for _, m := range msgs {
		var hdr []byte
		if len(m.Headers) > 0 {
			hdr = wire.AppendHeaders(nil, m.Headers)
		}
		raw = wire.AppendBatchEntry(raw, &wire.BatchEntry{Key: m.Key, Tags: m.Tags, Headers: hdr, Body: m.Body})
	}
	return compressBatch(raw, comp)
}

// compressBatch compresses a batch body; it returns the body and the
// record flags that say how.
func compressBatch(raw []byte, comp Compression) ([]byte, uint8, error) {
	flags := wire.FlagBatch
	switch comp {
	case NoCompression:
		return raw, flags, nil
	case Zstd:
		enc, err := zstdEncoder()
		if err != nil {
			return nil, 0, err
		}
		return enc.EncodeAll(raw, nil), flags | wire.CompressionZstd, nil
	case S2:
		return s2.Encode(nil, raw), flags | wire.CompressionS2, nil
	}
	return nil, 0, fmt.Errorf("quiver: unknown compression %d", comp)
}

// ErrBadBatch is a fetched batch that does not decode.
var ErrBadBatch = wire.ErrBadBatch

// unpack turns one fetched record into messages, skipping those before from.
func unpack(dst []*Message, topic string, queue uint32, m *wire.FetchedMessage, from uint64) ([]*Message, error) {
	base := Message{Topic: topic, Queue: queue, StoreTime: time.Unix(0, m.StoreTime), ClientTime: time.Unix(0, m.ClientTime)}
	if m.Flags&wire.FlagBatch == 0 {
		if m.Offset < from {
			return dst, nil
		}
		msg := base
		msg.Offset, msg.Key, msg.Tags, msg.Body = m.Offset, m.Key, m.Tags, m.Body
		hs, err := wire.DecodeHeaders(m.Headers)
		if err != nil {
			// Headers written by another client: hand them over as one raw header.
			hs = []Header{{Key: "", Value: m.Headers}}
		}
		msg.Headers = hs
		return append(dst, &msg), nil
	}
	entries, err := wire.BatchEntries(m, nil)
	if err != nil {
		return dst, err
	}
	for i, e := range entries {
		off := m.Offset + uint64(i)
		if off < from {
			continue
		}
		hs, _ := wire.DecodeHeaders(e.Headers)
		msg := base
		msg.Offset, msg.Key, msg.Tags, msg.Headers, msg.Body = off, e.Key, e.Tags, hs, e.Body
		dst = append(dst, &msg)
	}
	return dst, nil
}
