//go:build linux

package ioengine

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"github.com/pawelgaczynski/giouring"
	"golang.org/x/sys/unix"
)

// Uring is the io_uring backend. A Flush goes to the kernel as one chain of
// linked SQEs, writes first and then one fdatasync per file written, in one
// io_uring_enter: IOSQE_IO_LINK makes each operation start only after the
// previous one completed, which is what orders the sync after the writes it
// must cover (io_uring does not order independent SQEs).
//
// A ring is not safe for concurrent use; Flush holds a mutex. The log's
// single flusher goroutine is the only caller on the hot path.
type Uring struct {
	mu      sync.Mutex
	ring    *giouring.Ring
	entries int
	closed  bool
	files   []File
	results []int32
}

// DefaultRingEntries is the submission queue size of NewUring(0).
const DefaultRingEntries = 256

// NewUring sets up a ring with the given number of entries (0: default). It
// returns an error wrapping ErrUnavailable when the kernel refuses io_uring.
func NewUring(entries int) (*Uring, error) {
	if entries <= 0 {
		entries = DefaultRingEntries
	}
	ring, err := giouring.CreateRing(uint32(entries))
	if err != nil {
		return nil, fmt.Errorf("%w: io_uring_setup: %w", ErrUnavailable, err)
	}
	return &Uring{ring: ring, entries: entries, results: make([]int32, entries)}, nil
}

func (u *Uring) Name() string { return "io_uring" }

func (u *Uring) Open(path string) (File, error) {
	u.mu.Lock()
	closed := u.closed
	u.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	return openFile(path)
}

func (u *Uring) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return ErrClosed
	}
	u.closed = true
	u.ring.QueueExit()
	return nil
}

// Flush writes ops and, if sync, fdatasyncs every file written, in order.
func (u *Uring) Flush(ops []WriteOp, sync bool) error {
	for _, op := range ops {
		if err := checkOp(op.Buf, op.Off); err != nil {
			return fmt.Errorf("%w: %s at %d, %d bytes", err, op.File.Name(), op.Off, len(op.Buf))
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return ErrClosed
	}
	u.files = u.files[:0]
	if sync {
		u.files = distinctFiles(u.files, ops)
	}
	total := len(ops) + len(u.files)
	// Chains longer than the ring go in several submits; each waits for the
	// previous one, so the order (writes, then syncs) holds across them.
	for start := 0; start < total; start += u.entries {
		end := min(start+u.entries, total)
		if err := u.submitChain(ops, start, end); err != nil {
			return err
		}
	}
	runtime.KeepAlive(ops)
	return nil
}

// submitChain submits operations [start, end) of the flush (ops, then the
// syncs of u.files) as one linked chain and waits for all of them.
func (u *Uring) submitChain(ops []WriteOp, start, end int) error {
	n := end - start
	for i := start; i < end; i++ {
		sqe := u.ring.GetSQE()
		if sqe == nil {
			return fmt.Errorf("ioengine: io_uring submission queue full")
		}
		// SQEs are reused and giouring's prepare helpers leave some fields
		// (rw_flags among them) as the last user set them: an fsync's
		// DATASYNC flag left in a write's rw_flags reads as RWF_HIPRI (EINVAL).
		*sqe = giouring.SubmissionQueueEntry{}
		if i < len(ops) {
			op := ops[i]
			sqe.PrepareWrite(op.File.Fd(), uintptr(unsafe.Pointer(&op.Buf[0])), uint32(len(op.Buf)), uint64(op.Off))
		} else {
			sqe.PrepareFsync(u.files[i-len(ops)].Fd(), giouring.FsyncDatasync)
		}
		sqe.UserData = uint64(i - start)
		if i < end-1 {
			sqe.SetFlags(uint32(giouring.SqeIOLink))
		}
	}
	for {
		_, err := u.ring.SubmitAndWait(uint32(n))
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return fmt.Errorf("ioengine: io_uring_enter: %w", err)
		}
		break
	}
	for got := 0; got < n; got++ {
		var cqe *giouring.CompletionQueueEvent
		var err error
		for {
			cqe, err = u.ring.WaitCQE()
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			break
		}
		if err != nil {
			return fmt.Errorf("ioengine: io_uring wait: %w", err)
		}
		u.results[cqe.UserData] = cqe.Res
		u.ring.CQESeen(cqe)
	}
	return u.settle(ops, start, end)
}

// settle checks the results of [start, end). A short write breaks a linked
// chain (the rest completes with -ECANCELED): those operations are finished
// synchronously, in order, so the flush still does everything or fails.
func (u *Uring) settle(ops []WriteOp, start, end int) error {
	for i := start; i < end; i++ {
		res := u.results[i-start]
		if i < len(ops) {
			op := ops[i]
			switch {
			case res == int32(len(op.Buf)):
				continue
			case res >= 0 || res == -int32(unix.ECANCELED):
				done := max(int(res), 0)
				if done%Alignment != 0 {
					return fmt.Errorf("%w: %s at %d: %d of %d bytes", ErrShortWrite, op.File.Name(), op.Off, done, len(op.Buf))
				}
				if _, err := op.File.WriteAt(op.Buf[done:], op.Off+int64(done)); err != nil {
					return err
				}
			default:
				return fmt.Errorf("ioengine: write %s at %d: %w", op.File.Name(), op.Off, unix.Errno(-res))
			}
			continue
		}
		f := u.files[i-len(ops)]
		switch {
		case res == 0:
		case res == -int32(unix.ECANCELED):
			if err := f.Sync(); err != nil {
				return err
			}
		default:
			return fmt.Errorf("ioengine: fdatasync %s: %w", f.Name(), unix.Errno(-res))
		}
	}
	return nil
}
