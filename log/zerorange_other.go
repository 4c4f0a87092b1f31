//go:build !linux

package log

import "errors"

// zeroRange is fallocate's ZERO_RANGE on Linux. Elsewhere (macOS, for
// development) the caller writes zeros.
func zeroRange(fd int, off, n int64) error { return errors.ErrUnsupported }
