package ioengine

import (
	"fmt"
	"unsafe"
)

// AlignedBuffer returns a zeroed buffer of n bytes rounded up to a multiple of
// Alignment, whose first byte sits at an address that is a multiple of
// Alignment, as O_DIRECT requires.
//
// The memory is an ordinary Go heap allocation, over-allocated by Alignment
// bytes and re-sliced at the first aligned address. That keeps it GC-safe:
// the slice points into the allocation, so the whole backing array lives as
// long as the slice does, the Go collector never moves heap objects, and
// nothing has to be freed by hand (an anonymous mmap would need an explicit
// Munmap, and forgetting it leaks). The capacity is capped at the returned
// length so an append can never silently reallocate into unaligned memory.
//
// n <= 0 returns an empty, non-nil slice.
func AlignedBuffer(n int) []byte {
	if n <= 0 {
		return []byte{}
	}
	size := roundUp(n)
	raw := make([]byte, size+Alignment)
	off := 0
	if rem := int(uintptr(unsafe.Pointer(&raw[0])) & (Alignment - 1)); rem != 0 {
		off = Alignment - rem
	}
	return raw[off : off+size : off+size]
}

// IsAligned reports whether p may be written with O_DIRECT: its address and
// its length are multiples of Alignment and it is not empty.
func IsAligned(p []byte) bool {
	return len(p) > 0 && len(p)%Alignment == 0 &&
		uintptr(unsafe.Pointer(&p[0]))%Alignment == 0
}

func roundUp(n int) int { return (n + Alignment - 1) &^ (Alignment - 1) }

// checkAligned validates one direct write. It is what turns a caller's bug
// into ErrUnaligned instead of an EINVAL from the kernel halfway through a
// batch.
func checkAligned(f File, p []byte, off int64) error {
	if !IsAligned(p) || off < 0 || off%Alignment != 0 {
		addr := uintptr(0)
		if len(p) > 0 {
			addr = uintptr(unsafe.Pointer(&p[0]))
		}
		return &alignError{name: fileName(f), off: off, n: len(p), addr: addr}
	}
	return nil
}

// alignError carries the details of a rejected write; it matches ErrUnaligned
// with errors.Is. A dedicated type (rather than fmt.Errorf) keeps the hot
// path free of formatting until someone prints the error.
type alignError struct {
	name string
	off  int64
	n    int
	addr uintptr
}

func (e *alignError) Error() string {
	return fmt.Sprintf("ioengine: unaligned direct I/O: %s: offset %d, length %d, buffer address %#x "+
		"(each must be a multiple of %d, length > 0)", e.name, e.off, e.n, e.addr, Alignment)
}

func (e *alignError) Unwrap() error { return ErrUnaligned }

func fileName(f File) string {
	if f == nil {
		return "<nil file>"
	}
	return f.Name()
}
