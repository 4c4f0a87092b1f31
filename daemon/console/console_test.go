package console

import (
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/klauspost/compress/zstd"

	"github.com/quivermq/quiver/sdk/wire"
)

// fakeBroker is a broker in memory: queues of records, counters and a
// latency histogram the test sets.
type fakeBroker struct {
	mu       sync.Mutex
	counters Counters
	lat      *hdrhistogram.Histogram
	lags     []QueueLag
	queues   map[string][][]wire.FetchedMessage // topic -> queue -> records (offsets dense from min)
	min      map[string]uint64
	browses  int
}

func newFake() *fakeBroker {
	return &fakeBroker{lat: NewLatencyHistogram(), queues: map[string][][]wire.FetchedMessage{}, min: map[string]uint64{}}
}

func (f *fakeBroker) Counters() Counters {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counters
}

func (f *fakeBroker) SwapLatency(h *hdrhistogram.Histogram) *hdrhistogram.Histogram {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.lat
	f.lat = h
	return old
}

func (f *fakeBroker) GroupLags(dst []QueueLag) []QueueLag {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append(dst, f.lags...)
}

// add appends a record to topic/queue; batch records take count offsets.
func (f *fakeBroker) add(topic string, queue int, m wire.FetchedMessage) uint64 {
	qs := f.queues[topic]
	for len(qs) <= queue {
		qs = append(qs, nil)
	}
	recs := qs[queue]
	m.Offset = 0
	if n := len(recs); n > 0 {
		m.Offset = recs[n-1].Offset + uint64(max(recs[n-1].Count, 1))
	}
	qs[queue] = append(recs, m)
	f.queues[topic] = qs
	return m.Offset
}

func (f *fakeBroker) end(topic string, queue uint32) uint64 {
	recs := f.queues[topic][queue]
	if len(recs) == 0 {
		return 0
	}
	last := recs[len(recs)-1]
	return last.Offset + uint64(max(last.Count, 1))
}

func (f *fakeBroker) Browse(topic string, queue uint32, offset uint64, n int) (wire.FetchHeader, []wire.FetchedMessage, *wire.Error) {
	f.browses++
	qs, ok := f.queues[topic]
	if !ok {
		return wire.FetchHeader{}, nil, &wire.Error{Code: wire.CodeUnknownTopic, Message: "topic " + topic + " does not exist"}
	}
	if int(queue) >= len(qs) {
		return wire.FetchHeader{}, nil, &wire.Error{Code: wire.CodeInvalid, Message: "no such queue"}
	}
	h := wire.FetchHeader{Min: f.min[topic], Max: f.end(topic, queue)}
	offset = max(offset, h.Min)
	var out []wire.FetchedMessage
	for _, r := range qs[queue] {
		if r.Offset+uint64(max(r.Count, 1)) > offset && len(out) < n {
			out = append(out, r)
		}
	}
	return h, out, nil
}

func (f *fakeBroker) Lookup(req *wire.Lookup) (wire.LookupResp, *wire.Error) {
	qs, ok := f.queues[req.Topic]
	if !ok {
		return wire.LookupResp{}, &wire.Error{Code: wire.CodeUnknownTopic, Message: "topic " + req.Topic + " does not exist"}
	}
	var resp wire.LookupResp
	for q, recs := range qs {
		for _, r := range recs {
			if r.Flags&wire.FlagBatch == 0 && string(r.Key) == string(req.Key) {
				resp.Hits = append(resp.Hits, wire.KeyHit{Queue: uint32(q), Offset: r.Offset})
			}
		}
	}
	return resp, nil
}

func (f *fakeBroker) Offsets(req *wire.Offsets) (wire.OffsetsResp, *wire.Error) {
	qs, ok := f.queues[req.Topic]
	if !ok {
		return wire.OffsetsResp{}, &wire.Error{Code: wire.CodeUnknownTopic, Message: "topic " + req.Topic + " does not exist"}
	}
	var resp wire.OffsetsResp
	for q, recs := range qs {
		qo := wire.QueueOffsets{Queue: uint32(q), Max: f.end(req.Topic, uint32(q))}
		qo.AtOffset = qo.Max
		for _, r := range recs {
			if r.StoreTime >= req.At {
				qo.AtOffset = r.Offset
				break
			}
		}
		resp.Queues = append(resp.Queues, qo)
	}
	return resp, nil
}

func newConsole(f *fakeBroker) *Console {
	return New(Options{Broker: f, Status: func(wire.StatusSel) wire.Status {
		return wire.Status{Broker: wire.BrokerInfo{ID: "b1"}, Warnings: []string{}}
	}})
}

func get(t *testing.T, h http.Handler, path string, v any) int {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
	if v != nil {
		if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
			t.Fatalf("GET %s: %d %q: %v", path, w.Code, w.Body.String(), err)
		}
	}
	return w.Code
}

// The sampler turns counters into rates per second of the time that
// passed, and each second's send latencies into that second's
// percentiles; the histogram the broker records into is swapped, never
// shared, and starts empty each second.
func TestSamplerRatesAndPercentiles(t *testing.T) {
	f := newFake()
	c := newConsole(f)
	t0 := time.UnixMilli(1_000_000)
	f.counters = Counters{Sends: 100, Written: 1 << 20, Busy: 3}
	c.sample(t0)
	f.mu.Lock()
	f.counters = Counters{Sends: 1100, Written: 3 << 20, Busy: 5, DiskFull: 4, NotVisibleMs: 70, QueueDepth: 9}
	for i := 1; i <= 1000; i++ {
		f.lat.RecordValue(int64(i)) // 1..1000 µs
	}
	f.mu.Unlock()
	c.sample(t0.Add(2 * time.Second))
	// Nothing recorded in the next seconds: no percentiles, not the old
	// ones (the histogram that held them goes back to the broker, empty).
	c.sample(t0.Add(3 * time.Second))
	c.sample(t0.Add(4 * time.Second))

	var s Series
	get(t, c.API(), "/ui/api/series", &s)
	if len(s.T) != 3 || s.T[0] != t0.Add(2*time.Second).UnixMilli() {
		t.Fatalf("points at %v, want 3 (the first sample only sets the base)", s.T)
	}
	want := map[string]float64{"sends": 500, "bytes": 1 << 20, "busy": 1, "disk_full": 2, "not_visible_ms": 70, "queue_depth": 9, "max": 1000}
	for col, v := range want {
		if got := s.Cols[col][0]; got != v {
			t.Errorf("%s = %v, want %v", col, got, v)
		}
	}
	if p := s.Cols["p50"][0]; p < 495 || p > 505 {
		t.Errorf("p50 %v of 1..1000 µs", p)
	}
	if p := s.Cols["p99"][0]; p < 985 || p > 995 {
		t.Errorf("p99 %v of 1..1000 µs", p)
	}
	for i := 1; i <= 2; i++ {
		if s.Cols["p99"][i] != 0 || s.Cols["max"][i] != 0 || s.Cols["sends"][i] != 0 {
			t.Errorf("idle second %d shows p99 %v max %v sends %v, want 0", i, s.Cols["p99"][i], s.Cols["max"][i], s.Cols["sends"][i])
		}
	}
	if s.Totals.Sends != 1100 || s.Totals.DiskFull != 4 {
		t.Errorf("totals %+v", s.Totals)
	}
	// since= returns only newer points.
	var later Series
	get(t, c.API(), fmt.Sprintf("/ui/api/series?since=%d", s.T[0]), &later)
	if len(later.T) != 2 || later.T[0] != s.T[1] || len(later.Cols["sends"]) != 2 {
		t.Errorf("since the first point: %v", later.T)
	}
	if code := get(t, c.API(), "/ui/api/series?since=yesterday", &map[string]string{}); code != 400 {
		t.Errorf("since=yesterday: %d, want 400", code)
	}
}

// The ring keeps the newest Keep points, oldest first.
func TestSeriesKeepsTheNewest(t *testing.T) {
	f := newFake()
	c := New(Options{Broker: f, Status: func(wire.StatusSel) wire.Status { return wire.Status{} }, Keep: 5})
	t0 := time.UnixMilli(0)
	for i := 0; i <= 12; i++ {
		f.counters.Sends = int64(i * 10)
		c.sample(t0.Add(time.Duration(i) * time.Second))
	}
	var s Series
	get(t, c.API(), "/ui/api/series", &s)
	if len(s.T) != 5 || s.T[0] != 8000 || s.T[4] != 12000 {
		t.Fatalf("kept %v, want the 5 newest (8 s .. 12 s)", s.T)
	}
}

// Lag history: per queue for one group, totals per group, gaps where a
// queue was not sampled, ids freed once no kept sample has them, and a cap
// on the queues tracked.
func TestLagHistory(t *testing.T) {
	var h lagHistory
	h.init(3, 3)
	h.add(1, []QueueLag{{"g1", "a", 0, 5}, {"g1", "a", 1, 7}, {"g2", "a", 0, 1}})
	h.add(2, []QueueLag{{"g1", "a", 0, 6}, {"g2", "a", 0, 2}})
	h.add(3, []QueueLag{{"g1", "a", 0, 4}, {"g2", "a", 0, 3}, {"g3", "b", 0, 9}})
	if !h.overflow {
		t.Error("a 4th queue with a cap of 3: no overflow reported")
	}
	g1 := h.group("g1")
	if len(g1.Series) != 2 || fmt.Sprint(g1.Series[0].Lag) != "[5 6 4]" || fmt.Sprint(g1.Series[1].Lag) != "[7 -1 -1]" {
		t.Fatalf("g1: %+v", g1.Series)
	}
	all := h.group("")
	if len(all.Series) != 2 || all.Series[0].Group != "g1" || fmt.Sprint(all.Series[0].Lag) != "[12 6 4]" || fmt.Sprint(all.Series[1].Lag) != "[1 2 3]" {
		t.Fatalf("totals: %+v", all.Series)
	}
	// a/1 of g1 was last seen 3 samples ago: freed, and g3 gets its id.
	h.add(4, []QueueLag{{"g1", "a", 0, 1}, {"g2", "a", 0, 1}})
	h.add(5, []QueueLag{{"g3", "b", 0, 9}})
	if h.overflow {
		t.Error("overflow with a freed id")
	}
	if s := h.group("g1").Series; len(s) != 1 {
		t.Errorf("g1 still has %d series after its queue 1 left the window", len(s))
	}
	g3 := h.group("g3")
	if len(g3.Series) != 1 || fmt.Sprint(g3.Series[0].Lag) != "[-1 -1 9]" || fmt.Sprint(g3.T) != "[3 4 5]" {
		t.Errorf("g3: %+v at %v", g3.Series, g3.T)
	}
}

func text(s string) *string { return &s }

func TestBrowseByOffsetKeyAndTime(t *testing.T) {
	f := newFake()
	hdr := wire.AppendHeaders(nil, []wire.UserHeader{{Key: "source", Value: []byte("web")}, {Key: "bin", Value: []byte{0, 1, 2}}})
	for i := 0; i < 5; i++ {
		f.add("orders", 0, wire.FetchedMessage{StoreTime: int64(i+1) * 1e9, Key: []byte(fmt.Sprintf("k%d", i)), Tags: []byte("vip"), Headers: hdr, Body: []byte(fmt.Sprintf("body %d", i))})
	}
	// A zstd batch of 3 in queue 1, then a binary body.
	var raw []byte
	for i := 0; i < 3; i++ {
		raw = wire.AppendBatchEntry(raw, &wire.BatchEntry{Key: []byte(fmt.Sprintf("b%d", i)), Body: []byte(fmt.Sprintf("batched %d", i))})
	}
	enc, _ := zstd.NewWriter(nil)
	f.add("orders", 1, wire.FetchedMessage{StoreTime: 2.5e9, Flags: wire.FlagBatch | wire.CompressionZstd, Count: 3, Body: enc.EncodeAll(raw, nil)})
	f.add("orders", 1, wire.FetchedMessage{StoreTime: 3.5e9, Body: []byte{0xff, 0x00, 0x10}})
	c := newConsole(f)
	api := c.API()

	var b Browse
	if code := get(t, api, "/ui/api/messages?topic=orders&queue=0&offset=1&limit=3", &b); code != 200 {
		t.Fatalf("by offset: %d", code)
	}
	if len(b.Messages) != 3 || b.Messages[0].Offset != 1 || *b.Next != 4 || *b.Min != 0 || *b.Max != 5 {
		t.Fatalf("by offset: %+v next %v", b.Messages, *b.Next)
	}
	m := b.Messages[0]
	if *m.Body.Text != "body 1" || *m.Key.Text != "k1" || m.Tags != "vip" || m.Headers[0].Key != "source" || *m.Headers[0].Value.Text != "web" ||
		m.Headers[1].Value.Base64 == nil || *m.Headers[1].Value.Base64 != base64.StdEncoding.EncodeToString([]byte{0, 1, 2}) {
		t.Errorf("message 1: %+v", m)
	}

	// A batch is unpacked; reading from its middle starts there.
	b = Browse{}
	get(t, api, "/ui/api/messages?topic=orders&queue=1&offset=1", &b)
	if len(b.Messages) != 3 || b.Messages[0].Offset != 1 || *b.Messages[0].Body.Text != "batched 1" || !b.Messages[0].Batch || b.Messages[0].Compressed != "zstd" ||
		b.Messages[2].Offset != 3 || b.Messages[2].Body.Base64 == nil || b.Messages[2].Body.Text != nil {
		t.Fatalf("batch: %+v", b.Messages)
	}

	b = Browse{}
	get(t, api, "/ui/api/messages?topic=orders&key=k3", &b)
	if len(b.Messages) != 1 || b.Messages[0].Offset != 3 || *b.Messages[0].Body.Text != "body 3" {
		t.Fatalf("by key: %+v", b.Messages)
	}
	b = Browse{}
	get(t, api, "/ui/api/messages?topic=orders&key=nobody", &b)
	if len(b.Messages) != 0 || !strings.Contains(b.Note, "no message") {
		t.Errorf("unknown key: %+v", b)
	}

	// By time, across queues, merged by store time: 3 s on is queue 0's
	// offsets 2.. and queue 1's binary record (3.5 s).
	b = Browse{}
	get(t, api, "/ui/api/messages?topic=orders&time="+url.QueryEscape(time.Unix(3, 0).UTC().Format(time.RFC3339)), &b)
	var got []string
	for _, m := range b.Messages {
		got = append(got, fmt.Sprintf("%d/%d", m.Queue, m.Offset))
	}
	if fmt.Sprint(got) != "[0/2 1/3 0/3 0/4]" {
		t.Errorf("from 3 s: %v", got)
	}
	b = Browse{}
	get(t, api, "/ui/api/messages?topic=orders&queue=1&time=3000", &b)
	if len(b.Messages) != 1 || b.Messages[0].Offset != 3 {
		t.Errorf("queue 1 from 3000 ms: %+v", b.Messages)
	}

	// Bad input: a clear error, nothing read.
	before := f.browses
	for path, want := range map[string]int{
		"/ui/api/messages":                                 400,
		"/ui/api/messages?topic=orders":                    400, // which queue?
		"/ui/api/messages?topic=orders&queue=x&offset=0":   400,
		"/ui/api/messages?topic=orders&queue=0&offset=-1":  400,
		"/ui/api/messages?topic=orders&queue=0&limit=1000": 400,
		"/ui/api/messages?topic=orders&time=noon":          400,
		"/ui/api/messages?topic=orders&key=":               400,
		"/ui/api/messages?topic=orders&queue=7&time=0":     400,
		"/ui/api/nothing":                                  404,
	} {
		var e map[string]string
		if code := get(t, api, path, &e); code != want || e["error"] == "" {
			t.Errorf("GET %s: %d %v, want %d with an error", path, code, e, want)
		}
	}
	if f.browses != before {
		t.Errorf("bad requests read %d times", f.browses-before)
	}
	var e map[string]string
	if code := get(t, api, "/ui/api/messages?topic=nope&queue=0&offset=0", &e); code != 404 || !strings.Contains(e["error"], "nope") {
		t.Errorf("unknown topic: %d %v", code, e)
	}
}

// A body past MaxShown is cut (and says so); control characters make a
// body binary.
func TestBytesShown(t *testing.T) {
	big := bytesOf([]byte(strings.Repeat("x", MaxShown+10)))
	if !big.Truncated || len(*big.Text) != MaxShown {
		t.Errorf("big body: truncated %v, %d bytes", big.Truncated, len(*big.Text))
	}
	for in, isText := range map[string]bool{"hello\nworld\t!": true, "é ü 日本": true, "a\x00b": false, "\x1b[31m": false, "\xff": false} {
		if got := bytesOf([]byte(in)); (got.Text != nil) != isText {
			t.Errorf("%q shown as text: %v, want %v", in, got.Text != nil, isText)
		}
	}
}

// The pages: every file the index names is served, compressed when the
// browser takes gzip, revalidated by ETag, with a policy that allows
// nothing but the broker's own files.
func TestPages(t *testing.T) {
	c := newConsole(newFake())
	pages := c.Pages()
	req := func(path string, hdr ...string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		w := httptest.NewRecorder()
		pages.ServeHTTP(w, r)
		return w
	}
	index := req("/ui/")
	if index.Code != 200 || !strings.HasPrefix(index.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("/ui/: %d %s", index.Code, index.Header().Get("Content-Type"))
	}
	if csp := index.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	for _, name := range []string{"app.js", "app.css"} {
		if !strings.Contains(index.Body.String(), `"`+name+`"`) {
			t.Errorf("index.html does not load %s", name)
		}
		plain := req("/ui/" + name)
		zipped := req("/ui/"+name, "Accept-Encoding", "gzip, br")
		if plain.Code != 200 || zipped.Header().Get("Content-Encoding") != "gzip" {
			t.Fatalf("%s: %d, encoding %q", name, plain.Code, zipped.Header().Get("Content-Encoding"))
		}
		zr, err := gzip.NewReader(zipped.Body)
		if err != nil {
			t.Fatal(err)
		}
		unz, _ := io.ReadAll(zr)
		if string(unz) != plain.Body.String() {
			t.Errorf("%s: gzip body differs", name)
		}
		if again := req("/ui/"+name, "If-None-Match", plain.Header().Get("ETag")); again.Code != 304 || again.Body.Len() != 0 {
			t.Errorf("%s revalidated: %d with %d bytes", name, again.Code, again.Body.Len())
		}
	}
	if w := req("/ui/nothing.js"); w.Code != 404 {
		t.Errorf("unknown file: %d", w.Code)
	}
	// The script sets no inline style or markup from data: the CSP would
	// refuse the first, and the second would let a message body run code.
	js := req("/ui/app.js").Body.String()
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(js, bad) {
			t.Errorf("app.js uses %s", bad)
		}
	}
}

// The sampler stops with its context.
func TestRunStops(t *testing.T) {
	c := New(Options{Broker: newFake(), Status: func(wire.StatusSel) wire.Status { return wire.Status{} }, Interval: time.Millisecond})
	ctx, cancel := contextWithCancel()
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	cancel()
	<-done
}

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}
