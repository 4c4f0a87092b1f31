package main

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// filesReserve is what the broker keeps of its open-file limit for all but
// the consume-queue files: log segments, the key index, the admin
// listener's connections, certificates, state files.
const filesReserve = 256

// fileBudget says how many consume-queue files the index may keep open:
// the setting, or less where the process's open-file limit leaves too
// little room beside filesReserve. (Go raises the soft limit to the hard
// one at start; quiverd reports both.)
func fileBudget(want int, logger *slog.Logger) int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		logger.Warn("cannot read the open-file limit; keeping max_open_files", "max_open_files", want, "err", err)
		return want
	}
	budget := want
	if room := int64(lim.Cur) - filesReserve; lim.Cur != unix.RLIM_INFINITY && room < int64(want) {
		budget = int(max(room, 16))
		logger.Warn("the open-file limit leaves less room than max_open_files: fewer consume-queue files are kept open (raise the hard limit, e.g. LimitNOFILE in the systemd unit)",
			"limit", lim.Cur, "hard_limit", lim.Max, "max_open_files", want, "kept_open", budget)
	}
	logger.Info("open files", "limit", lim.Cur, "hard_limit", lim.Max, "consume_queue_files_kept_open", budget)
	return budget
}
