package index

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/quivermq/quiver/internal/fsutil"
	qlog "github.com/quivermq/quiver/log"
)

// With far more queue files than MaxOpenFiles, the index keeps at most that
// many open, and answers as with all of them open: while dispatching,
// reading, after a checkpoint and a reopen (which opens none up front).
func TestManyQueuesWithFewOpenFiles(t *testing.T) {
	dir := t.TempDir()
	f := newFakeLog()
	o := testOpts(dir, f)
	o.MaxOpenFiles = 16
	idx := mustOpen(t, o)
	check := func(when string) {
		t.Helper()
		if n := idx.Files().Open; n > o.MaxOpenFiles {
			t.Fatalf("%s: %d files open, limit %d", when, n, o.MaxOpenFiles)
		}
	}
	// 150 queues; 30 of them roll over several files (16 entries each).
	// Checkpoints write the entries out (Dispatch keeps them in memory)
	// every fifth batch, as the store's do every second.
	var batch []qlog.RecordInfo
	for i, n := 0, 0; i < 150*3+30*40; i++ {
		q := i % 150
		if i >= 150*3 {
			q = i % 30
		}
		batch = append(batch, f.append(fmt.Sprintf("t%d", q/3), uint32(q%3), 1, fmt.Sprintf("k%d", i%40)))
		if len(batch) == 11 {
			if err := idx.Dispatch(batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
			check("dispatching")
			if n++; n%5 == 0 {
				if err := idx.Checkpoint(); err != nil {
					t.Fatal(err)
				}
				check("writing out")
			}
		}
	}
	if err := idx.Dispatch(batch); err != nil {
		t.Fatal(err)
	}
	want := answers(t, idx)
	check("after reading every queue")
	if got := len(idx.Queues()); got != 150 {
		t.Fatalf("%d queues, want 150", got)
	}
	st := idx.Files()
	if st.Opens <= int64(o.MaxOpenFiles) || st.Closes == 0 {
		t.Fatalf("%+v: the files were never closed and reopened", st)
	}
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}
	idx = mustOpen(t, o)
	defer idx.Close()
	check("after reopening")
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after reopening with few open files")
	}
	check("after reading every queue again")
}

// A file in use is not closed under its reader, even when the cache is
// over its limit; it closes once given back.
func TestFileCacheKeepsFilesInUse(t *testing.T) {
	dir := t.TempDir()
	c := newFileCache(fsutil.OS, 2)
	var held []*cachedFile
	for i := 0; i < 4; i++ {
		cf, err := c.get(fmt.Sprintf("%s/f%d", dir, i), osCreate)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, cf)
	}
	if c.open() != 4 {
		t.Fatalf("%d open with 4 in use", c.open())
	}
	for _, cf := range held {
		if _, err := cf.f.WriteAt([]byte("x"), 0); err != nil {
			t.Fatalf("a file in use was closed: %v", err)
		}
		c.put(cf)
	}
	if c.open() != 2 {
		t.Fatalf("%d open once given back, limit 2", c.open())
	}
	c.forget(held[3].path)
	if c.open() != 1 {
		t.Fatalf("%d open after forgetting one", c.open())
	}
	c.closeAll()
}
