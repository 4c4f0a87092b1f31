package wire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// samples holds one valid payload of every request and response type that
// has a body, with a function that decodes and re-encodes it.
func samples() map[Type]struct {
	payload []byte
	rt      func([]byte) ([]byte, error)
} {
	type entry = struct {
		payload []byte
		rt      func([]byte) ([]byte, error)
	}
	return map[Type]entry{
		TypeMetadata: {(&Metadata{Topics: []string{"orders", "payments"}}).Append(nil), func(b []byte) ([]byte, error) {
			var m Metadata
			err := DecodeMetadata(b, &m)
			return m.Append(nil), err
		}},
		TypeMetaResp: {(&MetaResp{BrokerID: "b1", Topics: []TopicInfo{{"orders", 4}, {"missing", 0}}}).Append(nil), func(b []byte) ([]byte, error) {
			var m MetaResp
			err := DecodeMetaResp(b, &m)
			return m.Append(nil), err
		}},
		TypeOffsets: {(&Offsets{Group: "g", Topic: "orders", At: 1234}).Append(nil), func(b []byte) ([]byte, error) {
			var m Offsets
			err := DecodeOffsets(b, &m)
			return m.Append(nil), err
		}},
		TypeOffsetsResp: {(&OffsetsResp{Members: 2, Queues: []QueueOffsets{{0, 1, 9, 4, 7}, {1, 0, 0, 0, NoOffset}}}).Append(nil), func(b []byte) ([]byte, error) {
			var m OffsetsResp
			err := DecodeOffsetsResp(b, &m)
			return m.Append(nil), err
		}},
		TypeReset: {(&Reset{Group: "g", Topic: "orders", To: ResetTime, At: 99, Force: true}).Append(nil), func(b []byte) ([]byte, error) {
			var m Reset
			err := DecodeReset(b, &m)
			return m.Append(nil), err
		}},
		TypeFetchTags: {(&FetchTags{Fetch: Fetch{Topic: "orders", Queue: 1, Offset: 5, MaxMessages: 10, MaxBytes: 1 << 20, MaxWaitMs: 100}, Expr: "a || b"}).Append(nil),
			func(b []byte) ([]byte, error) {
				var m FetchTags
				err := DecodeFetchTags(b, &m)
				return m.Append(nil), err
			}},
		TypeProduceAt: {(&ProduceAt{DeliverAt: 1 << 60, Produce: Produce{Topic: "orders", Queue: AnyQueue, Count: 1, Body: []byte("b"), ProducerID: 3, Seq: 4}}).Append(nil),
			func(b []byte) ([]byte, error) {
				var m ProduceAt
				err := DecodeProduceAt(b, &m)
				return m.Append(nil), err
			}},
		TypeClientReport: {(&ClientReport{Aside: []AsideReport{{Addr: "10.0.0.1:7420", ForMs: 1500, Isolations: 3, Reason: "slow: 250ms"}, {Addr: "b:1"}}}).Append(nil),
			func(b []byte) ([]byte, error) {
				var m ClientReport
				err := DecodeClientReport(b, &m)
				return m.Append(nil), err
			}},
		TypeLookup: {(&Lookup{Topic: "orders", Key: []byte("k"), Max: 10}).Append(nil), func(b []byte) ([]byte, error) {
			var m Lookup
			err := DecodeLookup(b, &m)
			return m.Append(nil), err
		}},
		TypeLookupResp: {(&LookupResp{Hits: []KeyHit{{1, 5}, {0, 2}}}).Append(nil), func(b []byte) ([]byte, error) {
			var m LookupResp
			err := DecodeLookupResp(b, &m)
			return m.Append(nil), err
		}},
		TypeCreate: {(&Create{Topic: "orders", Queues: 8}).Append(nil), func(b []byte) ([]byte, error) {
			var m Create
			err := DecodeCreate(b, &m)
			return m.Append(nil), err
		}},
		TypeDeleteTopic: {(&DeleteTopic{Topic: "orders"}).Append(nil), func(b []byte) ([]byte, error) {
			var m DeleteTopic
			err := DecodeDeleteTopic(b, &m)
			return m.Append(nil), err
		}},
		TypeGroupSync: {(&GroupSync{Group: "g", Member: "m-1", SessionMs: 5000, Topics: []string{"orders"},
			Owned: []QueueRef{{"orders", 0}, {"orders", 3}}}).Append(nil), func(b []byte) ([]byte, error) {
			var m GroupSync
			err := DecodeGroupSync(b, &m)
			return m.Append(nil), err
		}},
		TypeAssignment: {(&Assignment{Generation: 7, Pending: true, Queues: []Assigned{{QueueRef{"orders", 1}, 42}, {QueueRef{"orders", 2}, NoOffset}}}).Append(nil),
			func(b []byte) ([]byte, error) {
				var m Assignment
				err := DecodeAssignment(b, &m)
				return m.Append(nil), err
			}},
		TypeCommit: {(&Commit{Group: "g", Member: "m-1", Offsets: []OffsetCommit{{QueueRef{"orders", 1}, 43}}}).Append(nil), func(b []byte) ([]byte, error) {
			var m Commit
			err := DecodeCommit(b, &m)
			return m.Append(nil), err
		}},
		TypeReplStart: {(&ReplStart{Follower: "f1", SegmentSize: 1 << 30, LastEpoch: 2, End: 4096, HeartbeatMs: 1000}).Append(nil), func(b []byte) ([]byte, error) {
			var m ReplStart
			err := DecodeReplStart(b, &m)
			return m.Append(nil), err
		}},
		TypeReplHello: {(&ReplHello{Leader: "l1", Epoch: 3, Epochs: []Epoch{{1, 0, "l0"}, {3, 900, "l1"}}, TruncateTo: NoTruncate, From: 4096,
			TimeoutMs: 10000, HeartbeatMs: 1000}).Append(nil), func(b []byte) ([]byte, error) {
			var m ReplHello
			err := DecodeReplHello(b, &m)
			return m.Append(nil), err
		}},
		TypeReplData: {(&ReplData{Epoch: 3, Pos: 4096, Next: 4100, Visible: 5000, Records: []byte("abcd")}).Append(nil), func(b []byte) ([]byte, error) {
			var m ReplData
			err := DecodeReplData(b, &m)
			return m.Append(nil), err
		}},
		TypeElect: {(&Elect{Group: "g1", Broker: "b2", Flags: ElectUnclean}).Append(nil), func(b []byte) ([]byte, error) {
			var m Elect
			err := DecodeElect(b, &m)
			return m.Append(nil), err
		}},
		TypeReplAck: {(&ReplAck{Epoch: 3, Durable: 10, Written: 20}).Append(nil), func(b []byte) ([]byte, error) {
			var m ReplAck
			err := DecodeReplAck(b, &m)
			return m.Append(nil), err
		}},
		TypeEpochInfo: {(&EpochInfo{Epoch: 4, Leader: "b2", LeaderAddr: "10.0.0.2:7420"}).Append(nil), func(b []byte) ([]byte, error) {
			var m EpochInfo
			err := DecodeEpochInfo(b, &m)
			return m.Append(nil), err
		}},
		TypeRoute: {(&Route{Flags: RouteSelf}).Append(nil), func(b []byte) ([]byte, error) {
			var m Route
			err := DecodeRoute(b, &m)
			return m.Append(nil), err
		}},
		TypeRouteResp: {(&RouteResp{Brokers: []RouteBroker{
			{ID: "b1", Group: "g1", Addr: "10.0.0.1:7420", Role: "leader", Epoch: 2, Leader: "10.0.0.1:7420",
				Topics: []TopicInfo{{"orders", 4}}, Peers: []string{"10.0.0.2:7420"}},
			{ID: "b2", Addr: "10.0.0.2:7420", AgeMs: 900, Err: "no answer"},
			{ID: "b3", Group: "g1", Addr: "10.0.0.3:7420", Role: "waiting", Epoch: 2},
		}}).Append(nil), func(b []byte) ([]byte, error) {
			var m RouteResp
			err := DecodeRouteResp(b, &m)
			return m.Append(nil), err
		}},
		TypeStatusResp: {AppendStatusResp(nil, []byte(`{"ok":true}`)), func(b []byte) ([]byte, error) {
			doc, err := DecodeStatusResp(b)
			return AppendStatusResp(nil, doc), err
		}},
	}
}

func TestNewMessagesRoundTrip(t *testing.T) {
	for typ, s := range samples() {
		got, err := s.rt(s.payload)
		if err != nil || !bytes.Equal(got, s.payload) {
			t.Errorf("type %d: round trip %v", typ, err)
		}
		// Every strict prefix is rejected as malformed, never accepted or panicking.
		for i := 0; i < len(s.payload); i++ {
			if _, err := s.rt(s.payload[:i]); !errors.Is(err, ErrMalformed) {
				t.Errorf("type %d: prefix of %d bytes: %v", typ, i, err)
			}
		}
		if _, err := s.rt(append(append([]byte(nil), s.payload...), 0)); !errors.Is(err, ErrMalformed) {
			t.Errorf("type %d: trailing byte accepted: %v", typ, err)
		}
	}
}

func TestListCountsAreCheckedBeforeAllocating(t *testing.T) {
	// A Metadata that claims 4096 topics in 2 bytes.
	if err := DecodeMetadata([]byte{0x00, 0x10}, &Metadata{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("lying topic count: %v", err)
	}
	// A GroupSync whose owned list claims more than fits.
	b := (&GroupSync{Group: "g", Member: "m"}).Append(nil)
	b[len(b)-2], b[len(b)-1] = 0xff, 0x0f
	if err := DecodeGroupSync(b, &GroupSync{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("lying owned count: %v", err)
	}
	if err := DecodeCreate((&Create{Topic: "t", Queues: 0}).Append(nil), &Create{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("topic of 0 queues: %v", err)
	}
	if err := DecodeGroupSync((&GroupSync{Group: "", Member: "m"}).Append(nil), &GroupSync{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty group: %v", err)
	}
}

func TestBatchAndHeaders(t *testing.T) {
	hs := []UserHeader{{"trace", []byte("abc")}, {"empty", []byte{}}}
	enc := AppendHeaders(nil, hs)
	if len(enc) != HeadersSize(hs) {
		t.Fatalf("HeadersSize %d, encoded %d", HeadersSize(hs), len(enc))
	}
	got, err := DecodeHeaders(enc)
	if err != nil || !reflect.DeepEqual(got, hs) {
		t.Fatalf("headers: %+v %v", got, err)
	}
	var body []byte
	entries := []BatchEntry{{Key: []byte("k1"), Tags: []byte{}, Headers: enc, Body: []byte("one")},
		{Key: []byte{}, Tags: []byte("t"), Headers: []byte{}, Body: []byte("two")}}
	for i := range entries {
		body = AppendBatchEntry(body, &entries[i])
	}
	dec, err := DecodeBatch(body, 2, nil)
	if err != nil || !reflect.DeepEqual(dec, entries) {
		t.Fatalf("batch: %+v %v", dec, err)
	}
	if _, err := DecodeBatch(body, 3, nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("batch with a wrong count: %v", err)
	}
	if _, err := DecodeBatch(body, 1, nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("batch with trailing entries: %v", err)
	}
	if _, err := DecodeBatch(nil, 1<<30, nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("batch count that cannot fit: %v", err)
	}
}

// FuzzDecodeAny feeds arbitrary payloads to the decoder of every frame
// type: each must return a value or an error wrapping ErrMalformed, and a
// value must re-encode to the same bytes.
func FuzzDecodeAny(f *testing.F) {
	for typ, s := range samples() {
		f.Add(byte(typ), s.payload)
	}
	f.Add(byte(TypeOK), []byte{})
	f.Fuzz(func(t *testing.T, typ byte, b []byte) {
		s, ok := samples()[Type(typ)]
		if !ok {
			decodeAny(Type(typ), b)
			return
		}
		got, err := s.rt(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("type %d: error not ErrMalformed: %v", typ, err)
			}
			return
		}
		if !bytes.Equal(got, b) {
			t.Fatalf("type %d: decoded payload re-encodes differently", typ)
		}
	})
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add(AppendBatchEntry(nil, &BatchEntry{Key: []byte("k"), Body: []byte("b")}), uint32(1))
	f.Add(AppendHeaders(nil, []UserHeader{{"a", []byte("b")}}), uint32(0))
	f.Fuzz(func(t *testing.T, b []byte, n uint32) {
		if es, err := DecodeBatch(b, n, nil); err == nil {
			var enc []byte
			for i := range es {
				enc = AppendBatchEntry(enc, &es[i])
			}
			if !bytes.Equal(enc, b) {
				t.Fatal("batch re-encodes differently")
			}
		}
		if hs, err := DecodeHeaders(b); err == nil && !bytes.Equal(AppendHeaders(nil, hs), b) {
			t.Fatal("headers re-encode differently")
		}
	})
}

// A Status request's selection: round trip; an empty payload is the
// defaults (what clients before it send); a cut one or a limit past
// MaxStatusTopics is refused.
func TestStatusSel(t *testing.T) {
	in := StatusSel{Topic: "orders", From: "a", Limit: 50}
	b := in.Append(nil)
	var out StatusSel
	if err := DecodeStatusSel(b, &out); err != nil || out != in {
		t.Fatalf("round trip: %+v %v", out, err)
	}
	if len((&StatusSel{}).Append(nil)) != 0 {
		t.Fatal("the zero selection is not encoded as nothing")
	}
	if err := DecodeStatusSel(nil, &out); err != nil || out != (StatusSel{}) {
		t.Fatalf("empty payload: %+v %v", out, err)
	}
	for n := 1; n < len(b); n++ {
		if err := DecodeStatusSel(b[:n], &out); !errors.Is(err, ErrMalformed) {
			t.Fatalf("prefix of %d bytes: %v", n, err)
		}
	}
	if err := DecodeStatusSel((&StatusSel{Limit: MaxStatusTopics + 1}).Append(nil), &out); !errors.Is(err, ErrMalformed) {
		t.Fatalf("limit over the maximum: %v", err)
	}
}
