//go:build linux

package ioengine

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/pawelgaczynski/giouring"
)

const (
	// defaultRingEntries is the SQ size of the engine's ring. A group-commit
	// flush is a handful of ops (the dirty pages of one or two segments, plus
	// their syncs), so 256 is far more than a flush needs; larger batches
	// are split over several submits (see uringEngine.Flush).
	defaultRingEntries = 256
	// maxChunk caps one write SQE: the kernel never writes more than
	// MAX_RW_COUNT (2 GiB - 4 KiB) in one call, and SQE lengths are 32 bits.
	// Bigger ops are split into chunks that are linked like separate writes,
	// so a sync can never overtake the tail of a big write.
	maxChunk = 1 << 30
	// maxStalls bounds the rounds in a row that make no progress at all
	// (EAGAIN from the kernel) before Flush gives up instead of spinning.
	maxStalls = 64
)

// uringEngine is the io_uring backend: every write of a Flush plus one
// fdatasync per distinct file go to the kernel in one io_uring_enter, and
// the caller sleeps once for all of them.
//
// Ordering: the kernel runs SQEs in any order unless they are linked, so the
// SQEs of one file form one IOSQE_IO_LINK chain, writes in op order then the
// file's fsync: each write starts after the previous one finished, and the
// fsync after all of them. Chains of different files run concurrently. A
// failed or short link breaks its chain: the rest completes with
// -ECANCELED and is resubmitted, or reported, as described on Flush.
type uringEngine struct {
	logger  *slog.Logger
	opener  opener
	entries int
	closed  atomic.Bool

	// mu serializes Flush and Close: a ring is single-threaded state.
	mu     sync.Mutex
	ring   *giouring.Ring
	broken error // the ring's state is unknown after this error; every later Flush fails
	items  []uItem
	files  []syncTarget // distinct files of the current Flush, first-appearance order
}

// uItem is one SQE's worth of work in a Flush: a write chunk or an fsync.
type uItem struct {
	file   File
	fd     int
	buf    []byte // bytes still to write (nil for an fsync)
	off    int64  // file offset of buf[0]
	start  int64  // offset and length of the whole chunk, for errors
	want   int
	group  int32 // index into files; the items of one group are contiguous
	direct bool
	fsync  bool
	done   bool
	head   bool // first SQE of its chain in the current submit
}

func newIOUring(entries int, logger *slog.Logger) (*uringEngine, error) {
	ring, err := giouring.CreateRing(uint32(entries))
	if err != nil {
		return nil, fmt.Errorf("%w: io_uring: io_uring_setup(%d entries): %w", ErrUnavailable, entries, err)
	}
	return &uringEngine{
		logger:  logger,
		opener:  opener{logger: logger},
		entries: entries,
		ring:    ring,
		items:   make([]uItem, 0, 64),
		files:   make([]syncTarget, 0, 8),
	}, nil
}

// probeIOUring reports why io_uring cannot run here, or nil. Besides ring
// creation (EPERM under seccomp or kernel.io_uring_disabled, ENOSYS on old
// or stripped kernels, ENOMEM under a small RLIMIT_MEMLOCK before 5.12) it
// asks the kernel whether it knows IORING_OP_WRITE (5.6) and
// IORING_OP_FSYNC; sandboxes that emulate only part of io_uring fail here.
func probeIOUring() error {
	ring, err := giouring.CreateRing(4)
	if err != nil {
		return fmt.Errorf("io_uring_setup: %w", err)
	}
	defer ring.QueueExit()
	probe, err := ring.GetProbeRing()
	if err != nil {
		return fmt.Errorf("io_uring_register(PROBE): %w", err)
	}
	if !probe.IsSupported(giouring.OpWrite) || !probe.IsSupported(giouring.OpFsync) {
		return errors.New("io_uring: kernel lacks IORING_OP_WRITE or IORING_OP_FSYNC")
	}
	return nil
}

func (e *uringEngine) Name() string { return BackendIOUring }

func (e *uringEngine) Open(path string) (File, error) {
	if e.closed.Load() {
		return nil, fmt.Errorf("ioengine: open %s: %w", path, ErrClosed)
	}
	return e.opener.open(path)
}

// Flush implements Engine. Normally it is one io_uring_enter that submits
// everything and waits for all of it. Beyond that:
//
//   - More SQEs than the ring holds: the items are submitted in rounds of at
//     most a ring's worth; a chain cut at a round's end continues in the
//     next round, which starts only after the previous one fully completed,
//     so a file's fsync is still submitted only after its writes completed.
//   - A short write (0 <= res < len) is finished with a follow-up write of
//     the remainder in the next round (the kernel has cancelled the rest of
//     that chain, which is resubmitted after it); a zero or misaligned
//     count returns ErrShortWrite instead, as in the portable backend.
//   - -ECANCELED on a linked SQE means an earlier link failed: it is not an
//     error of its own. The error returned is the first real one in
//     submission order, wrapped with the file name and offset.
//   - EINTR/EAGAIN from io_uring_enter are retried; any other submit or
//     wait failure leaves the ring in an unknown state, and the engine then
//     fails every later Flush.
func (e *uringEngine) Flush(ops []WriteOp, sync bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed.Load() {
		return fmt.Errorf("ioengine: flush: %w", ErrClosed)
	}
	if e.broken != nil {
		return fmt.Errorf("ioengine: io_uring engine unusable after an earlier failure: %w", e.broken)
	}
	if err := validate(ops); err != nil {
		return err
	}
	e.plan(ops, sync)
	defer e.reset()
	stalls := 0
	for {
		n := e.prepare()
		if n == 0 {
			return nil
		}
		if err := e.submit(n); err != nil {
			return err
		}
		progress, err := e.reap(n)
		if err != nil {
			return err
		}
		if progress {
			stalls = 0
		} else if stalls++; stalls > maxStalls {
			return fmt.Errorf("ioengine: io_uring flush made no progress in %d rounds: %w", stalls, syscall.EAGAIN)
		}
	}
}

// plan turns ops into items grouped by file: each file's write chunks in op
// order, then its fsync when sync is set.
func (e *uringEngine) plan(ops []WriteOp, sync bool) {
	for i := range ops {
		fd, _, _ := target(ops[i].File) // validated by Flush
		e.files = addSyncTarget(e.files, fd, ops[i].File)
	}
	for g, ft := range e.files {
		for i := range ops {
			op := &ops[i]
			fd, direct, _ := target(op.File)
			if fd != ft.fd {
				continue
			}
			for b, off := op.Buf, op.Off; len(b) > 0; {
				n := min(len(b), maxChunk)
				e.items = append(e.items, uItem{file: op.File, fd: fd, buf: b[:n], off: off,
					start: off, want: n, group: int32(g), direct: direct})
				b, off = b[n:], off+int64(n)
			}
		}
		if sync {
			e.items = append(e.items, uItem{file: ft.file, fd: ft.fd, group: int32(g), fsync: true})
		}
	}
}

// reset drops the references to the caller's files and buffers.
func (e *uringEngine) reset() {
	clear(e.items)
	e.items = e.items[:0]
	clear(e.files)
	e.files = e.files[:0]
}

// prepare fills the SQ ring with the pending items, in order, linking each
// one to the previous if it belongs to the same file. It returns how many
// SQEs it queued (0: everything is done). The last SQE never carries the
// link flag, so a chain never spans two submits.
func (e *uringEngine) prepare() int {
	space := int(e.ring.SQSpaceLeft())
	n := 0
	var prev *giouring.SubmissionQueueEntry
	prevGroup := int32(-1)
	for i := range e.items {
		it := &e.items[i]
		if it.done {
			continue
		}
		if n == space {
			break
		}
		sqe := e.ring.GetSQE() // not nil: n < space
		// SQE slots are reused and giouring's prepare helpers do not clear
		// every field: an fsync's IORING_FSYNC_DATASYNC left in rw_flags
		// would read as RWF_HIPRI on the next write in that slot (EINVAL).
		*sqe = giouring.SubmissionQueueEntry{}
		if it.fsync {
			sqe.PrepareFsync(it.fd, giouring.FsyncDatasync)
		} else {
			sqe.PrepareWrite(it.fd, uintptr(unsafe.Pointer(&it.buf[0])), uint32(len(it.buf)), uint64(it.off))
		}
		sqe.UserData = uint64(i)
		it.head = prev == nil || prevGroup != it.group
		if !it.head {
			prev.SetFlags(uint32(giouring.SqeIOLink))
		}
		prev, prevGroup = sqe, it.group
		n++
	}
	return n
}

// submit hands the n queued SQEs to the kernel and waits until n
// completions are posted, in one io_uring_enter when nothing goes wrong.
func (e *uringEngine) submit(n int) error {
	again := 0
	for {
		_, err := e.ring.SubmitAndWait(uint32(n))
		switch {
		case err == nil:
			// The kernel stops consuming SQEs at one it cannot even
			// prepare (that one gets an error CQE) and then does not wait:
			// hand it the rest.
			if e.ring.SQReady() == 0 {
				return nil
			}
		case err == syscall.EINTR:
			// A signal (the Go runtime preempts with SIGURG) interrupted
			// the wait; entering again submits what is left and waits on.
		case err == syscall.EAGAIN || err == syscall.EBUSY:
			if again++; again > maxStalls {
				return e.fail(n, fmt.Errorf("ioengine: io_uring_enter: %w", err))
			}
		default:
			return e.fail(n, fmt.Errorf("ioengine: io_uring_enter: %w", err))
		}
	}
}

// fail marks the ring unusable after a submit error: SQEs may be left in the
// SQ ring that a later enter would run out of order. It first waits for
// the completions of what the kernel did take, so that no write still reads
// the caller's buffers once Flush has returned.
func (e *uringEngine) fail(n int, err error) error {
	e.broken = err
	for taken := n - int(e.ring.SQReady()); taken > 0; taken-- {
		cqe, werr := e.waitCQE()
		if werr != nil {
			break
		}
		e.ring.CQESeen(cqe)
	}
	return err
}

func (e *uringEngine) waitCQE() (*giouring.CompletionQueueEvent, error) {
	for {
		cqe, err := e.ring.WaitCQE()
		if err == syscall.EINTR || (err == nil && cqe == nil) {
			continue
		}
		return cqe, err
	}
}

// reap consumes the n completions of one round and applies them to the
// items. progress is false if no item advanced at all.
func (e *uringEngine) reap(n int) (progress bool, err error) {
	failed, failErr := -1, error(nil)
	for k := 0; k < n; k++ {
		cqe, werr := e.waitCQE()
		if werr != nil {
			e.broken = fmt.Errorf("ioengine: io_uring wait: %w", werr)
			return false, e.broken
		}
		idx, res := int(cqe.UserData), cqe.Res
		e.ring.CQESeen(cqe)
		if idx < 0 || idx >= len(e.items) {
			e.broken = fmt.Errorf("ioengine: io_uring completion with unknown user data %d", cqe.UserData)
			return false, e.broken
		}
		it := &e.items[idx]
		var opErr error
		switch {
		case res < 0:
			errno := syscall.Errno(-res)
			if (errno == syscall.ECANCELED && !it.head) || errno == syscall.EINTR || errno == syscall.EAGAIN {
				continue // cancelled because an earlier link failed, or transient: resubmitted
			}
			opErr = errno
		case it.fsync:
			it.done, progress = true, true
		default:
			m := min(int(res), len(it.buf))
			it.buf, it.off = it.buf[m:], it.off+int64(m)
			progress = progress || m > 0
			if len(it.buf) == 0 {
				it.done = true
			} else if m == 0 || (it.direct && m%Alignment != 0) {
				opErr = ErrShortWrite
			}
		}
		if opErr != nil && (failed < 0 || idx < failed) {
			failed, failErr = idx, opErr
		}
	}
	if failed >= 0 {
		it := &e.items[failed]
		if it.fsync {
			return progress, fmt.Errorf("ioengine: fdatasync %s: %w", it.file.Name(), failErr)
		}
		return progress, writeError(it.file.Name(), it.start, it.want-len(it.buf), it.want, failErr)
	}
	e.recheckSyncs()
	return progress, nil
}

// recheckSyncs re-arms an fsync that completed while a write before it in
// its chain is still pending. A short write breaks its chain, so the kernel
// should already have cancelled that fsync; this makes the guarantee not
// depend on it.
func (e *uringEngine) recheckSyncs() {
	group, pendingWrite := int32(-1), false
	for i := range e.items {
		it := &e.items[i]
		if it.group != group {
			group, pendingWrite = it.group, false
		}
		if !it.fsync && !it.done {
			pendingWrite = true
		}
		if it.fsync && it.done && pendingWrite {
			it.done = false
		}
	}
}

// Close releases the ring. Files opened by the engine stay usable.
func (e *uringEngine) Remove(path string) error { return removeFile(path) }
func (e *uringEngine) SyncDir(dir string) error { return syncDir(dir) }

func (e *uringEngine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed.Swap(true) {
		return fmt.Errorf("ioengine: close io_uring engine: %w", ErrClosed)
	}
	e.ring.QueueExit()
	e.ring = nil
	return nil
}
