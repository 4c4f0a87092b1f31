// Package quicerr names why a QUIC connection or stream ended, for the
// logs of the broker's client connections and of replication: who closed
// it, with the code and message it carried, or an idle timeout.
package quicerr

import (
	"errors"
	"fmt"
	"io"

	"github.com/quic-go/quic-go"
)

// CloseReason names who closed a connection and why, from a stream or
// connection error.
func CloseReason(err error) string {
	var ae *quic.ApplicationError
	var ie *quic.IdleTimeoutError
	switch {
	case errors.As(err, &ae):
		if ae.Remote {
			return fmt.Sprintf("peer closed the connection (code %d: %s)", ae.ErrorCode, ae.ErrorMessage)
		}
		return fmt.Sprintf("closed here (code %d: %s)", ae.ErrorCode, ae.ErrorMessage)
	case errors.As(err, &ie):
		return "idle timeout: nothing heard from the peer"
	case errors.Is(err, io.EOF):
		return "peer closed the stream"
	}
	return err.Error()
}
