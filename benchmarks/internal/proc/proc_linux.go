package proc

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// childAttr puts the child in its own process group (a Ctrl-C reaches
// quiver-bench, which stops it in order) and has it sent SIGTERM should
// quiver-bench die first.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

func onTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}
