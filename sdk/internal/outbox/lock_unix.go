//go:build unix && !aix

package outbox

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// lockFile takes f's exclusive flock without waiting. held says that the
// error is another holder's lock (EWOULDBLOCK) rather than a failure to
// lock at all.
func lockFile(f *os.File) (held bool, err error) {
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	return errors.Is(err, unix.EWOULDBLOCK), err
}
