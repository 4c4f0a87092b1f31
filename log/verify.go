package log

import (
	"errors"
	"fmt"
	"os"
)

// existingSegmentSize returns the preallocated size of the first segment in
// dir, or 0 when there is none.
func existingSegmentSize(dir string) (int64, error) {
	bases, err := listSegments(dir)
	if err != nil || len(bases) == 0 {
		return 0, err
	}
	fi, err := os.Stat(segmentName(dir, bases[0]))
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// VerifyReport is the result of Verify.
type VerifyReport struct {
	Segments int
	Records  int64
	Bytes    int64 // record bytes checked
	End      int64 // position after the last valid record
	// Corrupt is the first damaged record (nil if none), and CorruptPos its position.
	Corrupt    error
	CorruptPos int64
}

// Verify reads every record of the log in dir and checks its CRC, without
// changing anything (the log must not be open for writing meanwhile).
// progress, if not nil, is called with bytes of segments read and in total.
func Verify(dir string, progress func(done, total int64)) (VerifyReport, error) {
	var rep VerifyReport
	segSize, err := existingSegmentSize(dir)
	if err != nil {
		return rep, fmt.Errorf("log: %w", err)
	}
	bases, _ := listSegments(dir)
	rep.Segments = len(bases)
	if len(bases) == 0 {
		return rep, nil
	}
	total := int64(len(bases)) * segSize
	var rec Record
	for i, base := range bases {
		f, err := os.Open(segmentName(dir, base))
		if err != nil {
			return rep, fmt.Errorf("log: %w", err)
		}
		rd := newSegReader(f, segSize)
		off := int64(0)
		done := false
		for !done && segSize-off >= 4 {
			hdr, err := rd.peek(off, 4)
			if err != nil {
				f.Close()
				return rep, err
			}
			switch n := RecordSize(hdr); n {
			case 0:
				done = true
				rep.End = base + off
				if i != len(bases)-1 {
					rep.Corrupt, rep.CorruptPos = fmt.Errorf("%w: segment %s ends without a seal but is not the last", ErrCorrupt, f.Name()), base+off
				}
			case -1:
				done = true
				rep.End = base + segSize
			default:
				b, err := rd.peek(off, n)
				if err == nil {
					_, err = DecodeRecord(b, &rec)
				}
				if err != nil {
					if errors.Is(err, errPastSegment) {
						err = fmt.Errorf("%w: %w", ErrCorrupt, err)
					}
					rep.Corrupt, rep.CorruptPos, rep.End = fmt.Errorf("%s offset %d: %w", f.Name(), off, err), base+off, base+off
					f.Close()
					return rep, nil
				}
				rep.Records++
				rep.Bytes += int64(n)
				off += int64(n)
			}
			if progress != nil && rep.Records%4096 == 0 {
				progress(int64(i)*segSize+off, total)
			}
		}
		f.Close()
		if rep.Corrupt != nil {
			return rep, nil
		}
		if progress != nil {
			progress(int64(i+1)*segSize, total)
		}
	}
	return rep, nil
}
