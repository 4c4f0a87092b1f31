package proc

import "syscall"

// childAttr: Windows has neither process groups of this kind nor SIGTERM;
// Stop kills the child.
func childAttr() *syscall.SysProcAttr { return nil }

// onTmpfs is Linux's check; elsewhere no note.
func onTmpfs(string) bool { return false }
