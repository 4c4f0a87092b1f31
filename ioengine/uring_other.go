//go:build unix && !linux

package ioengine

import (
	"errors"
	"fmt"
	"log/slog"
)

const defaultRingEntries = 256

func probeIOUring() error { return errors.New("io_uring: not Linux") }

func newIOUring(entries int, logger *slog.Logger) (Engine, error) {
	return nil, fmt.Errorf("%w: io_uring: not Linux", ErrUnavailable)
}
