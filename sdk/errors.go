package sdk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// BrokerError is an error a broker answered with: a code, whether it is
// retryable (one table, sdk/wire/codes.go), and a message.
type BrokerError = wire.Error

// Sentinel errors.
var (
	// ErrClosed is returned by a client, producer or consumer used after Close.
	ErrClosed = errors.New("quiver: closed")
	// ErrNoTrust is returned by NewClient when no way to verify brokers was given.
	ErrNoTrust = errors.New("quiver: no broker trust configured (WithCAFile, WithFingerprint or WithTLS)")
	// ErrTimeout is an attempt that got no answer within its time.
	ErrTimeout = errors.New("quiver: no answer in time")
)

// NetError is a failure of the network or of a connection: the request may
// succeed on another connection or broker. It is retryable.
type NetError struct {
	Broker string
	Err    error
}

func (e *NetError) Error() string { return fmt.Sprintf("quiver: broker %s: %v", e.Broker, e.Err) }
func (e *NetError) Unwrap() error { return e.Err }

// HandshakeError is a connection refused for a reason that is not the
// network's: the broker refused the Hello (credentials, protocol version),
// or its certificate is not trusted. Retrying at once cannot help; the
// client backs off its reconnects to this broker much further (incident
// 004) and reports the error to the application.
type HandshakeError struct {
	Broker string
	Err    error
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("quiver: broker %s refused the session: %v", e.Broker, e.Err)
}
func (e *HandshakeError) Unwrap() error { return e.Err }

// Retryable reports whether a failed request may succeed if sent again, on
// this broker or another. This is the SDK's one classification of errors;
// the producer retries exactly these.
func Retryable(err error) bool {
	var be *wire.Error
	var ne *NetError
	var he *HandshakeError
	switch {
	case err == nil:
		return false
	case errors.As(err, &he):
		return false // not the network's: reported, not retried in a loop (incident 004)
	case errors.As(err, &be):
		return be.Retryable() // BUSY, TIMEOUT, NOT_LEADER, ... (incident 001)
	case errors.Is(err, ErrTimeout):
		return true
	case errors.As(err, &ne):
		return true
	case errors.Is(err, ErrClosed), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	}
	return false
}

// nonNetwork reports whether a dial failure is not the network's fault: a
// certificate that does not verify, a TLS or ALPN mismatch.
func nonNetwork(err error) bool {
	var ue x509.UnknownAuthorityError
	var he x509.HostnameError
	var ce x509.CertificateInvalidError
	var ae *tls.AlertError
	switch {
	case errors.Is(err, ErrUntrusted), errors.As(err, &ue), errors.As(err, &he), errors.As(err, &ce), errors.As(err, &ae):
		return true
	}
	// quic-go reports TLS failures as CRYPTO_ERROR transport errors.
	return strings.Contains(err.Error(), "CRYPTO_ERROR") || strings.Contains(err.Error(), "tls:")
}

// Attempt is one try of a send.
type Attempt struct {
	Broker string
	// Code names the failure: a broker's code (BUSY, NOT_LEADER, ...), or
	// TIMEOUT, NETWORK, HANDSHAKE, CLOSED, CANCELLED.
	Code    string
	Err     error
	Latency time.Duration
}

func (a Attempt) String() string {
	return fmt.Sprintf("%s %s after %v: %v", a.Broker, a.Code, a.Latency.Round(time.Microsecond), a.Err)
}

// codeOf names an error for an Attempt.
func codeOf(err error) string {
	var be *wire.Error
	var he *HandshakeError
	var ne *NetError
	switch {
	case errors.As(err, &be):
		return be.Code.String()
	case errors.As(err, &he):
		return "HANDSHAKE"
	case errors.Is(err, ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "TIMEOUT"
	case errors.Is(err, ErrClosed):
		return "CLOSED"
	case errors.Is(err, context.Canceled):
		return "CANCELLED"
	case errors.As(err, &ne):
		return "NETWORK"
	}
	return "ERROR"
}

// SendError is a send that failed: its deadline was spent on retryable
// failures, or it failed with one that retrying cannot fix. It names every
// attempt (incident 001: nothing fails silently or vaguely).
type SendError struct {
	Topic string
	// KeyQueue is the key's queue (group/queue) of a message with a key,
	// which the send did not leave (WithKeyFailover moves it).
	KeyQueue string
	Attempts []Attempt
	// Err is the last attempt's error (or why no attempt could be made).
	Err error
}

func (e *SendError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "quiver: send to %s failed", e.Topic)
	if Retryable(e.Err) {
		b.WriteString(" (deadline spent)")
	}
	fmt.Fprintf(&b, " after %d attempt(s): ", len(e.Attempts))
	for i, a := range e.Attempts {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "#%d %s", i+1, a)
	}
	if len(e.Attempts) == 0 {
		b.WriteString(e.Err.Error())
	}
	if e.KeyQueue != "" && Retryable(e.Err) {
		fmt.Fprintf(&b, "; the message's key maps to queue %s, which is unavailable: it was not moved to another queue, "+
			"which would reorder the key's messages (WithKeyFailover moves it)", e.KeyQueue)
	}
	return b.String()
}

func (e *SendError) Unwrap() error { return e.Err }
