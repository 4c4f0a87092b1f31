package console

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/quivermq/quiver/sdk/wire"
)

// The read-only JSON the pages use.
func (c *Console) api(mux *http.ServeMux) {
	mux.HandleFunc("GET /ui/api/status", func(w http.ResponseWriter, r *http.Request) {
		sel, err := wire.ParseStatusQuery(r.URL.Query())
		if err != nil {
			apiError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, c.o.Status(sel))
	})
	mux.HandleFunc("GET /ui/api/series", c.serveSeries)
	mux.HandleFunc("GET /ui/api/lag", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		h := c.lags.group(r.URL.Query().Get("group"))
		c.mu.Unlock()
		writeJSON(w, h)
	})
	mux.HandleFunc("GET /ui/api/messages", c.serveMessages)
	mux.HandleFunc("/ui/api/", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, fmt.Errorf("no console API %s %s (the console is read-only)", r.Method, r.URL.Path))
	})
}

// Series is /ui/api/series: the points after Since, one array per field
// (columns keep the answer small when the page asks every second).
type Series struct {
	Interval int64 `json:"interval_ms"`
	// Totals since the broker started, as of the newest point.
	Totals struct {
		Sends    int64 `json:"sends"`
		Errors   int64 `json:"errors"`
		Busy     int64 `json:"busy"`
		DiskFull int64 `json:"disk_full"`
	} `json:"totals"`
	Cols map[string][]float64 `json:"cols"`
	T    []int64              `json:"t"`
}

// seriesCols names the columns of a point.
var seriesCols = []struct {
	name string
	get  func(*Point) float64
}{
	{"sends", func(p *Point) float64 { return p.Sends }},
	{"bytes", func(p *Point) float64 { return p.Bytes }},
	{"fetched", func(p *Point) float64 { return p.Fetched }},
	{"errors", func(p *Point) float64 { return p.Errors }},
	{"busy", func(p *Point) float64 { return p.Busy }},
	{"disk_full", func(p *Point) float64 { return p.DiskFull }},
	{"p50", func(p *Point) float64 { return p.P50 }},
	{"p90", func(p *Point) float64 { return p.P90 }},
	{"p99", func(p *Point) float64 { return p.P99 }},
	{"p999", func(p *Point) float64 { return p.P999 }},
	{"max", func(p *Point) float64 { return p.Max }},
	{"not_visible_ms", func(p *Point) float64 { return p.NotVisibleMs }},
	{"not_durable_ms", func(p *Point) float64 { return p.NotDurableMs }},
	{"not_visible_bytes", func(p *Point) float64 { return p.NotVisibleBytes }},
	{"not_durable_bytes", func(p *Point) float64 { return p.NotDurableBytes }},
	{"queue_depth", func(p *Point) float64 { return p.QueueDepth }},
	{"repl_lag_bytes", func(p *Point) float64 { return p.ReplLagBytes }},
	{"repl_lag_ms", func(p *Point) float64 { return p.ReplLagMs }},
}

func (c *Console) serveSeries(w http.ResponseWriter, r *http.Request) {
	var since int64
	if s := r.URL.Query().Get("since"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			apiError(w, http.StatusBadRequest, fmt.Errorf("since: %q is not a time in unix milliseconds", s))
			return
		}
		since = v
	}
	out := Series{Interval: c.o.Interval.Milliseconds(), Cols: map[string][]float64{}, T: []int64{}}
	for _, col := range seriesCols {
		out.Cols[col.name] = []float64{}
	}
	c.mu.Lock()
	c.points.each(func(p *Point) {
		if p.T <= since {
			return
		}
		out.T = append(out.T, p.T)
		for _, col := range seriesCols {
			out.Cols[col.name] = append(out.Cols[col.name], col.get(p))
		}
	})
	out.Totals.Sends, out.Totals.Errors, out.Totals.Busy, out.Totals.DiskFull = c.prev.Sends, c.prev.Errors, c.prev.Busy, c.prev.DiskFull
	c.mu.Unlock()
	writeJSON(w, out)
}

// Browsed is one message as the message browser shows it.
type Browsed struct {
	Queue      uint32          `json:"queue"`
	Offset     uint64          `json:"offset"`
	StoreTime  string          `json:"store_time"`
	ClientTime string          `json:"client_time,omitempty"`
	Key        *Bytes          `json:"key,omitempty"`
	Tags       string          `json:"tags,omitempty"`
	Headers    []BrowsedHeader `json:"headers"`
	Body       Bytes           `json:"body"`
	Size       int             `json:"size"`            // the body's size
	Batch      bool            `json:"batch,omitempty"` // stored in a batch record
	Compressed string          `json:"compressed,omitempty"`
	storeNs    int64
}

// Bytes is text when it is valid UTF-8 without control characters (but
// tabs and newlines), else base64; bodies are cut at MaxShown bytes.
type Bytes struct {
	Text      *string `json:"text,omitempty"`
	Base64    *string `json:"base64,omitempty"`
	Truncated bool    `json:"truncated,omitempty"`
}

type BrowsedHeader struct {
	Key   string `json:"key"`
	Value Bytes  `json:"value"`
}

// MaxShown is the most of a body the browser is sent.
const MaxShown = 64 << 10

func bytesOf(b []byte) Bytes {
	var out Bytes
	if len(b) > MaxShown {
		b, out.Truncated = b[:MaxShown], true
	}
	if printable(b) {
		s := string(b)
		out.Text = &s
	} else {
		s := base64.StdEncoding.EncodeToString(b)
		out.Base64 = &s
	}
	return out
}

func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r == 0x7f || r == utf8.RuneError {
			return false
		}
	}
	return true
}

// Browse is /ui/api/messages' answer.
type Browse struct {
	Topic    string    `json:"topic"`
	Queue    *uint32   `json:"queue,omitempty"`
	Min      *uint64   `json:"min,omitempty"` // the queue's readable offsets [min, max)
	Max      *uint64   `json:"max,omitempty"`
	Next     *uint64   `json:"next,omitempty"` // where the next page starts (by offset)
	Messages []Browsed `json:"messages"`
	Note     string    `json:"note,omitempty"`
}

const (
	defaultLimit = 20
	maxLimit     = 200
)

// serveMessages answers the message browser:
//
//	?topic=T&queue=Q&offset=O[&limit=N]  from an offset of one queue
//	?topic=T&key=K[&limit=N]             the messages with a key (newest first)
//	?topic=T&time=TIME[&queue=Q]         from the first stored at or after TIME (RFC 3339 or unix ms)
func (c *Console) serveMessages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	topic := q.Get("topic")
	if topic == "" {
		apiError(w, http.StatusBadRequest, errors.New("topic is required"))
		return
	}
	limit := defaultLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxLimit {
			apiError(w, http.StatusBadRequest, fmt.Errorf("limit: %q is not a number from 1 to %d", s, maxLimit))
			return
		}
		limit = n
	}
	var queue *uint32
	if s := q.Get("queue"); s != "" {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			apiError(w, http.StatusBadRequest, fmt.Errorf("queue: %q is not a queue number", s))
			return
		}
		v := uint32(n)
		queue = &v
	}
	out := Browse{Topic: topic, Messages: []Browsed{}}
	var err error
	switch {
	case q.Has("key"):
		err = c.byKey(&out, q.Get("key"), limit)
	case q.Has("time"):
		var at time.Time
		if at, err = parseTime(q.Get("time")); err == nil {
			err = c.byTime(&out, queue, at, limit)
		}
	default:
		if queue == nil {
			err = errors.New("queue is required with offset (or search by key or time)")
			break
		}
		var off uint64
		if s := q.Get("offset"); s != "" {
			if off, err = strconv.ParseUint(s, 10, 64); err != nil {
				err = fmt.Errorf("offset: %q is not an offset", s)
				break
			}
		}
		out.Queue = queue
		err = c.fromOffset(&out, *queue, off, limit)
	}
	if err != nil {
		code := http.StatusBadRequest
		var werr *wire.Error
		if errors.As(err, &werr) && werr.Code == wire.CodeUnknownTopic {
			code = http.StatusNotFound
		} else if errors.As(err, &werr) {
			code = http.StatusInternalServerError
		}
		apiError(w, code, err)
		return
	}
	writeJSON(w, out)
}

func parseTime(s string) (time.Time, error) {
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.UnixMilli(ms), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return t, fmt.Errorf("time: %q is neither RFC 3339 (2026-12-02T10:00:00Z) nor unix milliseconds", s)
	}
	return t, nil
}

// read returns up to limit messages of the queue from off (the records'
// messages, batches unpacked), and the queue's bounds and next offset.
func (c *Console) read(topic string, queue uint32, off uint64, limit int) ([]Browsed, wire.FetchHeader, error) {
	h, recs, werr := c.o.Broker.Browse(topic, queue, off, limit)
	if werr != nil {
		return nil, h, werr
	}
	var out []Browsed
	next := max(off, h.Min)
	for i := range recs {
		m := &recs[i]
		if m.Flags&wire.FlagBatch == 0 {
			if m.Offset >= off && len(out) < limit {
				out = append(out, browsed(queue, m, m.Offset, m.Key, m.Tags, m.Headers, m.Body))
				next = m.Offset + 1
			}
			continue
		}
		entries, err := wire.BatchEntries(m, nil)
		if err != nil {
			return nil, h, fmt.Errorf("%s/%d offset %d: %w", topic, queue, m.Offset, err)
		}
		for j, e := range entries {
			o := m.Offset + uint64(j)
			if o < off || len(out) >= limit {
				continue
			}
			b := browsed(queue, m, o, e.Key, e.Tags, e.Headers, e.Body)
			out = append(out, b)
			next = o + 1
		}
	}
	h.Next = next
	return out, h, nil
}

func browsed(queue uint32, m *wire.FetchedMessage, off uint64, key, tags, headers, body []byte) Browsed {
	b := Browsed{Queue: queue, Offset: off, StoreTime: rfc3339(m.StoreTime), ClientTime: rfc3339(m.ClientTime), Tags: string(tags),
		Headers: []BrowsedHeader{}, Body: bytesOf(body), Size: len(body), Batch: m.Flags&wire.FlagBatch != 0, storeNs: m.StoreTime}
	if len(key) > 0 {
		k := bytesOf(key)
		b.Key = &k
	}
	switch m.Flags & wire.FlagCompressionMask {
	case wire.CompressionZstd:
		b.Compressed = "zstd"
	case wire.CompressionS2:
		b.Compressed = "s2"
	}
	if hs, err := wire.DecodeHeaders(headers); err == nil {
		for _, h := range hs {
			b.Headers = append(b.Headers, BrowsedHeader{Key: h.Key, Value: bytesOf(h.Value)})
		}
	} else {
		b.Headers = append(b.Headers, BrowsedHeader{Key: "(undecodable headers)", Value: bytesOf(headers)})
	}
	return b
}

func rfc3339(ns int64) string {
	if ns == 0 {
		return ""
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

func (c *Console) fromOffset(out *Browse, queue uint32, off uint64, limit int) error {
	msgs, h, err := c.read(out.Topic, queue, off, limit)
	if err != nil {
		return err
	}
	out.Messages = append(out.Messages, msgs...)
	out.Min, out.Max, out.Next = &h.Min, &h.Max, &h.Next
	if off < h.Min {
		out.Note = fmt.Sprintf("offset %d is gone (retention): the queue starts at %d", off, h.Min)
	} else if off >= h.Max {
		out.Note = fmt.Sprintf("offset %d is past the end of the queue (%d)", off, h.Max)
	}
	return nil
}

// byKey reads the messages the key index finds (newest first).
func (c *Console) byKey(out *Browse, key string, limit int) error {
	if key == "" {
		return errors.New("key is empty")
	}
	resp, werr := c.o.Broker.Lookup(&wire.Lookup{Topic: out.Topic, Key: []byte(key), Max: uint16(limit)})
	if werr != nil {
		return werr
	}
	for _, hit := range resp.Hits {
		msgs, _, err := c.read(out.Topic, hit.Queue, hit.Offset, 1)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Offset == hit.Offset { // the broker verified the key
				out.Messages = append(out.Messages, m)
			}
		}
	}
	if len(out.Messages) == 0 {
		out.Note = fmt.Sprintf("no message of topic %s has key %q (or it is gone)", out.Topic, key)
	}
	return nil
}

// byTime reads from the first message stored at or after at: in one queue,
// or in every queue merged by store time.
func (c *Console) byTime(out *Browse, queue *uint32, at time.Time, limit int) error {
	resp, werr := c.o.Broker.Offsets(&wire.Offsets{Topic: out.Topic, At: at.UnixNano()})
	if werr != nil {
		return werr
	}
	if queue != nil {
		if *queue >= uint32(len(resp.Queues)) {
			return fmt.Errorf("topic %s has no queue %d (it has %d)", out.Topic, *queue, len(resp.Queues))
		}
		out.Queue = queue
	}
	for _, qo := range resp.Queues {
		if queue != nil && qo.Queue != *queue || qo.AtOffset >= qo.Max {
			continue
		}
		msgs, _, err := c.read(out.Topic, qo.Queue, qo.AtOffset, limit)
		if err != nil {
			return err
		}
		out.Messages = append(out.Messages, msgs...)
	}
	sort.SliceStable(out.Messages, func(i, j int) bool { return out.Messages[i].storeNs < out.Messages[j].storeNs })
	if len(out.Messages) > limit {
		out.Messages = out.Messages[:limit]
	}
	if len(out.Messages) == 0 {
		out.Note = fmt.Sprintf("no message stored at or after %s", at.UTC().Format(time.RFC3339))
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": strings.TrimPrefix(err.Error(), "quiver: ")})
}
