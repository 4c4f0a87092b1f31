//go:build !linux

package fsutil

import "errors"

// SyncFS is not available here: callers fsync each file (SyncAll).
func (osFS) SyncFS(string) error { return errors.ErrUnsupported }
