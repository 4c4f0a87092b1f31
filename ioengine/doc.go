// Package ioengine is the disk layer under Quiver's commit log: aligned
// direct writes, buffered reads, and fdatasyncs ordered after the writes
// they cover. The log's flusher hands an Engine a batch of WriteOps (the
// dirty 4 KiB pages of one or two segments) and asks for them to be
// durable; everything above this package is ignorant of how that happens.
//
// # Backends
//
// New picks one of two implementations of Engine:
//
//   - "io_uring" (Linux, on github.com/pawelgaczynski/giouring): a Flush
//     is one io_uring_enter that submits every write plus one fdatasync per
//     distinct file and waits for all of them. The kernel does not order
//     SQEs on its own, so each file's SQEs form an IOSQE_IO_LINK chain,
//     writes in op order then the fdatasync; chains of different files run
//     concurrently. Batches larger than the ring are split into rounds,
//     each submitted after the previous one completed; short writes are
//     finished with follow-up writes; -ECANCELED of linked SQEs is not
//     reported as an error of its own (see uringEngine.Flush).
//   - "portable": one pwrite per op, in order, then one fdatasync per
//     distinct file. It runs on any Unix (without O_DIRECT outside Linux).
//
// "auto" uses io_uring when a probe ring can be created and the kernel knows
// IORING_OP_WRITE and IORING_OP_FSYNC, and the portable backend otherwise:
// EPERM from seccomp or kernel.io_uring_disabled, ENOSYS, ENOMEM are normal
// answers. New logs one Info line ("ioengine selected") with the backend
// and the reason. The environment variable QUIVER_IOENGINE (EnvBackend),
// set to "io_uring" or "portable", overrides what "auto" picks; it never
// overrides an explicit kind. Backends lists the backends usable on this
// machine, for test suites and benchmarks to iterate over.
//
// # Files and alignment
//
// Both backends open files the same way (DirectFile): an O_DIRECT|O_RDWR
// descriptor for writes and a buffered O_RDONLY one for reads. Reads are
// served by the page cache, which Linux keeps coherent with direct writes
// (a direct write invalidates the cached pages it covers). Where the
// filesystem refuses O_DIRECT (tmpfs on older kernels) the write descriptor
// falls back to buffered I/O, once-logged and visible as DirectIO() ==
// false; files stay correct because syncs are fdatasyncs either way.
//
// Direct writes need buffer addresses, lengths and file offsets that are
// multiples of Alignment (4 KiB), and a non-empty buffer. AlignedBuffer
// makes such buffers (Go heap memory, see its doc). A Flush or WriteAt
// that breaks the rule fails with ErrUnaligned before anything is written;
// the rule is enforced even on the buffered fallback so that tests on any
// filesystem catch what O_DIRECT would reject.
//
// # Errors
//
// Errors are the package's sentinels (ErrUnaligned, ErrShortWrite,
// ErrClosed, ErrUnavailable, ErrInjected) or the kernel's errno, wrapped
// with %w and the file name and offset: test them with errors.Is. After a
// failed Flush the state of its ops is unknown (the log fails stop).
//
// # Fault injection
//
// Faulty wraps any Engine and the files it opens: tests arm one-shot faults
// (FailWrite, FailSync, TearWrite, each after N more successful operations)
// or Crash the disk, and read counters (Stats) to assert, for instance,
// that one synced Flush of one file is one fdatasync.
//
// # Building
//
// giouring reaches syscall.mmap and syscall.munmap with go:linkname, which
// Go 1.23 and later refuse at link time unless the linker runs with
// -checklinkname=0. Every build, test, vet and benchmark of a package that
// imports ioengine needs it:
//
//	go test -ldflags=-checklinkname=0 -race ./ioengine/
//
// (the Makefile passes it everywhere). The client SDK never imports this
// package.
package ioengine
