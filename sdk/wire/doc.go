// Package wire is Quiver's protocol codec, shared by the SDK and the broker.
// It does no I/O of its own beyond reading and writing frames on a stream,
// and imports nothing of the broker, so applications build it with a plain
// `go get`.
//
// # Frames
//
// Every message on a QUIC stream is one frame, little endian:
//
//	length u32 | type u8 | flags u8 | reserved u16 | request id u64 | payload
//
// length counts every byte after itself (so at least 12) and is at most
// MaxFrameSize. Many requests are in flight on one stream at once; the
// response to a request carries its request id.
//
// # Payloads
//
// Each frame type has a payload struct with an Append method (append-style
// encoding, no allocation when dst has room) and a Decode function that
// rejects bad input with an error wrapping ErrMalformed, never panics, and
// never allocates more than the input's own size.
//
// # Errors
//
// Failures travel as an Error payload: a Code, whether it is retryable (one
// table, codes.go), and a message. The SDK retries exactly the retryable ones.
package wire
