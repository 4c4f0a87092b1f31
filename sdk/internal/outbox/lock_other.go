//go:build !(unix && !aix) && !windows

package outbox

import (
	"fmt"
	"os"
	"runtime"
)

// lockFile fails: this platform has neither flock nor LockFileEx, and an
// outbox without its lock could be opened twice and lose entries. The rest
// of the SDK works without an outbox.
func lockFile(*os.File) (held bool, err error) {
	return false, fmt.Errorf("file locking is not supported on %s", runtime.GOOS)
}
