//go:build unix && !linux

package proc

import "syscall"

// childAttr puts the child in its own process group (no parent-death
// signal off Linux: a killed quiver-bench leaves it running).
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// onTmpfs is Linux's check; elsewhere no note.
func onTmpfs(string) bool { return false }
