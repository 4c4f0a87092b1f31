package fsutil

import (
	"os"

	"golang.org/x/sys/unix"
)

// SyncFS makes everything written to the file system that holds path
// durable, names included, with one syncfs(2): for thousands of written
// files it is one journal commit instead of one fsync each. Since Linux
// 5.8 it reports a writeback error that happened since the descriptor was
// opened, as fsync does.
func (osFS) SyncFS(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	err = unix.Syncfs(int(d.Fd()))
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
