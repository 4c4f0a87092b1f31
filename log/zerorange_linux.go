package log

import (
	"errors"

	"golang.org/x/sys/unix"
)

// zeroRange zeroes [off, off+n) of the file fd without writing it and
// without changing its size (fallocate's ZERO_RANGE). It returns
// errors.ErrUnsupported where the file system cannot: the caller writes
// zeros instead.
func zeroRange(fd int, off, n int64) error {
	err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return errors.ErrUnsupported
	}
	return err
}
