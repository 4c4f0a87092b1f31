package broker

import (
	"bytes"
	"testing"
)

// FuzzOpenEnvelope: any body of a delay record gives an envelope or an
// error, never a panic, and an envelope re-encodes to the same bytes.
func FuzzOpenEnvelope(f *testing.F) {
	f.Add(appendEnvelope(nil, "orders", 3, 1<<60, []byte("body")))
	f.Add([]byte("QD\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		topic, queue, at, body, err := openEnvelope(b)
		if err != nil {
			return
		}
		if got := appendEnvelope(nil, topic, queue, at, body); !bytes.Equal(got, b) {
			t.Fatalf("re-encoding differs")
		}
	})
}
