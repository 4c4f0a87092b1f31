package log

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/quivermq/quiver/ioengine"
)

const segmentExt = ".seg"

// segment is one preallocated file of the log, named by its base position.
// Readers pin it with acquire/release so that retention can delete it while
// a read is in flight: the file is closed by the last release.
type segment struct {
	base    int64
	file    ioengine.File
	eng     ioengine.Engine // removes it
	refs    atomic.Int64    // 1 for the log's own reference
	deleted atomic.Bool
}

func segmentName(dir string, base int64) string {
	return filepath.Join(dir, fmt.Sprintf("%020d%s", base, segmentExt))
}

func (s *segment) acquire() { s.refs.Add(1) }

func (s *segment) release() {
	if s.refs.Add(-1) == 0 {
		s.file.Close()
		if s.deleted.Load() && s.eng.Remove(s.file.Name()) == nil {
			// Durable, so that a crash cannot bring back a segment whose
			// successor's removal it kept (recovery copes, but a gap is
			// otherwise corruption).
			s.eng.SyncDir(filepath.Dir(s.file.Name()))
		}
	}
}

// listSegments returns the base positions of the segment files in dir, sorted.
func listSegments(dir string) ([]int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var bases []int64
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, segmentExt) {
			continue
		}
		b, err := strconv.ParseInt(strings.TrimSuffix(name, segmentExt), 10, 64)
		if err != nil || b < 0 {
			return nil, fmt.Errorf("log: unexpected file %s in %s", name, dir)
		}
		bases = append(bases, b)
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i] < bases[j] })
	return bases, nil
}
