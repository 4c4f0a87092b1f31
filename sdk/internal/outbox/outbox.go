package outbox

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/quivermq/quiver/internal/fsutil"
	"github.com/quivermq/quiver/sdk/wire"
)

const (
	dataFile     = "outbox.dat"
	ackedFile    = "outbox.acked"
	lockFileName = "outbox.lock"
	// rejectedFile holds entries a broker refused for good (same
	// record format), appended and never read back by the SDK.
	rejectedFile = "outbox.rejected"
	tmpSuffix    = ".tmp"

	headerLen  = 8                 // u32 length, u32 crc
	maxPayload = wire.MaxFrameSize // a longer record is corrupt: no send can be that big
	defaultMax = 1 << 30
	// compactMin keeps small outboxes from being rewritten on every
	// ack: a compaction copies the whole pending tail.
	compactMin = 1 << 20

	ackedMagic = "QOB1"
	ackedLen   = 16
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// syncFile is every fsync the outbox does. FuzzRecover replaces it:
// what it tests is recovery's parsing, and fsyncs would slow it a hundredfold.
var syncFile = (*os.File).Sync

// fsys is the file system of the outbox's checkpoints, with syncFile.
var fsys = fsutil.WithSync(fsutil.OS, func(f fsutil.File) error { return syncFile(f.(*os.File)) })

var (
	// ErrFull is returned when an entry does not fit in the outbox's
	// byte limit. Nothing was written: the send is lost unless the caller
	// keeps it.
	ErrFull = errors.New("quiver: outbox full")
	// ErrCorrupt is returned when the outbox's files hold damage that
	// a crash cannot explain. The error names the file and offset; the
	// files are left as they are, for inspection or repair.
	ErrCorrupt = errors.New("quiver: outbox corrupt")
	// ErrClosed is returned by every call after Close.
	ErrClosed = errors.New("quiver: outbox closed")
	// ErrNotReclaimed: Ack (or Reject) did its work, and only freeing the
	// acked entries' space failed; the next ack tries again.
	ErrNotReclaimed = errors.New("reclaiming space failed")
)

// Outbox is a durable FIFO of produce requests on local disk. All methods
// are safe for concurrent use.
type Outbox struct {
	mu      sync.Mutex
	dir     string
	max     int64
	lock    *os.File // holds the lock (lockFile)
	dirf    *os.File // for fsyncs of renames
	f       *os.File // outbox.dat
	datPath string

	head   int64  // offset of the oldest pending record
	size   int64  // end of the last record, the file's size
	n      int    // pending records, in [head, size)
	headID uint64 // id of the record at head; the next add's when empty

	// ackedOnDisk is what outbox.acked says, or -1 after a failed write
	// left it unknown.
	ackedOnDisk int64
	// compactAt delays the next compaction after one failed (a full disk
	// would otherwise have every ack copy the whole tail).
	compactAt int64
	recovered int64  // bytes of torn tail cut off by Open
	buf       []byte // add's encoding buffer
	failed    error  // sticky: memory and disk may disagree, reopen to recover
	closed    bool
}

// Open opens (creating it if needed, mode 0o700) the outbox in dir,
// bounded to maxBytes of pending records (header included; <= 0 means
// 1 GiB). It recovers what the last process left: entries fully written and
// synced are kept, a torn tail is cut off (see RecoveredBytes). Pending
// entries are never dropped: damage that a crash cannot explain is
// ErrCorrupt. An outbox already open on dir, in this process or
// another, makes it fail.
func Open(dir string, maxBytes int64) (_ *Outbox, err error) {
	if maxBytes <= 0 {
		maxBytes = defaultMax
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("quiver: outbox: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	o := &Outbox{dir: dir, max: maxBytes, lock: lock, headID: 1, datPath: filepath.Join(dir, dataFile)}
	defer func() {
		if err != nil {
			o.closeFiles()
		}
	}()
	if o.dirf, err = os.Open(dir); err != nil {
		return nil, fmt.Errorf("quiver: outbox: %w", err)
	}
	// A temp file is an unfinished replacement: the original is intact.
	for _, name := range []string{dataFile + tmpSuffix, ackedFile + tmpSuffix} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("quiver: outbox: %w", err)
		}
	}
	acked, err := o.readAcked()
	if err != nil {
		return nil, err
	}
	o.ackedOnDisk = acked
	if o.f, err = os.OpenFile(o.datPath, os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return nil, fmt.Errorf("quiver: outbox: %w", err)
	}
	// What we read below may be in the page cache only (the last process
	// died, the machine did not): make it durable before trusting it.
	if err := syncFile(o.f); err != nil {
		return nil, fmt.Errorf("quiver: outbox: syncing %s: %w", o.datPath, err)
	}
	if err := o.syncDir(); err != nil {
		return nil, fmt.Errorf("quiver: outbox: syncing %s: %w", dir, err)
	}
	st, err := o.f.Stat()
	if err != nil {
		return nil, fmt.Errorf("quiver: outbox: %w", err)
	}
	size := st.Size()
	if acked > size {
		acked = 0 // reclaimed after the offset was written (see the format comment)
	}
	if err := o.recover(acked, size); err != nil {
		return nil, err
	}
	if o.ackedOnDisk != o.head {
		if err := o.writeAcked(o.head); err != nil {
			return nil, err
		}
	}
	// A compaction that failed harmlessly is retried (and reported) by a
	// later ack; only a failure that leaves the files in doubt stops here.
	if err := o.reclaim(); err != nil && o.failed != nil {
		return nil, o.failed
	}
	return o, nil
}

// lockDir takes the exclusive lock of dir's lock file (lockFile: flock
// on unix-likes, LockFileEx on Windows). Both locks belong to an open file
// (description, or handle), so this also catches a second outbox on the
// same dir in this process.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("quiver: outbox: %w", err)
	}
	held, err := lockFile(f)
	if err != nil {
		holder := ""
		if b, rerr := io.ReadAll(io.LimitReader(f, 32)); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf(" (pid %d)", pid)
			}
		}
		f.Close()
		if held {
			return nil, fmt.Errorf("quiver: outbox %s is already open by another producer or process%s; "+
				"each needs its own directory: %w", dir, holder, err)
		}
		return nil, fmt.Errorf("quiver: outbox %s: locking %s: %w", dir, path, err)
	}
	// Only for the message above: the lock itself is lockFile's.
	if f.Truncate(0) == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// syncDir makes the names in the outbox's directory durable: the renames
// of compactions (outbox.acked's go through fsys). Windows has no fsync
// of a directory (fsutil.CanSyncDir).
func (o *Outbox) syncDir() error {
	if !fsutil.CanSyncDir {
		return nil
	}
	return syncFile(o.dirf)
}

func corrupt(path string, off int64, format string, args ...any) error {
	return fmt.Errorf("%w: %s at offset %d: %s", ErrCorrupt, path, off, fmt.Sprintf(format, args...))
}

// readAcked returns the offset in outbox.acked, 0 if there is none.
func (o *Outbox) readAcked() (int64, error) {
	path := filepath.Join(o.dir, ackedFile)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("quiver: outbox: %w", err)
	}
	defer f.Close()
	var b [ackedLen + 1]byte
	n, err := io.ReadFull(f, b[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("quiver: outbox: reading %s: %w", path, err)
	}
	switch {
	case n != ackedLen:
		return 0, corrupt(path, 0, "%d bytes, want %d", n, ackedLen)
	case string(b[:4]) != ackedMagic:
		return 0, corrupt(path, 0, "bad magic %q", b[:4])
	case crc32.Checksum(b[:12], crcTable) != binary.LittleEndian.Uint32(b[12:]):
		return 0, corrupt(path, 12, "checksum mismatch")
	}
	off := binary.LittleEndian.Uint64(b[4:])
	if off > 1<<62 {
		return 0, corrupt(path, 4, "offset %d", off)
	}
	return int64(off), nil
}

// writeAcked durably replaces outbox.acked with off. On failure the file
// holds the old or the new offset.
func (o *Outbox) writeAcked(off int64) error {
	o.ackedOnDisk = -1
	path := filepath.Join(o.dir, ackedFile)
	b := make([]byte, 0, ackedLen)
	b = append(b, ackedMagic...)
	b = binary.LittleEndian.AppendUint64(b, uint64(off))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
	err := fsutil.WriteAtomic(fsys, path, b, 0o600)
	if err != nil {
		return fmt.Errorf("quiver: outbox: writing %s: %w", path, err)
	}
	o.ackedOnDisk = off
	return nil
}

// recover scans the records from offset from to size, sets the pending
// state, and cuts a torn tail. It reads one record at a time.
func (o *Outbox) recover(from, size int64) error {
	r := bufio.NewReaderSize(io.NewSectionReader(o.f, from, size-from), 64<<10)
	var (
		hdr     [headerLen]byte
		payload []byte
		scratch wire.Produce
	)
	off := from
	for off < size {
		if size-off < headerLen {
			return o.tornTail(from, off, size, "partial record header")
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return fmt.Errorf("quiver: outbox: reading %s at offset %d: %w", o.datPath, off, err)
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n == 0 || n > maxPayload {
			return o.tornTail(from, off, size, fmt.Sprintf("bad record length %d", n))
		}
		end := off + headerLen + int64(n)
		if end > size {
			return o.tornTail(from, off, size, fmt.Sprintf("record of %d bytes ends %d bytes past the end of the file", n, end-size))
		}
		if cap(payload) < int(n) {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(r, payload); err != nil {
			return fmt.Errorf("quiver: outbox: reading %s at offset %d: %w", o.datPath, off, err)
		}
		if crc32.Checksum(payload, crcTable) != binary.LittleEndian.Uint32(hdr[4:]) {
			if end < size {
				// A torn write is the last record: a whole one with more
				// after it was synced and damaged since.
				return corrupt(o.datPath, off, "record of %d bytes fails its checksum, and %d bytes follow it", n, size-end)
			}
			return o.tornTail(from, off, size, "checksum mismatch")
		}
		if err := wire.DecodeStoredProduce(payload, &scratch); err != nil {
			// The checksum holds, so it was written like this: not torn.
			return corrupt(o.datPath, off, "record is not a produce request: %v", err)
		}
		o.n++
		off = end
	}
	o.head, o.size = from, size
	return nil
}

// tornTail handles a damaged record at off, the first one after from: a
// torn last write is cut off; anything a crash cannot leave is an error.
func (o *Outbox) tornTail(from, off, size int64, why string) error {
	rem := size - off
	if rem > headerLen+maxPayload {
		return corrupt(o.datPath, off, "%s, with %d bytes after it: more than one record, not a torn write", why, rem)
	}
	tail := make([]byte, rem)
	if _, err := o.f.ReadAt(tail, off); err != nil {
		return fmt.Errorf("quiver: outbox: reading %s at offset %d: %w", o.datPath, off, err)
	}
	switch at, undecided := recordsAfter(tail); {
	case at > 0:
		return corrupt(o.datPath, off, "%s, but valid records follow from offset %d", why, off+int64(at))
	case undecided:
		return corrupt(o.datPath, off, "%s, and the %d bytes after it could not be told apart from records", why, rem)
	}
	if err := o.f.Truncate(off); err != nil {
		return fmt.Errorf("quiver: outbox: cutting %s at offset %d: %w", o.datPath, off, err)
	}
	if err := syncFile(o.f); err != nil {
		return fmt.Errorf("quiver: outbox: syncing %s: %w", o.datPath, err)
	}
	o.recovered = rem
	o.head, o.size = from, off
	return nil
}

// recordsAfter looks in b, the bytes from a damaged record to the end
// of the file, for an offset > 0 from which well-formed records with valid
// checksums run exactly to the end: proof that the damage is not a torn
// last write (whose bytes are one record's prefix). It returns that offset,
// or 0, or undecided when a pathological b would cost too much to check.
// Time is linear in len(b) apart from checksums, which are bounded.
func recordsAfter(b []byte) (at int, undecided bool) {
	n := len(b)
	if n < 2*headerLen+1 {
		return 0, false
	}
	// reach: a chain of well-formed records runs from here exactly to the end.
	reach := make([]uint64, n/64+1)
	get := func(s []uint64, i int) bool { return s[i/64]&(1<<(i%64)) != 0 }
	set := func(s []uint64, i int) { s[i/64] |= 1 << (i % 64) }
	set(reach, n)
	for y := n - headerLen - 1; y >= 1; y-- {
		l := binary.LittleEndian.Uint32(b[y:])
		if l == 0 || l > maxPayload {
			continue
		}
		if end := y + headerLen + int(l); end <= n && get(reach, end) {
			set(reach, y)
		}
	}
	// dead: a chain from here hits a bad checksum. Every offset is walked
	// through at most once before it is marked dead or we return.
	dead := make([]uint64, n/64+1)
	budget := 4*n + 1<<20 // checksummed bytes; distinct records may overlap
	next := func(z int) int { return z + headerLen + int(binary.LittleEndian.Uint32(b[z:])) }
	for y := 1; y < n; y++ {
		if !get(reach, y) || get(dead, y) {
			continue
		}
		z := y
		for z < n && !get(dead, z) {
			end := next(z)
			if budget -= end - z; budget < 0 {
				return 0, true
			}
			if crc32.Checksum(b[z+headerLen:end], crcTable) != binary.LittleEndian.Uint32(b[z+4:]) {
				break
			}
			z = end
		}
		if z == n {
			return y, false
		}
		for w := y; w != z; w = next(w) {
			set(dead, w)
		}
		set(dead, z)
	}
	return 0, false
}

// reclaim gives back the space of acked records (see the format comment).
// outbox.acked must durably say o.head.
func (o *Outbox) reclaim() error {
	switch {
	case o.n == 0 && o.size > 0:
		return o.empty()
	case o.head > compactMin && o.head*2 > o.size && o.head >= o.compactAt:
		return o.compact()
	}
	return nil
}

// empty truncates the data file when nothing is pending. A crash before
// outbox.acked is reset leaves it past the end of the empty file, which
// reads as 0; until it is reset nothing may be appended, hence fail.
func (o *Outbox) empty() error {
	if err := o.f.Truncate(0); err != nil {
		return o.fail(fmt.Errorf("truncating %s: %w", o.datPath, err))
	}
	if err := syncFile(o.f); err != nil {
		return o.fail(fmt.Errorf("syncing %s: %w", o.datPath, err))
	}
	o.head, o.size = 0, 0
	if o.ackedOnDisk != 0 {
		if err := o.writeAcked(0); err != nil {
			return o.fail(err)
		}
	}
	return nil
}

// compact copies the pending tail to a new data file that replaces the old
// one. A failure before the rename changes nothing (the next try waits for
// another compactMin of acks); one after it leaves outbox.acked past
// the end of the new file (read as 0 on reopen) and the outbox unusable
// until reopened.
func (o *Outbox) compact() error {
	tmp := o.datPath + tmpSuffix
	nf, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		tail := o.size - o.head
		var copied int64
		copied, err = io.Copy(nf, io.NewSectionReader(o.f, o.head, tail))
		if err == nil && copied != tail {
			err = fmt.Errorf("copied %d of %d bytes", copied, tail)
		}
		if err == nil {
			err = syncFile(nf)
		}
		if err == nil {
			nf, err = o.replaceData(nf, tmp)
		}
		if err != nil {
			if nf != nil {
				nf.Close()
			}
			os.Remove(tmp)
		}
	}
	if err != nil {
		if o.failed != nil {
			return o.failed
		}
		o.compactAt = o.head + compactMin
		return fmt.Errorf("compacting %s: %w", o.datPath, err)
	}
	old := o.f
	o.f = nf
	o.size -= o.head
	o.head = 0
	if old != nil {
		old.Close()
	}
	if err := o.syncDir(); err != nil {
		return o.fail(fmt.Errorf("syncing %s: %w", o.dir, err))
	}
	if err := o.writeAcked(0); err != nil {
		return o.fail(err)
	}
	o.compactAt = 0
	return nil
}

// closeToRename says that a file can be renamed, or renamed over, only
// while nobody has it open: Windows, where Go opens files without
// FILE_SHARE_DELETE. A variable so that Linux's tests run that path too.
var closeToRename = runtime.GOOS == "windows"

// rename is os.Rename, but for tests that make it fail.
var rename = os.Rename

// replaceData renames the synced tmp (open as nf) over the data file and
// returns the handle to use for it. On error the data file is the old one
// and o.f still reads it (nf is closed or returned for the caller to
// close), unless the outbox failed (o.failed: the old file could not be
// reopened).
func (o *Outbox) replaceData(nf *os.File, tmp string) (*os.File, error) {
	if !closeToRename {
		return nf, rename(tmp, o.datPath)
	}
	nf.Close()
	o.f.Close()
	o.f = nil
	err := rename(tmp, o.datPath)
	// Whichever file is now at datPath, the new one or (after a failed
	// rename) the old one, is the one to keep using.
	f, oerr := os.OpenFile(o.datPath, os.O_RDWR, 0)
	if oerr != nil {
		return nil, o.fail(fmt.Errorf("reopening %s after compacting: %w", o.datPath, oerr))
	}
	if err != nil {
		o.f = f
		return nil, err
	}
	return f, nil
}

// fail makes the outbox refuse further use: memory and disk may disagree.
// Reopening recovers from what is on disk.
func (o *Outbox) fail(err error) error {
	o.failed = fmt.Errorf("quiver: outbox %s is unusable until reopened: %w", o.dir, err)
	return o.failed
}

func (o *Outbox) usable() error {
	if o.closed {
		return fmt.Errorf("%w: %s", ErrClosed, o.dir)
	}
	return o.failed
}

// Add appends p's encoding and fsyncs before returning: the entry survives
// a crash once Add returned nil. It fails with ErrFull, writing
// nothing, when the pending records and this one would exceed the limit.
func (o *Outbox) Add(p *wire.Produce) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.usable(); err != nil {
		return err
	}
	rec := appendRecord(o.buf[:0], p)
	payload := rec[headerLen:]
	if len(payload) > maxPayload {
		return fmt.Errorf("quiver: outbox %s: entry of %d bytes is over the %d-byte limit", o.dir, len(payload), maxPayload)
	}
	// An entry that does not decode would make the file unreadable on the
	// next open (a field too long for its length prefix encodes wrongly).
	var back wire.Produce
	err := wire.DecodeStoredProduce(payload, &back)
	if err == nil && (back.Topic != p.Topic || len(back.Key) != len(p.Key) || len(back.Tags) != len(p.Tags) ||
		len(back.Headers) != len(p.Headers) || len(back.Body) != len(p.Body)) {
		err = errors.New("a field is too long for its length prefix")
	}
	if err != nil {
		return fmt.Errorf("quiver: outbox %s: entry for topic %q is not a valid produce request: %w", o.dir, p.Topic, err)
	}
	need := int64(len(rec))
	if pending := o.size - o.head; pending+need > o.max {
		return fmt.Errorf("%w: %s holds %d bytes pending; this %d-byte entry would pass the limit of %d bytes",
			ErrFull, o.dir, pending, need, o.max)
	}
	if _, err := o.f.WriteAt(rec, o.size); err != nil {
		return o.undoAppend(err)
	}
	if err := syncFile(o.f); err != nil {
		return o.undoAppend(err)
	}
	o.size += need
	o.n++
	if cap(rec) <= 1<<20 {
		o.buf = rec[:0]
	} else {
		o.buf = nil // a rare big entry does not pin its buffer
	}
	return nil
}

// appendRecord appends p as one record (length, CRC-32C, payload).
func appendRecord(dst []byte, p *wire.Produce) []byte {
	start := len(dst)
	dst = p.AppendStored(append(dst, make([]byte, headerLen)...))
	payload := dst[start+headerLen:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(payload, crcTable))
	return dst
}

// undoAppend removes what a failed add may have written, so that no later
// record follows a torn one (which reopening would call corrupt).
func (o *Outbox) undoAppend(err error) error {
	err = fmt.Errorf("quiver: outbox: writing %s at offset %d: %w", o.datPath, o.size, err)
	if terr := o.f.Truncate(o.size); terr != nil {
		return o.fail(errors.Join(err, terr))
	}
	if serr := syncFile(o.f); serr != nil {
		return o.fail(errors.Join(err, serr))
	}
	return err
}

// readHead reads the header of the record at o.head and returns its
// payload length.
func (o *Outbox) readHead() (uint32, error) {
	var hdr [headerLen]byte
	if _, err := o.f.ReadAt(hdr[:], o.head); err != nil {
		return 0, fmt.Errorf("quiver: outbox: reading %s at offset %d: %w", o.datPath, o.head, err)
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n == 0 || n > maxPayload || o.head+headerLen+int64(n) > o.size {
		return 0, corrupt(o.datPath, o.head, "bad record length %d", n)
	}
	return n, nil
}

// Peek returns the oldest pending entry and its id, or ok=false when none
// is pending. p is decoded from a buffer of its own: the caller may keep it.
func (o *Outbox) Peek() (id uint64, p *wire.Produce, ok bool, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.usable(); err != nil {
		return 0, nil, false, err
	}
	if o.n == 0 {
		return 0, nil, false, nil
	}
	n, err := o.readHead()
	if err != nil {
		return 0, nil, false, err
	}
	rec := make([]byte, headerLen+int(n))
	if _, err := o.f.ReadAt(rec, o.head); err != nil {
		return 0, nil, false, fmt.Errorf("quiver: outbox: reading %s at offset %d: %w", o.datPath, o.head, err)
	}
	// Checked again: the disk may have damaged it since Open did.
	if crc32.Checksum(rec[headerLen:], crcTable) != binary.LittleEndian.Uint32(rec[4:]) {
		return 0, nil, false, corrupt(o.datPath, o.head, "entry %d fails its checksum", o.headID)
	}
	p = new(wire.Produce)
	if err := wire.DecodeStoredProduce(rec[headerLen:], p); err != nil {
		return 0, nil, false, corrupt(o.datPath, o.head, "entry %d: %v", o.headID, err)
	}
	return o.headID, p, true, nil
}

// Scan calls fn with every pending entry, oldest first (the producer
// rebuilds its per-key counts from it when it opens an outbox).
func (o *Outbox) Scan(fn func(p *wire.Produce)) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.usable(); err != nil {
		return err
	}
	r := bufio.NewReaderSize(io.NewSectionReader(o.f, o.head, o.size-o.head), 1<<16)
	var hdr [headerLen]byte
	for off := o.head; off < o.size; {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return fmt.Errorf("quiver: outbox: reading %s at offset %d: %w", o.datPath, off, err)
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n == 0 || n > maxPayload || off+headerLen+int64(n) > o.size {
			return corrupt(o.datPath, off, "bad record length %d", n)
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(r, payload); err != nil {
			return fmt.Errorf("quiver: outbox: reading %s at offset %d: %w", o.datPath, off, err)
		}
		if crc32.Checksum(payload, crcTable) != binary.LittleEndian.Uint32(hdr[4:]) {
			return corrupt(o.datPath, off, "record fails its checksum")
		}
		p := new(wire.Produce)
		if err := wire.DecodeStoredProduce(payload, p); err != nil {
			return corrupt(o.datPath, off, "%v", err)
		}
		fn(p)
		off += headerLen + int64(n)
	}
	return nil
}

// Ack marks entry id, which must be the oldest pending one, as delivered:
// once ack returned nil, a reopened outbox no longer returns it. It then
// reclaims space. An error that says the entry is acked means only the
// reclaiming failed.
func (o *Outbox) Ack(id uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.usable(); err != nil {
		return err
	}
	if o.n == 0 {
		return fmt.Errorf("quiver: outbox %s: ack of entry %d, but nothing is pending", o.dir, id)
	}
	if id != o.headID {
		return fmt.Errorf("quiver: outbox %s: ack of entry %d, but the oldest pending entry is %d", o.dir, id, o.headID)
	}
	n, err := o.readHead()
	if err != nil {
		return err
	}
	next := o.head + headerLen + int64(n)
	if next == o.size {
		// The last pending entry: emptying the file is the ack itself.
		o.n, o.headID = 0, id+1
		return o.empty()
	}
	if err := o.writeAcked(next); err != nil {
		return err // not acked: outbox.acked holds the old or the new offset, both fine
	}
	o.head, o.n, o.headID = next, o.n-1, id+1
	if err := o.reclaim(); err != nil {
		return fmt.Errorf("quiver: outbox %s: entry %d is acked, but %w: %w", o.dir, id, ErrNotReclaimed, err)
	}
	return nil
}

// Reject moves entry id, the oldest pending one, to outbox.rejected (same
// record format, appended and synced) and then acks it: for an entry that
// no broker will ever take, kept for the operator instead of dropped.
func (o *Outbox) Reject(id uint64, p *wire.Produce) error {
	rec := appendRecord(nil, p)
	path := filepath.Join(o.dir, rejectedFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("quiver: outbox: %w", err)
	}
	_, err = f.Write(rec)
	if err == nil {
		err = syncFile(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("quiver: outbox: writing %s: %w", path, err)
	}
	return o.Ack(id)
}

// Pending returns the number of entries not yet acked and their bytes on
// disk (records with their 8-byte headers, what the limit counts).
func (o *Outbox) Pending() (n int, bytes int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n, o.size - o.head
}

// Dir is the outbox's directory.
func (o *Outbox) Dir() string { return o.dir }

// RecoveredBytes returns the bytes of torn tail that Open cut off.
func (o *Outbox) RecoveredBytes() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.recovered
}

// Close releases the lock and the files. It is safe to call twice.
func (o *Outbox) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	return o.closeFiles()
}

// closeFiles closes the data file and the directory before the lock file,
// so that the next opener finds nothing of this one open.
func (o *Outbox) closeFiles() error {
	var errs []error
	for _, f := range []*os.File{o.f, o.dirf, o.lock} {
		if f != nil {
			if err := f.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("quiver: outbox %s: closing: %w", o.dir, err)
	}
	return nil
}
