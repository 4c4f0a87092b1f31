package bench

import (
	"context"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// timerfdClock sleeps on a timerfd read through Go's netpoller: the
// kernel's high-resolution timer wakes it within tens of microseconds,
// where a Go timer wakes about a millisecond late for sleeps under one.
// Sleeps longer than fineSleep start on a Go timer (so that ctx can cut
// them short) and end on the timerfd.
type timerfdClock struct {
	goTimerClock
	fd   int
	file *os.File
	buf  [8]byte
}

const fineSleep = 3 * time.Millisecond

func newRealClock() clock {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return &goTimerClock{}
	}
	return &timerfdClock{fd: fd, file: os.NewFile(uintptr(fd), "timerfd")}
}

func (c *timerfdClock) SleepUntil(ctx context.Context, t time.Time) {
	if d := time.Until(t); d > fineSleep {
		c.goTimerClock.SleepUntil(ctx, t.Add(-fineSleep))
	}
	d := time.Until(t)
	if d <= 0 || ctx.Err() != nil {
		return
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if unix.TimerfdSettime(c.fd, 0, &spec, nil) != nil {
		c.goTimerClock.SleepUntil(ctx, t)
		return
	}
	if _, err := c.file.Read(c.buf[:]); err != nil {
		c.goTimerClock.SleepUntil(ctx, t)
	}
}

func (c *timerfdClock) Close() error { return c.file.Close() }
