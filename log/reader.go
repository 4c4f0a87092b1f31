package log

import (
	"errors"
	"fmt"
	"io"
)

// segReader reads a segment sequentially through a window, for recovery and
// scans. Bytes past the end of a short file read as zeros (never written).
type segReader struct {
	f      readerAt
	limit  int64 // segment size
	buf    []byte
	bufOff int64
	n      int
}

// readerAt is what segReader needs of a file: ioengine.File and *os.File both fit.
type readerAt interface {
	ReadAt(p []byte, off int64) (int, error)
	Name() string
}

func newSegReader(f readerAt, limit int64) *segReader {
	return &segReader{f: f, limit: limit, buf: make([]byte, 1<<20), bufOff: -1}
}

var errPastSegment = errors.New("log: record crosses the segment end")

// peek returns n bytes at off, valid until the next call.
func (r *segReader) peek(off int64, n int) ([]byte, error) {
	if off+int64(n) > r.limit {
		return nil, errPastSegment
	}
	if r.bufOff >= 0 && off >= r.bufOff && off+int64(n) <= r.bufOff+int64(r.n) {
		i := off - r.bufOff
		return r.buf[i : i+int64(n)], nil
	}
	if n > len(r.buf) {
		r.buf = make([]byte, n)
	}
	want := int(min(int64(len(r.buf)), r.limit-off))
	got, err := r.f.ReadAt(r.buf[:want], off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("log: read %s at %d: %w", r.f.Name(), off, err)
	}
	clear(r.buf[got:want])
	r.bufOff, r.n = off, want
	return r.buf[:n], nil
}

// Scan calls fn for every record from pos from up to the readable end, in
// order. from must be a record boundary (or the log's start). The record's
// slices are valid only during the call. Scan reads from the files; it is
// meant for rebuilding and catching up, not for the hot read path.
func (l *Log) Scan(from int64, fn func(pos int64, r *Record) error) error {
	return l.scan(from, l.readable(), fn)
}

func (l *Log) scan(from, to int64, fn func(pos int64, r *Record) error) error {
	if start := l.start.Load(); from < start {
		from = start
	}
	segSize := l.opts.SegmentSize
	var rec Record
	for pos := from; pos < to; {
		seg := l.segmentFor(pos)
		if seg == nil {
			return fmt.Errorf("%w: no segment holds position %d", ErrOutOfRange, pos)
		}
		segEnd := seg.base + segSize
		rd := newSegReader(seg.file, segSize)
		err := func() error {
			defer seg.release()
			for pos < to {
				if segEnd-pos < 4 {
					pos = segEnd
					return nil
				}
				hdr, err := rd.peek(pos-seg.base, 4)
				if err != nil {
					return err
				}
				switch n := RecordSize(hdr); {
				case n == -1:
					pos = segEnd
					return nil
				case n == 0:
					return fmt.Errorf("%w: end of data at %d before %d", ErrCorrupt, pos, to)
				default:
					b, err := rd.peek(pos-seg.base, n)
					if err != nil {
						return fmt.Errorf("%w at position %d: %w", ErrCorrupt, pos, err)
					}
					if _, err := DecodeRecord(b, &rec); err != nil {
						return fmt.Errorf("%w (position %d)", err, pos)
					}
					if err := fn(pos, &rec); err != nil {
						return err
					}
					pos += int64(n)
				}
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}
