package wire

import "fmt"

// Code is a protocol error code.
type Code uint16

// Error codes. Their retryability is defined once, in codeInfo.
const (
	CodeOK                 Code = 0
	CodeBusy               Code = 1  // the broker's send queue waited past its limit
	CodeTimeout            Code = 2  // the broker did not finish in time
	CodeNotLeader          Code = 3  // this broker does not lead the queue
	CodeNotEnoughReplicas  Code = 4  // fewer in-sync followers than min-insync
	CodeStopping           Code = 5  // the broker is shutting down
	CodeStorageFailed      Code = 6  // the broker's log failed; another broker may take it
	CodeDiskFull           Code = 7  // the broker's disk is below its free-space reserve; sends resume when it has room
	CodeTooLarge           Code = 20 // message or field over its limit
	CodeInvalid            Code = 21 // malformed request
	CodeUnauthorized       Code = 22 // credentials refused
	CodeUnknownTopic       Code = 23 // no such topic and auto-create is off
	CodeUnsupportedVersion Code = 24 // protocol version not spoken by the broker
	CodeOffsetOutOfRange   Code = 25 // fetch offset below the queue's minimum or past its end
	CodeInternal           Code = 26 // a broker bug: retrying will not help
	CodeFenced             Code = 27 // a consumer-group member that no longer owns what it commits
	CodeForbidden          Code = 28 // the session's principal lacks the right the request needs
	codeLimit                   = 29
)

var codeInfo = [codeLimit]struct {
	name      string
	retryable bool
}{
	CodeOK:                 {"OK", false},
	CodeBusy:               {"BUSY", true},
	CodeTimeout:            {"TIMEOUT", true},
	CodeNotLeader:          {"NOT_LEADER", true},
	CodeNotEnoughReplicas:  {"NOT_ENOUGH_REPLICAS", true},
	CodeStopping:           {"STOPPING", true},
	CodeStorageFailed:      {"STORAGE_FAILED", true},
	CodeDiskFull:           {"DISK_FULL", true},
	CodeTooLarge:           {"TOO_LARGE", false},
	CodeInvalid:            {"INVALID", false},
	CodeUnauthorized:       {"UNAUTHORIZED", false},
	CodeUnknownTopic:       {"UNKNOWN_TOPIC", false},
	CodeUnsupportedVersion: {"UNSUPPORTED_VERSION", false},
	CodeOffsetOutOfRange:   {"OFFSET_OUT_OF_RANGE", false},
	CodeInternal:           {"INTERNAL", false},
	CodeFenced:             {"FENCED", false},
	CodeForbidden:          {"FORBIDDEN", false},
}

// Known reports whether c is a code this version defines.
func (c Code) Known() bool { return c < codeLimit && (c == CodeOK || codeInfo[c].name != "") }

// Retryable reports whether a request that failed with c may succeed if
// sent again, on this broker or another. Unknown codes are not retryable.
func (c Code) Retryable() bool { return c.Known() && codeInfo[c].retryable }

func (c Code) String() string {
	if c.Known() {
		return codeInfo[c].name
	}
	return fmt.Sprintf("CODE_%d", uint16(c))
}

// Error is a failure reported by a broker.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "quiver: " + e.Code.String()
	}
	return "quiver: " + e.Code.String() + ": " + e.Message
}

// Retryable reports whether the failed request may succeed if sent again.
func (e *Error) Retryable() bool { return e.Code.Retryable() }
