package log

import "unsafe"

// stringBytes views s as bytes without copying. The result must not be
// modified; it is used to hand topic names to dispatchers, which only read.
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
