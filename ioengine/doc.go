// Package ioengine is the disk under Quiver's commit log: aligned direct
// writes, reads, and syncs ordered after the writes they cover.
//
// # Backends
//
//   - io_uring (Uring, on github.com/pawelgaczynski/giouring): a Flush is one
//     chain of linked SQEs, the O_DIRECT writes and then one fdatasync per
//     file, submitted with one io_uring_enter. IOSQE_IO_LINK orders each
//     operation after the previous one; without it the kernel may run the
//     sync before the writes it is meant to cover.
//   - portable (Portable): pwrite per write, then fdatasync per file.
//
// New("auto", logger) picks io_uring when the kernel allows it and says in
// one log line which backend runs and why. io_uring_setup failing with EPERM
// (seccomp, kernel.io_uring_disabled) or ENOSYS is normal, not an error.
// QUIVER_IOENGINE pins the backend that "auto" picks. Both backends pass the
// same tests; Backends lists the ones that run on this machine.
//
// # Alignment
//
// Files are opened with O_DIRECT for writes (falling back to buffered writes
// where the file system refuses it, such as tmpfs) and with a second,
// buffered descriptor for reads. Direct writes need buffer addresses,
// lengths and file offsets that are multiples of Alignment (4 KiB):
// AlignedBuffer makes such buffers; misaligned writes fail with
// ErrUnaligned and write nothing.
//
// # Fault injection
//
// Faulty wraps any Engine so that tests can fail a write, fail a sync, tear a
// write (only a prefix reaches the file) or crash the disk in-process.
//
// # Building
//
// giouring links syscall.munmap with go:linkname, which Go 1.23 and later
// refuse unless the linker runs with -ldflags=-checklinkname=0. Every build
// of a program that imports this package needs that flag (the Makefile has
// it). The client SDK never imports this package.
package ioengine
