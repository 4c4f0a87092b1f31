package log

import (
	"bytes"
	"errors"
	"testing"
)

func encodeForTest(m *Message, qoff uint64, store int64) []byte {
	b := make([]byte, m.EncodedSize())
	encodeRecord(b, m, qoff, store)
	return b
}

func TestRecordRoundTrip(t *testing.T) {
	m := &Message{Topic: "orders", QueueID: 7, Flags: FlagBatch | CompressionZstd, Count: 3, ClientTime: -5,
		Key: []byte("k"), Tags: []byte("a||b"), Headers: []byte("x=y"), Body: []byte("hello")}
	b := encodeForTest(m, 42, 99)
	var r Record
	n, err := DecodeRecord(append(b, 1, 2, 3), &r)
	if err != nil || n != len(b) {
		t.Fatalf("decode: %d %v", n, err)
	}
	if string(r.Topic) != "orders" || r.QueueID != 7 || r.QueueOffset != 42 || r.StoreTime != 99 || r.ClientTime != -5 ||
		r.Count != 3 || r.Flags != m.Flags || string(r.Key) != "k" || string(r.Tags) != "a||b" ||
		string(r.Headers) != "x=y" || string(r.Body) != "hello" || r.Size() != len(b) {
		t.Fatalf("decoded %+v", r)
	}
}

// An idempotent send's record stores its producer id and first sequence
// number (the producer flag), and decodes them back; without them the
// record is as before.
func TestRecordKeepsTheProducer(t *testing.T) {
	m := &Message{Topic: "orders", Flags: FlagBatch, Count: 2, Body: []byte("two"), ProducerID: 0xfeed, Seq: 1 << 40}
	b := encodeForTest(m, 5, 6)
	var r Record
	if n, err := DecodeRecord(b, &r); err != nil || n != len(b) || len(b) != m.EncodedSize() {
		t.Fatalf("decode: %d %v", n, err)
	}
	if r.ProducerID != 0xfeed || r.Seq != 1<<40 || r.Flags != FlagBatch|FlagProducer || string(r.Body) != "two" || r.Size() != len(b) {
		t.Fatalf("decoded %+v", r)
	}
	plain := encodeForTest(&Message{Topic: "orders", Body: []byte("x")}, 5, 6)
	if _, err := DecodeRecord(plain, &r); err != nil || r.ProducerID != 0 || r.Seq != 0 || len(plain) != HeaderSize+len("orders")+1 {
		t.Fatalf("a record without a producer: %+v %v", r, err)
	}
	if err := (&Message{Topic: "t", Flags: FlagProducer}).Validate(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a message setting the producer flag itself: %v, want ErrInvalid", err)
	}
}

func TestDecodeRejectsDamage(t *testing.T) {
	good := encodeForTest(&Message{Topic: "t", Body: []byte("body")}, 1, 2)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := map[string][]byte{
		"empty":        nil,
		"short header": good[:HeaderSize-1],
		"truncated":    good[:len(good)-1],
		"zero length":  mutate(func(b []byte) []byte { b[0], b[1], b[2], b[3] = 0, 0, 0, 0; return b }),
		"seal":         mutate(func(b []byte) []byte { b[0], b[1], b[2], b[3] = 0xff, 0xff, 0xff, 0xff; return b }),
		"bad crc":      mutate(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }),
		"huge length":  mutate(func(b []byte) []byte { b[3] = 0x7f; return b }),
	}
	for name, b := range cases {
		var r Record
		if _, err := DecodeRecord(b, &r); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", name, err)
		}
	}
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	b := encodeForTest(&Message{Topic: "t", Key: []byte("k"), Body: make([]byte, 1024)}, 1, 2)
	var r Record
	if n := testing.AllocsPerRun(100, func() { DecodeRecord(b, &r) }); n != 0 {
		t.Fatalf("DecodeRecord allocates %v times", n)
	}
}

// FuzzDecodeRecord: any bytes give a record or an error, never a panic, and
// a record that decodes re-encodes to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeForTest(&Message{Topic: "t", Body: []byte("x")}, 0, 0))
	f.Add(encodeForTest(&Message{Topic: "orders", QueueID: 3, Key: []byte("k"), Tags: []byte("tag"),
		Headers: []byte("h"), Body: bytes.Repeat([]byte("b"), 300), Flags: FlagBatch, Count: 4}, 9, 10))
	f.Add(encodeForTest(&Message{Topic: "p", Body: []byte("y"), ProducerID: 7, Seq: 9}, 1, 2))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(make([]byte, HeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Record
		n, err := DecodeRecord(b, &r)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not ErrCorrupt: %v", err)
			}
			return
		}
		m := &Message{Topic: string(r.Topic), QueueID: r.QueueID, Flags: r.Flags &^ FlagProducer, Count: r.Count,
			ClientTime: r.ClientTime, Key: r.Key, Tags: r.Tags, Headers: r.Headers, Body: r.Body,
			ProducerID: r.ProducerID, Seq: r.Seq}
		if got := encodeForTest(m, r.QueueOffset, r.StoreTime); !bytes.Equal(got, b[:n]) {
			t.Fatalf("re-encoding differs")
		}
	})
}
