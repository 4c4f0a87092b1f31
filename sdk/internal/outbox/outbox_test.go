package outbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/quivermq/quiver/sdk/wire"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testProduce returns a produce request whose every field depends on i, so
// that a mix-up between entries or fields shows.
func testProduce(i int, bodyLen int) *wire.Produce {
	body := make([]byte, bodyLen)
	for j := range body {
		body[j] = byte(i*7 + j)
	}
	p := &wire.Produce{
		Topic:      fmt.Sprintf("orders-%d", i),
		Queue:      int32(i%5) - 1, // AnyQueue included
		Durability: uint8(i % 3),
		Flags:      uint8(i),
		Count:      uint32(i + 1),
		ClientTime: int64(i)*1_000_003 - 5_000_000, // negative ones too
		Key:        []byte(fmt.Sprintf("key-%d", i)),
		Headers:    []byte(fmt.Sprintf("h=%d", i*i)),
		Body:       body,
	}
	if i%2 == 0 {
		p.Tags = []byte(fmt.Sprintf("tag%d", i))
	}
	return p
}

// testRecord is p's record in outbox.dat, built from the documented format
// independently of the implementation: the payload is a Produce as
// protocol 2 encoded it (outboxes written before protocol 3 must stay
// readable).
func testRecord(p *wire.Produce) []byte {
	le := binary.LittleEndian
	payload := le.AppendUint16(nil, uint16(len(p.Topic)))
	payload = append(payload, p.Topic...)
	payload = le.AppendUint32(payload, uint32(p.Queue))
	payload = append(payload, p.Durability, p.Flags)
	payload = le.AppendUint32(payload, p.Count)
	payload = le.AppendUint64(payload, uint64(p.ClientTime))
	payload = append(le.AppendUint16(payload, uint16(len(p.Key))), p.Key...)
	payload = append(le.AppendUint16(payload, uint16(len(p.Tags))), p.Tags...)
	payload = append(le.AppendUint32(payload, uint32(len(p.Headers))), p.Headers...)
	payload = append(le.AppendUint32(payload, uint32(len(p.Body))), p.Body...)
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(payload)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli)))
	return append(b, payload...)
}

// recordsSize is the bytes of ps's records in outbox.dat.
func recordsSize(ps ...*wire.Produce) int64 {
	var n int64
	for _, p := range ps {
		n += int64(len(testRecord(p)))
	}
	return n
}

func testAckedFile(off int64) []byte {
	b := append([]byte("QOB1"), binary.LittleEndian.AppendUint64(nil, uint64(off))...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}

func checkProduce(t *testing.T, what string, got, want *wire.Produce) {
	t.Helper()
	switch {
	case got.Topic != want.Topic, got.Queue != want.Queue, got.Durability != want.Durability,
		got.Flags != want.Flags, got.Count != want.Count, got.ClientTime != want.ClientTime,
		!bytes.Equal(got.Key, want.Key), !bytes.Equal(got.Tags, want.Tags),
		!bytes.Equal(got.Headers, want.Headers), !bytes.Equal(got.Body, want.Body):
		t.Fatalf("%s: got %+v, want %+v", what, got, want)
	}
}

func mustOpen(t *testing.T, dir string, maxBytes int64) *Outbox {
	t.Helper()
	o, err := Open(dir, maxBytes)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func mustAdd(t *testing.T, o *Outbox, p *wire.Produce) {
	t.Helper()
	if err := o.Add(p); err != nil {
		t.Fatalf("add %s: %v", p.Topic, err)
	}
}

// drain peeks and acks until the outbox is empty, checking that ids
// increase by one, and returns the entries in order.
func drain(t *testing.T, o *Outbox) []*wire.Produce {
	t.Helper()
	var got []*wire.Produce
	var last uint64
	for {
		id, p, ok, err := o.Peek()
		if err != nil {
			t.Fatalf("peek after %d entries: %v", len(got), err)
		}
		if !ok {
			break
		}
		if len(got) > 0 && id != last+1 {
			t.Fatalf("id %d after %d", id, last)
		}
		last = id
		if err := o.Ack(id); err != nil {
			t.Fatalf("ack %d: %v", id, err)
		}
		got = append(got, p)
	}
	if n, b := o.Pending(); n != 0 || b != 0 {
		t.Fatalf("drained, but pending() = %d, %d", n, b)
	}
	return got
}

func checkEntries(t *testing.T, got, want []*wire.Produce) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i := range got {
		checkProduce(t, fmt.Sprintf("entry %d", i), got[i], want[i])
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// snapshotOutbox copies dir's outbox files into a new dir: the state a
// crash (or a backup) at this moment would leave.
func snapshotOutbox(t *testing.T, dir string) string {
	t.Helper()
	snap := t.TempDir()
	for _, name := range []string{dataFile, ackedFile} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(snap, name), b)
	}
	return snap
}

func TestFIFORoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "outbox")
	o := mustOpen(t, dir, 0)
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir: %v, %v; want mode 0700", st.Mode(), err)
	}
	if o.max != 1<<30 {
		t.Fatalf("default limit %d, want 1 GiB", o.max)
	}
	if _, _, ok, err := o.Peek(); ok || err != nil {
		t.Fatalf("peek of an empty outbox: ok=%v err=%v", ok, err)
	}
	var want []*wire.Produce
	var bytesWant int64
	for i := range 50 {
		p := testProduce(i, 1+i*37%300)
		mustAdd(t, o, p)
		want = append(want, p)
		bytesWant += int64(len(testRecord(p)))
	}
	if n, b := o.Pending(); n != 50 || b != bytesWant {
		t.Fatalf("pending() = %d, %d; want 50, %d", n, b, bytesWant)
	}
	if got := readFile(t, filepath.Join(dir, dataFile)); int64(len(got)) != bytesWant ||
		!bytes.Equal(got[:len(testRecord(want[0]))], testRecord(want[0])) {
		t.Fatalf("data file does not hold the documented records (%d bytes, want %d)", len(got), bytesWant)
	}

	// peek does not consume, and what it returns belongs to the caller.
	id1, p1, ok, err := o.Peek()
	if !ok || err != nil {
		t.Fatalf("peek: ok=%v err=%v", ok, err)
	}
	p1.Body[0] ^= 0xff
	p1.Key[0] ^= 0xff
	id2, p2, _, _ := o.Peek()
	if id1 != id2 {
		t.Fatalf("peek twice: ids %d, %d", id1, id2)
	}
	checkProduce(t, "second peek", p2, want[0])

	var kept []*wire.Produce
	var last uint64
	for i := range want {
		id, p, ok, err := o.Peek()
		if !ok || err != nil {
			t.Fatalf("peek %d: ok=%v err=%v", i, ok, err)
		}
		if i > 0 && id != last+1 {
			t.Fatalf("entry %d: id %d after %d", i, id, last)
		}
		last = id
		checkProduce(t, fmt.Sprintf("entry %d", i), p, want[i])
		if err := o.Ack(id + 1); err == nil {
			t.Fatalf("ack of %d while %d is the oldest succeeded", id+1, id)
		}
		if err := o.Ack(id); err != nil {
			t.Fatal(err)
		}
		if err := o.Ack(id); err == nil {
			t.Fatalf("second ack of %d succeeded", id)
		}
		if n, _ := o.Pending(); n != len(want)-i-1 {
			t.Fatalf("after %d acks pending %d", i+1, n)
		}
		kept = append(kept, p)
		mustAdd(t, o, testProduce(1000+i, 10)) // reuses add's buffer
		want = append(want, testProduce(1000+i, 10))
	}
	// Entries kept by the caller are untouched by later adds, peeks and acks.
	checkEntries(t, kept, want[:50])
	checkEntries(t, drain(t, o), want[50:])
	if err := o.Ack(last + 100); err == nil {
		t.Fatal("ack on an empty outbox succeeded")
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	o := mustOpen(t, dir, 0)
	var want []*wire.Produce
	for i := range 10 {
		want = append(want, testProduce(i, 100))
		mustAdd(t, o, want[i])
	}
	for range 4 {
		id, _, _, _ := o.Peek()
		if err := o.Ack(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := o.Add(want[0]); !errors.Is(err, ErrClosed) {
		t.Fatalf("add after close: %v, want ErrClosed", err)
	}
	if _, _, _, err := o.Peek(); !errors.Is(err, ErrClosed) {
		t.Fatalf("peek after close: %v, want ErrClosed", err)
	}
	if err := o.Ack(5); !errors.Is(err, ErrClosed) {
		t.Fatalf("ack after close: %v, want ErrClosed", err)
	}

	o = mustOpen(t, dir, 0)
	if n, _ := o.Pending(); n != 6 {
		t.Fatalf("reopened with %d pending, want 6", n)
	}
	if r := o.RecoveredBytes(); r != 0 {
		t.Fatalf("clean reopen cut %d bytes", r)
	}
	// Half acked, then reopened again: acks before a reopen stick.
	for range 3 {
		id, _, _, _ := o.Peek()
		if err := o.Ack(id); err != nil {
			t.Fatal(err)
		}
	}
	o.Close()
	o = mustOpen(t, dir, 0)
	checkEntries(t, drain(t, o), want[7:])
	o.Close()
	o = mustOpen(t, dir, 0)
	if n, b := o.Pending(); n != 0 || b != 0 {
		t.Fatalf("all acked, reopened with %d pending (%d bytes)", n, b)
	}
}

// Every byte offset inside the last record, as a crash mid-write leaves
// it: the entries before it survive, the torn tail is cut, and the outbox
// goes on working.
func TestTornTail(t *testing.T) {
	src := t.TempDir()
	o := mustOpen(t, src, 0)
	var want []*wire.Produce
	for i := range 5 {
		want = append(want, testProduce(i, 40+i))
		mustAdd(t, o, want[i])
	}
	for range 2 { // recovery starts after the acked prefix
		id, _, _, _ := o.Peek()
		o.Ack(id)
	}
	o.Close()
	dat := readFile(t, filepath.Join(src, dataFile))
	acked := readFile(t, filepath.Join(src, ackedFile))
	start := len(dat) - len(testRecord(want[4]))
	next := testProduce(99, 5)

	check := func(t *testing.T, torn []byte, cut int64) {
		t.Helper()
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, dataFile), torn)
		writeFile(t, filepath.Join(dir, ackedFile), acked)
		o, err := Open(dir, 0)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		defer o.Close()
		if r := o.RecoveredBytes(); r != cut {
			t.Fatalf("recovered %d bytes, want %d", r, cut)
		}
		if n, _ := o.Pending(); n != 2 {
			t.Fatalf("%d pending, want 2", n)
		}
		if got := fileSize(t, filepath.Join(dir, dataFile)); got != int64(start) {
			t.Fatalf("data file %d bytes after recovery, want %d", got, start)
		}
		mustAdd(t, o, next)
		o.Close()
		o = mustOpen(t, dir, 0)
		if r := o.RecoveredBytes(); r != 0 {
			t.Fatalf("second reopen cut %d bytes", r)
		}
		checkEntries(t, drain(t, o), []*wire.Produce{want[2], want[3], next})
	}
	for cut := start; cut < len(dat); cut++ {
		t.Run(fmt.Sprintf("truncated at %d", cut), func(t *testing.T) { check(t, dat[:cut], int64(cut-start)) })
	}
	t.Run("zeros past the end", func(t *testing.T) {
		// The size reached the disk, the data did not.
		torn := append(bytes.Clone(dat[:start]), make([]byte, len(dat)-start)...)
		check(t, torn, int64(len(dat)-start))
	})
	t.Run("bad checksum of the last record", func(t *testing.T) {
		torn := bytes.Clone(dat)
		torn[len(torn)-3] ^= 0x55
		check(t, torn, int64(len(dat)-start))
	})
	t.Run("length past the end", func(t *testing.T) {
		torn := binary.LittleEndian.AppendUint32(bytes.Clone(dat[:start]), 1<<20)
		torn = append(torn, "0123456789abcdef"...)
		check(t, torn, int64(len(torn)-start))
	})
}

// Snapshots of the files after every step, compactions and emptyings
// included, open to exactly the entries pending at that step.
func TestCrashSnapshots(t *testing.T) {
	dir := t.TempDir()
	o := mustOpen(t, dir, 0)
	var model []*wire.Produce
	type snap struct {
		dir  string
		want []*wire.Produce
	}
	var snaps []snap
	take := func() { snaps = append(snaps, snap{snapshotOutbox(t, dir), append([]*wire.Produce(nil), model...)}) }
	ackN := func(k int) {
		for range k {
			id, p, ok, err := o.Peek()
			if !ok || err != nil {
				t.Fatalf("peek: %v %v", ok, err)
			}
			checkProduce(t, "peek", p, model[0])
			if err := o.Ack(id); err != nil {
				t.Fatal(err)
			}
			model = model[1:]
			take()
		}
	}
	add := func(k, bodyLen int) {
		for range k {
			p := testProduce(len(snaps), bodyLen)
			mustAdd(t, o, p)
			model = append(model, p)
			take()
		}
	}
	take()
	add(3, 10)
	ackN(3) // emptied: truncated
	add(30, 70<<10)
	ackN(16) // compacted: over 1 MiB and half the file acked
	if got, want := fileSize(t, filepath.Join(dir, dataFile)), recordsSize(model...); got != want {
		t.Fatalf("after 16 of 30 acked: %d bytes, want %d (compacted)", got, want)
	}
	ackN(2)
	add(2, 10)
	ackN(14) // emptied again
	add(1, 10)
	o.Close()
	for i, s := range snaps {
		o, err := Open(s.dir, 0)
		if err != nil {
			t.Fatalf("snapshot %d: %v", i, err)
		}
		checkEntries(t, drain(t, o), s.want)
		o.Close()
	}
}

// The states a crash inside a reclaim leaves, which no snapshot between
// steps shows: the data file already replaced (or emptied), outbox.acked
// not yet reset.
func TestCrashInReclaim(t *testing.T) {
	var want []*wire.Produce
	var tail []byte
	for i := range 3 {
		want = append(want, testProduce(i, 50))
		tail = append(tail, testRecord(want[i])...)
	}
	stale := int64(len(tail) + 100) // the prefix the compaction dropped was longer

	for _, c := range []struct {
		name  string
		dat   []byte
		acked int64
		want  []*wire.Produce
	}{
		{"compacted", tail, stale, want},
		{"emptied", nil, 321, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, dataFile), c.dat)
			writeFile(t, filepath.Join(dir, ackedFile), testAckedFile(c.acked))
			// An unfinished compaction's temp file is ignored.
			writeFile(t, filepath.Join(dir, dataFile+tmpSuffix), []byte("half a copy"))
			o := mustOpen(t, dir, 0)
			if n, _ := o.Pending(); n != len(c.want) {
				t.Fatalf("%d pending, want %d", n, len(c.want))
			}
			if _, err := os.Stat(filepath.Join(dir, dataFile+tmpSuffix)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("temp file left: %v", err)
			}
			// Grow the file past the stale offset: a reopen must not apply it.
			more := append([]*wire.Produce(nil), c.want...)
			for i := range 10 {
				p := testProduce(100+i, 60)
				mustAdd(t, o, p)
				more = append(more, p)
			}
			o.Close()
			o = mustOpen(t, dir, 0)
			checkEntries(t, drain(t, o), more)
		})
	}
}

// A damaged byte anywhere in a record that has records after it is an
// error naming the file and the record's offset, and the file is left as
// it was. Damage in the acked prefix does not matter.
func TestCorruptMiddle(t *testing.T) {
	src := t.TempDir()
	o := mustOpen(t, src, 0)
	var want []*wire.Produce
	var starts []int
	off := 0
	for i := range 5 {
		want = append(want, testProduce(i, 30))
		mustAdd(t, o, want[i])
		starts = append(starts, off)
		off += len(testRecord(want[i]))
	}
	id, _, _, _ := o.Peek()
	o.Ack(id)
	o.Close()
	dat := readFile(t, filepath.Join(src, dataFile))
	acked := readFile(t, filepath.Join(src, ackedFile))

	for i := starts[2]; i < starts[3]; i++ {
		bad := bytes.Clone(dat)
		bad[i] ^= 0xff
		dir := t.TempDir()
		path := filepath.Join(dir, dataFile)
		writeFile(t, path, bad)
		writeFile(t, filepath.Join(dir, ackedFile), acked)
		o, err := Open(dir, 0)
		if err == nil {
			o.Close()
			t.Fatalf("byte %d of the middle record damaged: opened", i-starts[2])
		}
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) ||
			!strings.Contains(err.Error(), fmt.Sprintf("offset %d:", starts[2])) {
			t.Fatalf("byte %d damaged: %v; want ErrCorrupt naming %s and offset %d", i-starts[2], err, path, starts[2])
		}
		if !bytes.Equal(readFile(t, path), bad) {
			t.Fatalf("byte %d damaged: the failed open changed the data file", i-starts[2])
		}
	}

	t.Run("in the acked prefix", func(t *testing.T) {
		bad := bytes.Clone(dat)
		bad[starts[0]+10] ^= 0xff
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, dataFile), bad)
		writeFile(t, filepath.Join(dir, ackedFile), acked)
		checkEntries(t, drain(t, mustOpen(t, dir, 0)), want[1:])
	})
	t.Run("acked file", func(t *testing.T) {
		bad := bytes.Clone(acked)
		bad[5] ^= 1
		dir := t.TempDir()
		path := filepath.Join(dir, ackedFile)
		writeFile(t, filepath.Join(dir, dataFile), dat)
		writeFile(t, path, bad)
		if _, err := Open(dir, 0); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
			t.Fatalf("damaged %s: %v, want ErrCorrupt naming it", path, err)
		}
	})
	t.Run("bad checksum, then bytes that are no record", func(t *testing.T) {
		// Not a torn write either: that is the last record, nothing after it.
		bad := bytes.Clone(dat[:starts[3]])
		bad[starts[2]+12] ^= 0xff
		bad = append(bad, "not a record"...)
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, dataFile), bad)
		if _, err := Open(dir, 0); !errors.Is(err, ErrCorrupt) ||
			!strings.Contains(err.Error(), fmt.Sprintf("offset %d:", starts[2])) {
			t.Fatalf("open: %v, want ErrCorrupt at offset %d", err, starts[2])
		}
	})
	t.Run("more damage than one record", func(t *testing.T) {
		dir := t.TempDir()
		f, err := os.Create(filepath.Join(dir, dataFile))
		if err != nil {
			t.Fatal(err)
		}
		// A zero header followed by more than a record's worth of bytes
		// (sparse: no disk space used).
		err = f.Truncate(headerLen + maxPayload + 1)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Open(dir, 0); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("open: %v, want ErrCorrupt", err)
		}
	})
}

func TestFull(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, dataFile)
	entry := func(i int) *wire.Produce { // all of one size, for i < 10
		p := testProduce(i, 100)
		p.Tags, p.Headers = []byte("tags"), []byte("headers")
		return p
	}
	rec := recordsSize(entry(0))
	o := mustOpen(t, dir, 3*rec)
	for i := range 3 {
		mustAdd(t, o, entry(i))
	}
	err := o.Add(entry(3))
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), dir) ||
		!strings.Contains(err.Error(), strconv.FormatInt(3*rec, 10)) {
		t.Fatalf("add past the limit: %v; want ErrFull naming %s and the limit %d", err, dir, 3*rec)
	}
	if n, b := o.Pending(); n != 3 || b != 3*rec || fileSize(t, path) != 3*rec {
		t.Fatalf("after a refused add: pending %d, %d; file %d bytes", n, b, fileSize(t, path))
	}
	if err := o.Add(testProduce(4, 0)); !errors.Is(err, ErrFull) {
		t.Fatalf("a smaller entry still over the limit: %v", err)
	}

	// Invalid entries are refused without writing: they could never be read back.
	for _, p := range []*wire.Produce{
		{Topic: ""},
		{Topic: "t", Queue: -2},
		{Topic: "t", Key: make([]byte, wire.MaxKeyLen+1)},
		{Topic: "t", Key: make([]byte, 1<<16+3)}, // wraps its u16 length prefix
	} {
		if err := o.Add(p); err == nil || errors.Is(err, ErrFull) {
			t.Fatalf("invalid entry (topic %q, key %d bytes): %v", p.Topic, len(p.Key), err)
		}
	}
	if fileSize(t, path) != 3*rec {
		t.Fatal("a refused entry was written")
	}

	id, _, _, _ := o.Peek()
	if err := o.Ack(id); err != nil {
		t.Fatal(err)
	}
	mustAdd(t, o, entry(3))
	if err := o.Add(entry(4)); !errors.Is(err, ErrFull) {
		t.Fatalf("full again: %v", err)
	}

	small := mustOpen(t, t.TempDir(), 10)
	if err := small.Add(testProduce(0, 0)); !errors.Is(err, ErrFull) {
		t.Fatalf("entry larger than the whole limit: %v", err)
	}
}

func TestReclaim(t *testing.T) {
	t.Run("truncated when empty", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, dataFile)
		o := mustOpen(t, dir, 0)
		total := recordsSize(testProduce(0, 20), testProduce(1, 20), testProduce(2, 20))
		for i := range 3 {
			mustAdd(t, o, testProduce(i, 20))
		}
		for i := range 3 {
			if got := fileSize(t, path); got != total {
				t.Fatalf("before ack %d: %d bytes, want %d", i+1, got, total)
			}
			id, _, _, _ := o.Peek()
			if err := o.Ack(id); err != nil {
				t.Fatal(err)
			}
		}
		if got := fileSize(t, path); got != 0 {
			t.Fatalf("all acked: data file %d bytes, want 0", got)
		}
		if got := readFile(t, filepath.Join(dir, ackedFile)); !bytes.Equal(got, testAckedFile(0)) {
			t.Fatalf("all acked: outbox.acked %x, want offset 0", got)
		}
		mustAdd(t, o, testProduce(7, 20))
		if got, want := fileSize(t, path), recordsSize(testProduce(7, 20)); got != want {
			t.Fatalf("one added after emptying: %d bytes, want %d", got, want)
		}
		o.Close()
		checkEntries(t, drain(t, mustOpen(t, dir, 0)), []*wire.Produce{testProduce(7, 20)})
	})

	t.Run("compacted", testCompacted)
}

// testCompacted: 21 of 40 records acked (over 1 MiB and half the
// file) compact the data file to the 19 pending, which peek, ack, add and
// reopen then use.
func testCompacted(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, dataFile)
	o := mustOpen(t, dir, 0)
	var want []*wire.Produce
	for i := range 40 {
		want = append(want, testProduce(i, 64<<10))
		mustAdd(t, o, want[i])
	}
	total := recordsSize(want...)
	// 21 acked records are over 1 MiB and over half of the 40.
	for i := range 21 {
		if got := fileSize(t, path); got != total {
			t.Fatalf("%d acked: %d bytes, want %d (not compacted yet)", i, got, total)
		}
		id, p, _, _ := o.Peek()
		checkProduce(t, "peek", p, want[i])
		if err := o.Ack(id); err != nil {
			t.Fatal(err)
		}
	}
	tail := recordsSize(want[21:]...)
	if n, b := o.Pending(); n != 19 || b != tail || fileSize(t, path) != tail {
		t.Fatalf("21 acked: pending %d, %d bytes; file %d bytes; want 19, %d, %d", n, b, fileSize(t, path), tail, tail)
	}
	if got := readFile(t, filepath.Join(dir, ackedFile)); !bytes.Equal(got, testAckedFile(0)) {
		t.Fatalf("compacted: outbox.acked %x, want offset 0", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Fatalf("files left in %s: %v", dir, ents)
	}
	// The compacted file is the outbox: peek, add and reopen use it.
	id, p, _, _ := o.Peek()
	checkProduce(t, "after compaction", p, want[21])
	if err := o.Ack(id); err != nil {
		t.Fatal(err)
	}
	extra := testProduce(1000, 5)
	mustAdd(t, o, extra)
	o.Close()
	o = mustOpen(t, dir, 0)
	checkEntries(t, drain(t, o), append(want[22:], extra))
	if got := fileSize(t, path); got != 0 {
		t.Fatalf("drained: %d bytes", got)
	}
}

// Windows renames neither an open file nor over one: there the compaction
// closes both files, renames and reopens. The compaction test on that path,
// and on both paths a rename that fails: the old file stays in use.
func TestCompactsWhereOpenFilesCannotBeRenamed(t *testing.T) {
	defer func(v bool) { closeToRename = v }(closeToRename)
	closeToRename = true
	t.Run("compacted", testCompacted)
	t.Run("rename fails", testRenameFails)
	closeToRename = false
	t.Run("rename fails, files open", testRenameFails)
}

func testRenameFails(t *testing.T) {
	dir := t.TempDir()
	o := mustOpen(t, dir, 0)
	var want []*wire.Produce
	for i := range 40 {
		want = append(want, testProduce(i, 64<<10))
		mustAdd(t, o, want[i])
	}
	t.Cleanup(func() { rename = os.Rename })
	rename = func(string, string) error { return errors.New("injected rename failure") }
	for i := range 21 {
		id, p, _, _ := o.Peek()
		checkProduce(t, "peek", p, want[i])
		err := o.Ack(id)
		if i < 20 && err != nil {
			t.Fatalf("ack %d: %v", i, err)
		}
		if i == 20 && (err == nil || !errors.Is(err, ErrNotReclaimed)) {
			t.Fatalf("ack %d with the rename failing: %v, want the compaction's error", i, err)
		}
	}
	// Nothing changed but the acks: the old file, still whole, is read
	// and appended to, and the temp file is gone.
	if got, want := fileSize(t, filepath.Join(dir, dataFile)), recordsSize(want...); got != want {
		t.Fatalf("after the failed compaction: %d bytes, want %d", got, want)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Fatalf("files left in %s: %v", dir, ents)
	}
	id, p, _, err := o.Peek()
	if err != nil {
		t.Fatal(err)
	}
	checkProduce(t, "after the failed compaction", p, want[21])
	extra := testProduce(1000, 5)
	mustAdd(t, o, extra)
	// The rename works again: the next compaction, a MiB of acks after
	// the failed one (16 records: 37 acked in all), goes through.
	rename = os.Rename
	if err := o.Ack(id); err != nil {
		t.Fatal(err)
	}
	for i := 22; i < 37; i++ {
		id, _, _, _ := o.Peek()
		if err := o.Ack(id); err != nil {
			t.Fatalf("ack %d: %v", i, err)
		}
	}
	rest := append(want[37:], extra)
	if got, want := fileSize(t, filepath.Join(dir, dataFile)), recordsSize(rest...); got != want {
		t.Fatalf("after the second compaction: %d bytes, want %d", got, want)
	}
	o.Close()
	checkEntries(t, drain(t, mustOpen(t, dir, 0)), rest)
}

// What a crash left unreclaimed is reclaimed by the next open.
func TestReclaimOnOpen(t *testing.T) {
	var want []*wire.Produce
	var dat []byte
	for i := range 30 {
		want = append(want, testProduce(i, 64<<10))
		dat = append(dat, testRecord(want[i])...)
	}
	for _, c := range []struct {
		name  string
		acked int
		size  int64 // of the data file after open
	}{
		{"all acked", 30, 0},
		{"most acked", 20, recordsSize(want[20:]...)},
		{"little acked", 5, int64(len(dat))},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, dataFile)
			writeFile(t, path, dat)
			writeFile(t, filepath.Join(dir, ackedFile), testAckedFile(recordsSize(want[:c.acked]...)))
			o := mustOpen(t, dir, 0)
			if got := fileSize(t, path); got != c.size {
				t.Fatalf("data file %d bytes after open, want %d", got, c.size)
			}
			o.Close()
			checkEntries(t, drain(t, mustOpen(t, dir, 0)), want[c.acked:])
		})
	}
	t.Run("all acked, small", func(t *testing.T) {
		// Under the compaction minimum: emptied, not compacted.
		dir := t.TempDir()
		path := filepath.Join(dir, dataFile)
		small := append(testRecord(testProduce(0, 5)), testRecord(testProduce(1, 5))...)
		writeFile(t, path, small)
		writeFile(t, filepath.Join(dir, ackedFile), testAckedFile(int64(len(small))))
		o := mustOpen(t, dir, 0)
		if got := fileSize(t, path); got != 0 {
			t.Fatalf("data file %d bytes after open, want 0", got)
		}
		mustAdd(t, o, testProduce(2, 5))
		o.Close()
		checkEntries(t, drain(t, mustOpen(t, dir, 0)), []*wire.Produce{testProduce(2, 5)})
	})
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	o := mustOpen(t, dir, 0)
	o2, err := Open(dir, 0)
	if err == nil {
		o2.Close()
		t.Fatal("second open of the same dir succeeded")
	}
	if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "already open") ||
		!strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second open: %v; want it to name the dir and the holder", err)
	}
	// The refused open left the first one intact.
	mustAdd(t, o, testProduce(1, 1))
	mustOpen(t, t.TempDir(), 0) // another dir is fine
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	o = mustOpen(t, dir, 0)
	checkEntries(t, drain(t, o), []*wire.Produce{testProduce(1, 1)})
}

// Producers add while a consumer drains: each producer's entries come out
// once each, in its order.
func TestConcurrent(t *testing.T) {
	o := mustOpen(t, t.TempDir(), 0)
	const producers, each = 4, 50
	var wg sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, producers)
	for g := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := o.Add(testProduce(g*1000+i, 10)); err != nil {
					errs <- err
					return
				}
				o.Pending()
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	next := make([]int, producers)
	for got := 0; got < producers*each; {
		id, p, ok, err := o.Peek()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			select {
			case <-done:
				if n, _ := o.Pending(); n == 0 {
					close(errs)
					t.Fatalf("producers done, %d of %d entries seen: %v", got, producers*each, <-errs)
				}
			default:
				runtime.Gosched()
			}
			continue
		}
		var g, i int
		if _, err := fmt.Sscanf(p.Topic, "orders-%d", &i); err != nil {
			t.Fatal(err)
		}
		g, i = i/1000, i%1000
		if i != next[g] {
			t.Fatalf("producer %d: entry %d, want %d", g, i, next[g])
		}
		checkProduce(t, p.Topic, p, testProduce(g*1000+i, 10))
		next[g]++
		if err := o.Ack(id); err != nil {
			t.Fatal(err)
		}
		got++
	}
	<-done
	if n, b := o.Pending(); n != 0 || b != 0 {
		t.Fatalf("pending %d, %d at the end", n, b)
	}
}

func FuzzRecover(f *testing.F) {
	var dat []byte
	for i := range 4 {
		dat = append(dat, testRecord(testProduce(i, 3*i))...)
	}
	second := int64(len(testRecord(testProduce(0, 0))))
	f.Add(dat, testAckedFile(second), true)
	f.Add(dat, testAckedFile(second+3), true)
	f.Add(dat[:len(dat)-5], []byte(nil), false)
	f.Add(append(bytes.Clone(dat), 0, 0, 0, 0, 0, 0, 0, 0, 1), testAckedFile(1<<40), true)
	f.Add([]byte{}, []byte("QOB1"), true)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5}, []byte(nil), false)
	// Parsing is under test, not durability (the other tests sync).
	syncFile = func(*os.File) error { return nil }
	f.Cleanup(func() { syncFile = (*os.File).Sync })
	f.Fuzz(func(t *testing.T, dat, acked []byte, withAcked bool) {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, dataFile), dat)
		if withAcked {
			writeFile(t, filepath.Join(dir, ackedFile), acked)
		}
		o, err := Open(dir, 1<<20)
		if err != nil {
			return
		}
		defer o.Close()
		n, size := o.Pending()
		if size > int64(len(dat)) || o.RecoveredBytes() > int64(len(dat)) {
			t.Fatalf("pending %d bytes, recovered %d, of a %d-byte file", size, o.RecoveredBytes(), len(dat))
		}
		var seen int
		var sum int64
		for {
			id, p, ok, err := o.Peek()
			if err != nil {
				t.Fatalf("peek after a successful open: %v", err)
			}
			if !ok {
				break
			}
			// Whatever comes out was written as a whole record.
			rec := testRecord(p)
			if !bytes.Contains(dat, rec) {
				t.Fatalf("entry %d is not a record of the file", id)
			}
			if err := o.Ack(id); err != nil {
				t.Fatalf("ack %d: %v", id, err)
			}
			seen++
			sum += int64(len(rec))
			if seen > n {
				t.Fatalf("more than the %d pending entries", n)
			}
		}
		if seen != n || sum != size {
			t.Fatalf("drained %d entries of %d bytes, pending() said %d of %d", seen, sum, n, size)
		}
		p := testProduce(1, 10)
		mustAdd(t, o, p)
		o.Close()
		o, err = Open(dir, 1<<20)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		checkEntries(t, drain(t, o), []*wire.Produce{p})
		o.Close()
	})
}
