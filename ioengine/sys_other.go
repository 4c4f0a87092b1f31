//go:build unix && !linux

package ioengine

import (
	"errors"

	"golang.org/x/sys/unix"
)

// oDirect is zero where the platform has no O_DIRECT flag: files are
// buffered, DirectIO reports false, and durability rests on fsync alone.
const oDirect = 0

// fdatasync falls back to fsync, which is a superset of it.
func fdatasync(fd int) error { return unix.Fsync(fd) }

// fallocate is not portable; Allocate falls back to extending the size.
func fallocate(fd int, size int64) error { return errors.ErrUnsupported }
