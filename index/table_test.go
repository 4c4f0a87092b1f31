package index

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/quivermq/quiver/internal/fsutil"
)

// crash stops idx as a kill would: no checkpoint, files closed.
func crash(idx *Index) {
	idx.closed.Store(true)
	idx.closeFiles()
}

// countingFS counts the opens of consume-queue files.
type countingFS struct {
	fsutil.FS
	cq atomic.Int64
}

func (c *countingFS) OpenFile(name string, flag int, perm os.FileMode) (fsutil.File, error) {
	if strings.HasSuffix(name, ".cq") {
		c.cq.Add(1)
	}
	return c.FS.OpenFile(name, flag, perm)
}

// An open takes every queue from the table: it opens no queue file (a
// broker with 100,000 queues read each one's newest entry: 2.6 s), and
// answers as before.
func TestOpenReadsTheTableNotTheQueueFiles(t *testing.T) {
	f := newFakeLog()
	o := testOpts(t.TempDir(), f)
	idx := mustOpen(t, o)
	fill(t, idx, f, 150)
	want := answers(t, idx)
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}
	cfs := &countingFS{FS: fsutil.OS}
	o.FS = cfs
	idx = mustOpen(t, o)
	defer idx.Close()
	if n := cfs.cq.Load(); n != 0 {
		t.Fatalf("the open opened %d queue files", n)
	}
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after reopening from the table")
	}
	if cfs.cq.Load() == 0 {
		t.Fatal("the reads opened no queue file: the counting is broken")
	}
}

// An index of the layout before the table (checkpoint QIX2, no table) is
// read from its files once, and its table made.
func TestTableFromTheFileLayout(t *testing.T) {
	dir := t.TempDir()
	f := newFakeLog()
	o := testOpts(dir, f)
	idx := mustOpen(t, o)
	fill(t, idx, f, 150)
	want := answers(t, idx)
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(dir, checkpointName)
	b, err := os.ReadFile(cp)
	if err != nil {
		t.Fatal(err)
	}
	copy(b, "QIX2")
	binary.LittleEndian.PutUint32(b[12:], crc32.Checksum(b[:12], crcTable))
	if err := os.WriteFile(cp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, tableName)); err != nil {
		t.Fatal(err)
	}
	idx = mustOpen(t, o)
	if got := idx.ResumeFrom(); got != f.end {
		t.Fatalf("ResumeFrom %d, want %d (the QIX2 checkpoint)", got, f.end)
	}
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after reading the file layout")
	}
	crash(idx) // the table was made at the open: a crash now keeps it
	states, err := readAllTable(fsutil.OS, dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range states {
		n += len(m)
	}
	if n != len(idx.Queues()) {
		t.Fatalf("the new table lists %d queues, the index has %d", n, len(idx.Queues()))
	}
	idx = mustOpen(t, o)
	defer idx.Close()
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after reopening with the new table")
	}
}

// A crash after entries were written out and before the table recorded
// them: the queues end where the table says (the entries past it may be
// torn), and the log's replay writes them again.
func TestEntriesPastTheTableAreReplayed(t *testing.T) {
	f := newFakeLog()
	o := testOpts(t.TempDir(), f)
	idx := mustOpen(t, o)
	fill(t, idx, f, 100)
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	before := idx.Queues()
	fill(t, idx, f, 60)
	want := answers(t, idx)
	// What a checkpoint's write-out does before its edit: the files
	// hold the new entries, the table does not.
	idx.wmu.Lock()
	err := idx.writeOut(idx.pending)
	idx.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	crash(idx)

	idx = mustOpen(t, o)
	defer idx.Close()
	if got := idx.Queues(); !reflect.DeepEqual(got, before) {
		t.Fatalf("queues after the crash:\n%v\nwant the table's:\n%v", got, before)
	}
	if err := idx.Dispatch(f.all); err != nil {
		t.Fatal(err)
	}
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after the replay")
	}
}

// Retention moves a queue's start at once, and removes its files below it
// only once the table has the new start (the next checkpoint): a crash in
// between finds the files the table's start needs. Files below the start
// that a crash left after the edit are removed at the next open.
func TestRetentionRemovesFilesAfterTheTableHasTheStart(t *testing.T) {
	f := newFakeLog()
	o := testOpts(t.TempDir(), f)
	idx := mustOpen(t, o)
	fill(t, idx, f, 200)
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	cqFiles := func() []string {
		files, _ := filepath.Glob(filepath.Join(o.Dir, "cq", "*", "*.cq"))
		return files
	}
	all := cqFiles()
	start := f.all[150].Pos
	idx.DropBefore(start)
	if n := len(cqFiles()); n != len(all) {
		t.Fatalf("%d of %d queue files left before the table has the new starts", n, len(all))
	}
	wantBefore := answers(t, idx)
	crash(idx)

	idx = mustOpen(t, o)
	idx.DropBefore(start) // as the store does at open
	if got := answers(t, idx); !reflect.DeepEqual(got, wantBefore) {
		t.Fatal("answers differ after a crash before the files went")
	}
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	left := cqFiles()
	if len(left) >= len(all) {
		t.Fatalf("%d of %d queue files left after the checkpoint", len(left), len(all))
	}
	// A crash between the edit and the removal: the files are back.
	for _, p := range all {
		if !slices.Contains(left, p) {
			if err := os.WriteFile(p, make([]byte, 64), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	crash(idx)
	idx = mustOpen(t, o)
	defer idx.Close()
	if got := cqFiles(); !reflect.DeepEqual(got, left) {
		t.Fatalf("queue files after the open: %d, want %d", len(got), len(left))
	}
	if got := answers(t, idx); !reflect.DeepEqual(got, wantBefore) {
		t.Fatal("answers differ after the open removed the files")
	}
}

// A deleted topic leaves the table before its files go: an open after the
// deletion does not find its queues.
func TestDeletedTopicLeavesTheTable(t *testing.T) {
	f := newFakeLog()
	o := testOpts(t.TempDir(), f)
	idx := mustOpen(t, o)
	fill(t, idx, f, 60)
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	idx.mu.Lock()
	err := idx.dropTopic("t1")
	idx.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	crash(idx) // no checkpoint after the deletion
	states, err := readAllTable(fsutil.OS, o.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := states["t1"]; ok || len(states["t0"]) == 0 {
		t.Fatalf("table after deleting t1: %v", states)
	}
}

// A torn last record (an append cut by a crash, never synced) ends the
// table; the open cuts it and appends after what is whole. A table that
// cannot be read at all means a rebuild from the log.
func TestTornAndBadTables(t *testing.T) {
	f := newFakeLog()
	o := testOpts(t.TempDir(), f)
	idx := mustOpen(t, o)
	fill(t, idx, f, 80)
	want := answers(t, idx)
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(o.Dir, tableName)
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A record whose length says more than is there, and one whose
	// checksum is wrong.
	for _, tail := range [][]byte{{200, 0, 0, 0, 1, 2, 3, 4, tableStates, 9}, append(frame([]byte{tableDropTopic, 2, 0, 't', '0'})[:8:8], tableDropTopic, 2, 0, 't', '1')} {
		if err := os.WriteFile(path, append(append([]byte(nil), whole...), tail...), 0o644); err != nil {
			t.Fatal(err)
		}
		idx = mustOpen(t, o)
		if got := answers(t, idx); !reflect.DeepEqual(got, want) {
			t.Fatal("answers differ after a torn table")
		}
		if err := idx.Close(); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(path); len(b) < len(whole) || !reflect.DeepEqual(b[:len(whole)], whole) {
			t.Fatal("the whole records of the table were lost")
		}
		if _, err := readAllTable(fsutil.OS, o.Dir); err != nil {
			t.Fatal(err)
		}
		whole, _ = os.ReadFile(path)
	}
	if err := os.WriteFile(path, []byte("not a table"), 0o644); err != nil {
		t.Fatal(err)
	}
	idx = mustOpen(t, o)
	defer idx.Close()
	if idx.ResumeFrom() >= 0 {
		t.Fatalf("ResumeFrom %d with an unreadable table: want a rebuild", idx.ResumeFrom())
	}
	if err := idx.Dispatch(f.all); err != nil {
		t.Fatal(err)
	}
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after the rebuild")
	}
}

// The table is rewritten once it has grown to three times a full one:
// its size stays bounded by the number of queues, not by the checkpoints.
func TestTableStaysBounded(t *testing.T) {
	f := newFakeLog()
	o := testOpts(t.TempDir(), f)
	idx := mustOpen(t, o)
	defer idx.Close()
	idx.table.slack = 0
	for i := 0; i < 40; i++ {
		fill(t, idx, f, 7)
		if err := idx.Checkpoint(); err != nil {
			t.Fatal(err)
		}
		if tb := idx.table; tb.size > 3*tb.full {
			t.Fatalf("checkpoint %d: the table has %d bytes, a full one %d", i, tb.size, tb.full)
		}
	}
	if idx.table.rewrites < 5 {
		t.Fatalf("%d rewrites in 40 checkpoints of every queue", idx.table.rewrites)
	}
}

// FuzzQueueTable: any sequence of records (each framed with a valid
// checksum) either loads or is refused as corrupt; nothing panics.
func FuzzQueueTable(f *testing.F) {
	f.Add([]byte{tableStates}, []byte{tableDropTopic, 1, 0, 'x'})
	f.Add(appendState([]byte{tableStates}, "t", 3, qstate{low: 0, min: 4, max: 9, lastStore: 7, tailPos: 100}), []byte{tableStates})
	f.Add([]byte{9}, []byte{})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		dir := t.TempDir()
		file := []byte(tableMagic)
		for _, p := range [][]byte{a, b} {
			if len(p) > 0 {
				file = append(file, frame(p)...)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, tableName), file, 0o644); err != nil {
			t.Fatal(err)
		}
		states, err := readAllTable(fsutil.OS, dir)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("not a corruption error: %v", err)
			}
			return
		}
		for topic, m := range states {
			for id, s := range m {
				if s.max < s.min || s.low > s.min {
					t.Fatalf("%s/%d loaded with bounds %+v", topic, id, s)
				}
			}
		}
	})
}

// readAllTable is for tests: the states a table file holds.
func readAllTable(fs fsutil.FS, dir string) (map[string]map[uint32]qstate, error) {
	t, states, err := loadTable(fs, dir)
	if err != nil {
		return nil, err
	}
	t.close()
	return states, nil
}
