package outbox

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// lockFileOffset is where the lock's one byte is, far past the pid the
// file holds: a LockFileEx lock is mandatory, and a lock over the pid would
// keep a second opener from reading it for its error message. Windows
// allows a lock past the end of a file.
const lockFileOffset = 1 << 62

// lockFile takes an exclusive LockFileEx lock of f without waiting. It
// belongs to f's handle, as a flock belongs to an open file description,
// and goes with it when f is closed. held says that the error is another
// holder's lock (ERROR_LOCK_VIOLATION) rather than a failure to lock at
// all.
func lockFile(f *os.File) (held bool, err error) {
	ol := &windows.Overlapped{Offset: lockFileOffset & 0xffffffff, OffsetHigh: lockFileOffset >> 32}
	err = windows.LockFileEx(windows.Handle(f.Fd()),
		windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
	return errors.Is(err, windows.ERROR_LOCK_VIOLATION), err
}
