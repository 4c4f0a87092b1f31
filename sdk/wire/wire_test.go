package wire

import (
	"bytes"
	"errors"
	"io"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

func TestRetryableTable(t *testing.T) {
	cases := []struct {
		code      Code
		retryable bool
	}{
		{CodeBusy, true}, // incident 001: BUSY must be retried elsewhere
		{CodeTimeout, true},
		{CodeNotLeader, true},
		{CodeNotEnoughReplicas, true},
		{CodeStopping, true},
		{CodeStorageFailed, true},
		{CodeTooLarge, false},
		{CodeInvalid, false},
		{CodeUnauthorized, false},
		{CodeUnknownTopic, false},
		{CodeUnsupportedVersion, false},
		{CodeOffsetOutOfRange, false},
		{CodeInternal, false},
		{CodeForbidden, false}, // a right the principal lacks: retrying cannot grant it
		{CodeOK, false},
		{Code(999), false}, // unknown codes are never retried blindly
	}
	for _, c := range cases {
		if got := c.code.Retryable(); got != c.retryable {
			t.Errorf("%v.Retryable() = %v, want %v", c.code, got, c.retryable)
		}
		if got := (&Error{Code: c.code}).Retryable(); got != c.retryable {
			t.Errorf("Error{%v}.Retryable() = %v", c.code, got)
		}
	}
	for c := Code(1); c < codeLimit; c++ {
		if codeInfo[c].name == "" {
			continue
		}
		if strings.HasPrefix(c.String(), "CODE_") {
			t.Errorf("code %d has no name", c)
		}
	}
}

func TestRoundTrips(t *testing.T) {
	h := Hello{Version: ProtocolVersion, ClientID: "app-1", Credentials: []byte("token"), Build: "quiver-go/v1.2.3 (abc; go1.26.8; linux/amd64)"}
	var h2 Hello
	if err := DecodeHello(h.Append(nil), &h2); err != nil || !reflect.DeepEqual(h, h2) {
		t.Fatalf("hello: %+v %v", h2, err)
	}
	// Version 3 had no build; a newer version's fields past the
	// credentials are left to the version check (UNSUPPORTED_VERSION).
	h3 := Hello{Version: 3, ClientID: "old", Credentials: []byte("token")}
	if err := DecodeHello(h3.Append(nil), &h2); err != nil || !reflect.DeepEqual(h3, h2) {
		t.Fatalf("hello v3: %+v %v", h2, err)
	}
	if err := DecodeHello(append(h3.Append(nil), 1, 2, 3), &h2); err == nil {
		t.Fatal("a version 3 hello with trailing bytes decoded")
	}
	h5 := (&Hello{Version: ProtocolVersion + 1, ClientID: "new"}).Append(nil)
	if err := DecodeHello(append(h5, 9, 9, 9, 9, 9), &h2); err != nil || h2.Version != ProtocolVersion+1 || h2.ClientID != "new" {
		t.Fatalf("hello of a newer version: %+v %v", h2, err)
	}
	ok := HelloOK{Version: 1, BrokerID: "b1", Session: 42}
	var ok2 HelloOK
	if err := DecodeHelloOK(ok.Append(nil), &ok2); err != nil || ok != ok2 {
		t.Fatalf("hello ok: %+v %v", ok2, err)
	}
	p := Produce{Topic: "orders", Queue: AnyQueue, Durability: DurabilitySync, Flags: 4, Count: 3, ClientTime: 7,
		Key: []byte("k"), Tags: []byte("t"), Headers: []byte("h"), Body: []byte("body")}
	var p2 Produce
	if err := DecodeProduce(p.Append(nil), &p2); err != nil || !reflect.DeepEqual(p, p2) {
		t.Fatalf("produce: %+v %v", p2, err)
	}
	a := ProduceAck{Queue: 2, Offset: 99, StoreTime: 5, Epoch: 7}
	var a2 ProduceAck
	if err := DecodeProduceAck(a.Append(nil), &a2); err != nil || a != a2 {
		t.Fatalf("ack: %+v %v", a2, err)
	}
	f := Fetch{Topic: "orders", Queue: 1, Offset: 10, MaxMessages: 32, MaxBytes: 1 << 20, MaxWaitMs: 500}
	var f2 Fetch
	if err := DecodeFetch(f.Append(nil), &f2); err != nil || f != f2 {
		t.Fatalf("fetch: %+v %v", f2, err)
	}
	msgs := []FetchedMessage{{Offset: 10, StoreTime: 1, ClientTime: 2, Flags: 0, Count: 1, Key: []byte{}, Tags: []byte{}, Headers: []byte{}, Body: []byte("a")},
		{Offset: 11, StoreTime: 3, Count: 1, Key: []byte("k"), Tags: []byte{}, Headers: []byte("h"), Body: []byte("bb")}}
	fh := FetchHeader{Next: 12, Min: 3, Max: 12, Count: uint32(len(msgs))}
	b := AppendFetchResp(nil, fh)
	for i := range msgs {
		b = msgs[i].Append(b)
	}
	gh, got, err := DecodeFetchResp(b, nil)
	if err != nil || gh != fh || !reflect.DeepEqual(got, msgs) {
		t.Fatalf("fetch resp: %+v %+v %v", gh, got, err)
	}
	e := &Error{Code: CodeBusy, Message: "waited 230ms in queue, depth 880"}
	e2, err := DecodeError(AppendError(nil, e))
	if err != nil || *e2 != *e {
		t.Fatalf("error: %+v %v", e2, err)
	}
}

func TestFramesOnAStream(t *testing.T) {
	var stream bytes.Buffer
	p := Produce{Topic: "t", Queue: 0, Body: []byte("x")}
	stream.Write(AppendFrame(nil, Header{Type: TypeProduce, RequestID: 1}, p.Append(nil)))
	b, start := BeginFrame(nil, Header{Type: TypeProduce, RequestID: 2})
	b = EndFrame(p.Append(b), start)
	stream.Write(b)
	var buf []byte
	for id := uint64(1); id <= 2; id++ {
		h, payload, nb, err := ReadFrame(&stream, buf)
		buf = nb
		if err != nil || h.Type != TypeProduce || h.RequestID != id {
			t.Fatalf("frame %d: %+v %v", id, h, err)
		}
		var got Produce
		if err := DecodeProduce(payload, &got); err != nil || string(got.Body) != "x" {
			t.Fatalf("frame %d payload: %v", id, err)
		}
	}
	if _, _, _, err := ReadFrame(&stream, buf); !errors.Is(err, io.EOF) {
		t.Fatalf("end of stream: %v", err)
	}
}

func TestBadInputIsRejected(t *testing.T) {
	big := AppendFrame(nil, Header{Type: TypeProduce}, nil)
	big[0], big[1], big[2], big[3] = 0xff, 0xff, 0xff, 0x7f
	if _, _, err := DecodeHeader(big); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("huge frame: %v", err)
	}
	bad := AppendFrame(nil, Header{Type: 99}, nil)
	if _, _, err := DecodeHeader(bad); !errors.Is(err, ErrMalformed) {
		t.Errorf("unknown type: %v", err)
	}
	p := Produce{Topic: "t", Body: []byte("x")}
	enc := p.Append(nil)
	var m Produce
	for _, b := range [][]byte{enc[:len(enc)-1], append(enc, 0), nil} {
		if err := DecodeProduce(b, &m); !errors.Is(err, ErrMalformed) {
			t.Errorf("truncated or padded produce accepted: %v", err)
		}
	}
	if err := DecodeProduce((&Produce{Body: []byte("x")}).Append(nil), &m); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty topic accepted: %v", err)
	}
	if err := DecodeFetch((&Fetch{Topic: "t"}).Append(nil), &Fetch{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("fetch of 0 messages accepted: %v", err)
	}
	// A count that cannot fit is refused before anything is allocated.
	if _, _, err := DecodeFetchResp(AppendFetchResp(nil, FetchHeader{Count: 1000}), nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("fetch response with a lying count accepted: %v", err)
	}
}

func TestProduceEncodeDecodeAllocations(t *testing.T) {
	p := Produce{Topic: "orders", Queue: 1, Key: []byte("k"), Body: make([]byte, 1024)}
	buf := make([]byte, 0, 2048)
	if n := testing.AllocsPerRun(100, func() { buf = p.Append(buf[:0]) }); n != 0 {
		t.Fatalf("Produce.Append allocates %v times", n)
	}
	var m Produce
	// One allocation: the topic string, which the broker keeps.
	if n := testing.AllocsPerRun(100, func() { DecodeProduce(buf, &m) }); n > 1 {
		t.Fatalf("DecodeProduce allocates %v times", n)
	}
}

// The SDK must build with a plain `go get`: nothing under sdk/ may pull in
// the broker's packages or giouring (which needs a special linker flag).
func TestSDKImportsNothingOfTheBroker(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/quivermq/quiver/sdk/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"giouring", "quiver/ioengine", "quiver/log", "quiver/index", "quiver/daemon"} {
			if strings.Contains(dep, banned) {
				t.Errorf("sdk depends on %s", dep)
			}
		}
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, Header{Type: TypeProduce, RequestID: 3}, (&Produce{Topic: "t", Body: []byte("x")}).Append(nil)))
	f.Add(AppendFrame(nil, Header{Type: TypeHello}, nil))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		var buf []byte
		for i := 0; i < 100; i++ {
			h, payload, nb, err := ReadFrame(r, buf)
			buf = nb
			if err != nil {
				return
			}
			if cap(buf) > len(b)+4096 {
				t.Fatalf("buffer grew to %d for %d input bytes", cap(buf), len(b))
			}
			decodeAny(h.Type, payload)
		}
	})
}

// decodeAny runs the decoder of the frame's type (must not panic).
func decodeAny(t Type, b []byte) {
	switch t {
	case TypeHello:
		DecodeHello(b, &Hello{})
	case TypeHelloOK:
		DecodeHelloOK(b, &HelloOK{})
	case TypeError:
		DecodeError(b)
	case TypeProduce:
		DecodeProduce(b, &Produce{})
	case TypeProduceAck:
		DecodeProduceAck(b, &ProduceAck{})
	case TypeFetch:
		DecodeFetch(b, &Fetch{})
	case TypeFetchResp:
		DecodeFetchResp(b, nil)
	case TypeMetadata:
		DecodeMetadata(b, &Metadata{})
	case TypeMetaResp:
		DecodeMetaResp(b, &MetaResp{})
	case TypeCreate:
		DecodeCreate(b, &Create{})
	case TypeDeleteTopic:
		DecodeDeleteTopic(b, &DeleteTopic{})
	case TypeStatus:
		DecodeStatusSel(b, &StatusSel{})
	case TypeOffsets:
		DecodeOffsets(b, &Offsets{})
	case TypeOffsetsResp:
		DecodeOffsetsResp(b, &OffsetsResp{})
	case TypeReset:
		DecodeReset(b, &Reset{})
	case TypeLookup:
		DecodeLookup(b, &Lookup{})
	case TypeFetchTags:
		DecodeFetchTags(b, &FetchTags{})
	case TypeProduceAt:
		DecodeProduceAt(b, &ProduceAt{})
	case TypeClientReport:
		DecodeClientReport(b, &ClientReport{})
	case TypeLookupResp:
		DecodeLookupResp(b, &LookupResp{})
	case TypeOK:
		DecodeEmpty(b)
	case TypeGroupSync:
		DecodeGroupSync(b, &GroupSync{})
	case TypeAssignment:
		DecodeAssignment(b, &Assignment{})
	case TypeCommit:
		DecodeCommit(b, &Commit{})
	case TypeStatusResp:
		DecodeStatusResp(b)
	case TypeReplStart:
		DecodeReplStart(b, &ReplStart{})
	case TypeReplHello:
		DecodeReplHello(b, &ReplHello{})
	case TypeReplData:
		DecodeReplData(b, &ReplData{})
	case TypeReplAck:
		DecodeReplAck(b, &ReplAck{})
	case TypeEpochInfo:
		DecodeEpochInfo(b, &EpochInfo{})
	case TypePromote:
		DecodeEmpty(b)
	case TypeRoute:
		DecodeRoute(b, &Route{})
	case TypeRouteResp:
		DecodeRouteResp(b, &RouteResp{})
	case TypeElect:
		DecodeElect(b, &Elect{})
	}
}

func FuzzDecodeProduce(f *testing.F) {
	f.Add((&Produce{Topic: "orders", Queue: 2, Key: []byte("k"), Body: []byte("b")}).Append(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Produce
		if err := DecodeProduce(b, &m); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		if got := m.Append(nil); !bytes.Equal(got, b) {
			t.Fatal("decoded produce re-encodes differently")
		}
	})
}

func FuzzDecodeFetchResp(f *testing.F) {
	b := AppendFetchResp(nil, FetchHeader{Next: 5, Max: 5, Count: 1})
	f.Add((&FetchedMessage{Offset: 4, Count: 1, Body: []byte("x")}).Append(b))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, msgs, err := DecodeFetchResp(b, nil)
		if err != nil {
			return
		}
		enc := AppendFetchResp(nil, h)
		for i := range msgs {
			enc = msgs[i].Append(enc)
		}
		if !bytes.Equal(enc, b) {
			t.Fatal("decoded fetch response re-encodes differently")
		}
	})
}

func FuzzDecodeHello(f *testing.F) {
	f.Add((&Hello{Version: 1, ClientID: "c", Credentials: []byte("x")}).Append(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Hello
		if DecodeHello(b, &m) == nil && !bytes.Equal(m.Append(nil), b) {
			t.Fatal("decoded hello re-encodes differently")
		}
	})
}
