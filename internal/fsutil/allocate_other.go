//go:build !linux

package fsutil

import (
	"fmt"
	"os"
)

// Allocate gives f's range [off, off+n) disk blocks by writing zeros
// (fallocate is Linux's): see the Linux version.
func Allocate(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	if err := writeZeros(f, off, n); err != nil {
		return fmt.Errorf("allocate %d bytes at %d of %s: %w", n, off, f.Name(), err)
	}
	return nil
}
