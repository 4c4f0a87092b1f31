//go:build !linux

package bench

func newRealClock() clock { return &goTimerClock{} }
