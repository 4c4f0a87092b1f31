package wire

import "encoding/binary"

// Record bodies the SDK builds and the broker stores as they come.

// Flags of a Produce and of a FetchedMessage (the log record's flags).
const (
	FlagCompressionMask uint8 = 0x03
	CompressionNone     uint8 = 0
	CompressionZstd     uint8 = 1
	CompressionS2       uint8 = 2
	FlagBatch           uint8 = 1 << 2 // Body holds Count messages (AppendBatchEntry)
	FlagControl         uint8 = 1 << 3 // internal record; producers may not set it
)

// UserHeader is one user header of a message.
type UserHeader struct {
	Key   string
	Value []byte
}

// AppendHeaders encodes headers: count u16, then key (u16 length) and
// value (u32 length) of each.
func AppendHeaders(dst []byte, hs []UserHeader) []byte {
	if len(hs) == 0 {
		return dst
	}
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(hs)))
	for _, h := range hs {
		dst = appendShortString(dst, h.Key)
		dst = appendLong(dst, h.Value)
	}
	return dst
}

// HeadersSize is the encoded size of hs.
func HeadersSize(hs []UserHeader) int {
	if len(hs) == 0 {
		return 0
	}
	n := 2
	for _, h := range hs {
		n += 2 + len(h.Key) + 4 + len(h.Value)
	}
	return n
}

// DecodeHeaders decodes headers encoded by AppendHeaders (empty: none);
// values alias b.
func DecodeHeaders(b []byte) ([]UserHeader, error) {
	if len(b) == 0 {
		return nil, nil
	}
	d := decoder{b: b}
	n := d.count("headers", MaxHeadersLen/6, 6)
	if d.err == nil && n == 0 {
		d.fail("header count 0 (no headers is encoded as nothing)")
	}
	hs := make([]UserHeader, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		hs = append(hs, UserHeader{Key: string(d.short("header key", MaxKeyLen)), Value: d.long("header value", MaxHeadersLen)})
	}
	return hs, d.end()
}

// BatchEntry is one message inside a batch record's (decompressed) body.
type BatchEntry struct {
	Key     []byte
	Tags    []byte
	Headers []byte // encoded with AppendHeaders
	Body    []byte
}

// AppendBatchEntry appends one message to a batch body.
func AppendBatchEntry(dst []byte, e *BatchEntry) []byte {
	dst = appendShort(dst, e.Key)
	dst = appendShort(dst, e.Tags)
	dst = appendLong(dst, e.Headers)
	return appendLong(dst, e.Body)
}

// DecodeBatch decodes a batch body of exactly count entries, appending
// them to dst; the entries alias b.
func DecodeBatch(b []byte, count uint32, dst []BatchEntry) ([]BatchEntry, error) {
	d := decoder{b: b}
	if int64(count)*12 > int64(len(b)) {
		return dst, errorf("batch of %d messages cannot fit in %d bytes", count, len(b))
	}
	for i := uint32(0); i < count && d.err == nil; i++ {
		dst = append(dst, BatchEntry{Key: d.short("key", MaxKeyLen), Tags: d.short("tags", MaxTagsLen),
			Headers: d.long("headers", MaxHeadersLen), Body: d.long("body", MaxBodyLen)})
	}
	return dst, d.end()
}
