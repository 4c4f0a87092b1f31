package ioengine

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAlignedBuffer(t *testing.T) {
	for _, n := range []int{1, 511, 4096, 4097, 65536, 1 << 20} {
		b := AlignedBuffer(n)
		if !IsAligned(b) || len(b) < n || len(b)-n >= Alignment || cap(b) != len(b) {
			t.Fatalf("AlignedBuffer(%d): len %d cap %d aligned %v", n, len(b), cap(b), IsAligned(b))
		}
	}
	if b := AlignedBuffer(0); b == nil || len(b) != 0 {
		t.Fatal("AlignedBuffer(0) is not an empty slice")
	}
	b := AlignedBuffer(2 * Alignment)
	if IsAligned(b[1:Alignment+1]) || IsAligned(b[:100]) || IsAligned(b[:0]) {
		t.Fatal("IsAligned accepted a misaligned buffer")
	}
}

func TestWriteSyncRead(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEngine(t, backend)
		if e.Name() != backend {
			t.Fatalf("Name %q, want %q", e.Name(), backend)
		}
		name := tempPath(t, "a")
		f := openT(t, e, name)
		if df, ok := f.(*DirectFile); !ok || !df.DirectIO() {
			t.Logf("%s: O_DIRECT not in effect on this filesystem", name)
		}
		want := page(2, 1)
		if n, err := f.WriteAt(want, Alignment); err != nil || n != len(want) {
			t.Fatalf("WriteAt: %d, %v", n, err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(want))
		if n, err := f.ReadAt(got, Alignment); err != nil || n != len(got) {
			t.Fatalf("ReadAt: %d, %v", n, err)
		}
		mustEqual(t, "read back", got, want)
		if size, err := f.Size(); err != nil || size != 3*Alignment {
			t.Fatalf("Size %d, %v", size, err)
		}
		// The hole before the write reads as zeros; reading past the end
		// is io.EOF with the bytes that exist.
		disk := readFile(t, name)
		mustEqual(t, "hole", disk[:Alignment], make([]byte, Alignment))
		if n, err := f.ReadAt(make([]byte, 2*Alignment), 2*Alignment); n != Alignment || err != io.EOF {
			t.Fatalf("ReadAt across EOF: %d, %v; want %d, EOF", n, err, Alignment)
		}
		// Flush of one op, and a direct overwrite is seen by buffered reads.
		over := page(1, 99)
		if err := e.Flush([]WriteOp{{File: f, Buf: over, Off: Alignment}}, true); err != nil {
			t.Fatal(err)
		}
		if _, err := f.ReadAt(got[:Alignment], Alignment); err != nil {
			t.Fatal(err)
		}
		mustEqual(t, "read after overwrite", got[:Alignment], over)
	})
}

// model applies ops to in-memory file images: what the disk must hold.
func model(images map[string][]byte, ops []WriteOp) {
	for _, op := range ops {
		img := images[op.File.Name()]
		if end := int(op.Off) + len(op.Buf); end > len(img) {
			img = append(img, make([]byte, end-len(img))...)
		}
		copy(img[op.Off:], op.Buf)
		images[op.File.Name()] = img
	}
}

// manyOps interleaves n writes over files, rewriting some pages later in the
// same batch, so that both the per-file order and the file routing matter.
func manyOps(files []File, n int) []WriteOp {
	var ops []WriteOp
	for i := 0; i < n; i++ {
		f := files[i%len(files)]
		off := int64(i/len(files)) * Alignment
		if i%5 == 4 {
			off = 0 // rewrites page 0: the last write must win
		}
		ops = append(ops, WriteOp{File: f, Buf: page(1+i%3, byte(i)), Off: off})
	}
	return ops
}

func checkImages(t *testing.T, e Engine, images map[string][]byte) {
	t.Helper()
	for name, want := range images {
		f := openT(t, e, name)
		got := make([]byte, len(want))
		if _, err := f.ReadAt(got, 0); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		mustEqual(t, name, got, want)
		if size, _ := f.Size(); size != int64(len(want)) {
			t.Fatalf("%s: size %d, want %d", name, size, len(want))
		}
	}
}

func TestFlushTwoFilesReopen(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := t.TempDir()
		e := newEngine(t, backend)
		files := []File{openT(t, e, dir+"/a"), openT(t, e, dir+"/b")}
		ops := manyOps(files, 40)
		if err := e.Flush(ops, true); err != nil {
			t.Fatal(err)
		}
		images := map[string][]byte{}
		model(images, ops)
		for _, f := range files {
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		checkImages(t, newEngine(t, backend), images)
	})
}

// A batch needing more SQEs than the ring holds is split over several
// submits and keeps its order. For the portable backend it is just a big
// batch.
func TestFlushLargerThanRing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := t.TempDir()
		e := newRingEngine(t, backend, 8)
		files := []File{openT(t, e, dir+"/a"), openT(t, e, dir+"/b"), openT(t, e, dir+"/c")}
		images := map[string][]byte{}
		for round, n := range []int{100, 7, 8, 9, 1} {
			ops := manyOps(files, n)
			for i := range ops {
				ops[i].Off += int64(round) * 64 * Alignment
			}
			if err := e.Flush(ops, round%2 == 0); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			model(images, ops)
		}
		checkImages(t, e, images)
	})
}

func TestUnalignedRejected(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEngine(t, backend)
		name := tempPath(t, "a")
		f := openT(t, e, name)
		good := page(1, 1)
		big := page(2, 2)
		cases := map[string]WriteOp{
			"offset":   {File: f, Buf: good, Off: 512},
			"length":   {File: f, Buf: good[:1000], Off: 0},
			"address":  {File: f, Buf: big[512 : 512+Alignment], Off: 0},
			"empty":    {File: f, Buf: good[:0], Off: 0},
			"negative": {File: f, Buf: good, Off: -Alignment},
		}
		for what, bad := range cases {
			err := e.Flush([]WriteOp{{File: f, Buf: good, Off: 0}, bad}, true)
			mustIs(t, "Flush with unaligned "+what, err, ErrUnaligned)
			_, err = f.WriteAt(bad.Buf, bad.Off)
			mustIs(t, "WriteAt with unaligned "+what, err, ErrUnaligned)
			if size, _ := f.Size(); size != 0 {
				t.Fatalf("unaligned %s: %d bytes written, want none", what, size)
			}
		}
	})
}

func TestAllocateSize(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		f := openT(t, newEngine(t, backend), tempPath(t, "a"))
		if err := f.Allocate(1 << 20); err != nil {
			t.Fatal(err)
		}
		if size, err := f.Size(); err != nil || size != 1<<20 {
			t.Fatalf("Size after Allocate: %d, %v", size, err)
		}
		// Allocating less never shrinks.
		if err := f.Allocate(Alignment); err != nil {
			t.Fatal(err)
		}
		if size, _ := f.Size(); size != 1<<20 {
			t.Fatalf("Size after smaller Allocate: %d", size)
		}
		got := make([]byte, Alignment)
		if _, err := f.ReadAt(got, 1<<19); err != nil {
			t.Fatal(err)
		}
		mustEqual(t, "allocated range", got, make([]byte, Alignment))
	})
}

func TestTruncate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEngine(t, backend)
		f := openT(t, e, tempPath(t, "a"))
		data := page(3, 5)
		if err := e.Flush([]WriteOp{{File: f, Buf: data, Off: 0}}, true); err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(Alignment); err != nil {
			t.Fatal(err)
		}
		if size, _ := f.Size(); size != Alignment {
			t.Fatalf("Size after Truncate: %d", size)
		}
		got := make([]byte, 2*Alignment)
		n, err := f.ReadAt(got, 0)
		if n != Alignment || err != io.EOF {
			t.Fatalf("ReadAt after Truncate: %d, %v", n, err)
		}
		mustEqual(t, "kept page", got[:n], data[:Alignment])
		if err := f.Truncate(4 * Alignment); err != nil { // grows with zeros
			t.Fatal(err)
		}
		if _, err := f.ReadAt(got, Alignment); err != nil {
			t.Fatal(err)
		}
		mustEqual(t, "grown range", got, make([]byte, 2*Alignment))
	})
}

func TestClosed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e, err := New(backend, quiet)
		if err != nil {
			t.Fatal(err)
		}
		name := tempPath(t, "a")
		f, err := e.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		data := page(1, 3)
		if err := e.Flush([]WriteOp{{File: f, Buf: data, Off: 0}}, true); err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		mustIs(t, "Flush after Close", e.Flush([]WriteOp{{File: f, Buf: data, Off: 0}}, true), ErrClosed)
		_, err = e.Open(name)
		mustIs(t, "Open after Close", err, ErrClosed)
		mustIs(t, "second Close", e.Close(), ErrClosed)

		// Files outlive their engine until closed themselves.
		got := make([]byte, Alignment)
		if _, err := f.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		mustEqual(t, "read after engine Close", got, data)
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		_, err = f.ReadAt(got, 0)
		mustIs(t, "ReadAt after Close", err, ErrClosed)
		_, err = f.WriteAt(data, 0)
		mustIs(t, "WriteAt after Close", err, ErrClosed)
		mustIs(t, "Sync after Close", f.Sync(), ErrClosed)
		_, err = f.Size()
		mustIs(t, "Size after Close", err, ErrClosed)
		mustIs(t, "Allocate after Close", f.Allocate(Alignment), ErrClosed)
		mustIs(t, "Truncate after Close", f.Truncate(0), ErrClosed)
		mustIs(t, "second file Close", f.Close(), ErrClosed)

		// A live engine refuses a closed file, writing nothing.
		e2 := newEngine(t, backend)
		mustIs(t, "Flush of a closed file", e2.Flush([]WriteOp{{File: f, Buf: page(1, 9), Off: 0}}, true), ErrClosed)
		mustEqual(t, "file after refused flush", readFile(t, name), data)
	})
}

// badFile writes on its read-only descriptor, so every write fails with
// EBADF: a real error from the kernel in the middle of a batch.
type badFile struct{ *DirectFile }

func (b badFile) Fd() int { return b.rfd }

// The first real error is reported, with the file and offset, not the
// -ECANCELED of the operations linked after it; other files still get
// written.
func TestFlushFirstRealError(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEngine(t, backend)
		good := openT(t, e, tempPath(t, "good"))
		df := openT(t, e, tempPath(t, "bad")).(*DirectFile)
		bad := badFile{df}
		ops := []WriteOp{
			{File: bad, Buf: page(1, 1), Off: 3 * Alignment},
			{File: bad, Buf: page(1, 2), Off: 4 * Alignment},
			{File: good, Buf: page(1, 3), Off: 0},
		}
		err := e.Flush(ops, true)
		mustIs(t, "Flush with a failing write", err, unix.EBADF)
		if errors.Is(err, unix.ECANCELED) {
			t.Fatalf("reported the cancellation, not the cause: %v", err)
		}
		if want := fmt.Sprintf("%s at offset %d", df.Name(), 3*Alignment); !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not name %q", err, want)
		}
		// The engine stays usable.
		if err := e.Flush([]WriteOp{{File: good, Buf: page(1, 4), Off: Alignment}}, true); err != nil {
			t.Fatal(err)
		}
	})
}
