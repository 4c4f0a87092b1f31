package fsutil

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Allocate gives f's range [off, off+n) disk blocks, growing the file if
// needed, so that a write through a memory mapping of it cannot fault for
// lack of space (SIGBUS): a full file system fails here, with ENOSPC,
// instead. A range already allocated needs no free space. Where fallocate
// is not supported, zeros are written.
func Allocate(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	err := unix.Fallocate(int(f.Fd()), 0, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		err = writeZeros(f, off, n)
	}
	if err != nil {
		return fmt.Errorf("allocate %d bytes at %d of %s: %w", n, off, f.Name(), err)
	}
	return nil
}
