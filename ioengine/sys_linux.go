//go:build linux

package ioengine

import "golang.org/x/sys/unix"

// oDirect is O_DIRECT: writes bypass the page cache and go to the device
// when the syscall returns (durability still needs fdatasync for metadata
// and the device's volatile cache).
const oDirect = unix.O_DIRECT

func fdatasync(fd int) error { return unix.Fdatasync(fd) }

// fallocate reserves [0, size) and extends the file size to size (mode 0),
// so later writes inside it need no block allocation and no size update in
// the journal, which keeps fdatasync cheap.
func fallocate(fd int, size int64) error { return unix.Fallocate(fd, 0, 0, size) }
