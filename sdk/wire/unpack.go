package wire

import (
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// MaxUnpacked bounds a decompressed batch body, so that a hostile or
// corrupt batch cannot make a reader allocate without bound.
const MaxUnpacked = 64 << 20

// ErrBadBatch is a batch record whose body does not decompress or decode.
var ErrBadBatch = errors.New("quiver: batch does not decode")

var (
	zdec     *zstd.Decoder
	zdecOnce sync.Once
	errZdec  error
)

func zstdDecoder() (*zstd.Decoder, error) {
	zdecOnce.Do(func() {
		zdec, errZdec = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxUnpacked))
	})
	return zdec, errZdec
}

// BatchEntries decodes the messages of a fetched batch record (FlagBatch),
// decompressing its body as its flags say, and appends them to dst. The
// errors wrap ErrBadBatch.
func BatchEntries(m *FetchedMessage, dst []BatchEntry) ([]BatchEntry, error) {
	raw := m.Body
	switch m.Flags & FlagCompressionMask {
	case CompressionZstd:
		dec, err := zstdDecoder()
		if err != nil {
			return dst, err
		}
		if raw, err = dec.DecodeAll(m.Body, nil); err != nil {
			return dst, fmt.Errorf("%w: zstd: %v", ErrBadBatch, err)
		}
	case CompressionS2:
		n, err := s2.DecodedLen(m.Body)
		if err != nil || n > MaxUnpacked {
			return dst, fmt.Errorf("%w: s2 length %d: %v", ErrBadBatch, n, err)
		}
		if raw, err = s2.Decode(nil, m.Body); err != nil {
			return dst, fmt.Errorf("%w: s2: %v", ErrBadBatch, err)
		}
	}
	dst, err := DecodeBatch(raw, m.Count, dst)
	if err != nil {
		return dst, fmt.Errorf("%w: %v", ErrBadBatch, err)
	}
	return dst, nil
}
