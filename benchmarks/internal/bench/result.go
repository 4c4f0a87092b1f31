package bench

import (
	"fmt"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Result is one run against one system. Latencies are in microseconds;
// MB are 10^6 bytes of bodies.
type Result struct {
	// What ran, filled in by the caller.
	System      string   `json:"system"`         // "quiver" or "nats"
	Name        string   `json:"name,omitempty"` // the compare row, e.g. "quiver-sync-io_uring"
	Label       string   `json:"label"`          // for people
	Durability  string   `json:"durability"`     // when an acknowledged message is on disk
	Engine      string   `json:"engine,omitempty"`
	Topic       string   `json:"topic,omitempty"`
	Queues      int      `json:"queues,omitempty"`
	Compression string   `json:"compression,omitempty"`
	Connections int      `json:"connections,omitempty"`
	Notes       []string `json:"notes,omitempty"`

	Mode string `json:"mode"` // closed, pipelined or open
	Config

	WarmupS     float64 `json:"warmup_s"`
	DurationS   float64 `json:"duration_s"` // start of the measured phase to its last completion, at least --duration
	Count       int64   `json:"count"`      // messages acknowledged in the measured phase
	Sends       int64   `json:"sends"`      // send calls acknowledged (batches count once)
	Errors      int64   `json:"errors"`     // messages whose send failed
	FirstError  string  `json:"first_error,omitempty"`
	Interrupted bool    `json:"interrupted,omitempty"`
	MsgsPerSec  float64 `json:"msgs_per_sec"` // Count / DurationS
	MBPerSec    float64 `json:"mb_per_sec"`

	// Latency of one send call (a batch in batch mode): from the call, or
	// in open loop from when it was due, to the acknowledgement.
	P50us   int64   `json:"p50_us"`
	P90us   int64   `json:"p90_us"`
	P99us   int64   `json:"p99_us"`
	P999us  int64   `json:"p999_us"`
	P9999us int64   `json:"p9999_us"`
	MinUs   int64   `json:"min_us"`
	MaxUs   int64   `json:"max_us"`
	MeanUs  float64 `json:"mean_us"`
	// The latency histogram, HdrHistogram's compressed base64 form.
	LatencyHDR string `json:"latency_hdr,omitempty"`

	*OpenLoop
	*E2E

	Latency    *hdrhistogram.Histogram `json:"-"`
	E2ELatency *hdrhistogram.Histogram `json:"-"`
}

// OpenLoop says how well the generator kept its schedule. SendLag is how
// late it woke for the sends it was waiting for: its own error, part of
// the latencies. BehindSchedule counts the sends that were already due
// when their producer got to them (its previous send, or its window, held
// them up): their wait is in their latency, as it would be for a real
// client; many of them mean the producers cannot offer the rate.
type OpenLoop struct {
	SendLagP50us   int64 `json:"send_lag_p50_us"`
	SendLagP99us   int64 `json:"send_lag_p99_us"`
	SendLagMaxUs   int64 `json:"send_lag_max_us"`
	BehindSchedule int64 `json:"behind_schedule"`
}

// E2E is publish-to-consume latency: from the send (or when it was due)
// to the consumer's handler.
type E2E struct {
	E2ECount   int64  `json:"e2e_count"`   // measured messages consumed
	E2EMissing int64  `json:"e2e_missing"` // acknowledged but not consumed before the drain ended
	E2EP50us   int64  `json:"e2e_p50_us"`
	E2EP90us   int64  `json:"e2e_p90_us"`
	E2EP99us   int64  `json:"e2e_p99_us"`
	E2EP999us  int64  `json:"e2e_p999_us"`
	E2EMaxUs   int64  `json:"e2e_max_us"`
	E2EHDR     string `json:"e2e_hdr,omitempty"`
}

func (r *Result) setLatency(h *hdrhistogram.Histogram) {
	r.Latency = h
	if h.TotalCount() == 0 {
		return
	}
	r.P50us, r.P90us, r.P99us = h.ValueAtQuantile(50), h.ValueAtQuantile(90), h.ValueAtQuantile(99)
	r.P999us, r.P9999us = h.ValueAtQuantile(99.9), h.ValueAtQuantile(99.99)
	r.MinUs, r.MaxUs, r.MeanUs = h.Min(), h.Max(), h.Mean()
	r.LatencyHDR = encodeHist(h)
}

func (r *Result) setE2E(h *hdrhistogram.Histogram, received int64) {
	r.E2ELatency = h
	e := &E2E{E2ECount: received, E2EMissing: max(r.Count-received, 0)}
	if h.TotalCount() > 0 {
		e.E2EP50us, e.E2EP90us, e.E2EP99us = h.ValueAtQuantile(50), h.ValueAtQuantile(90), h.ValueAtQuantile(99)
		e.E2EP999us, e.E2EMaxUs = h.ValueAtQuantile(99.9), h.Max()
		e.E2EHDR = encodeHist(h)
	}
	r.E2E = e
}

func encodeHist(h *hdrhistogram.Histogram) string {
	b, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
	if err != nil {
		return ""
	}
	return string(b)
}

// Histograms decodes the latency histograms of a result read from JSON.
func (r *Result) Histograms() error {
	if r.Latency == nil && r.LatencyHDR != "" {
		h, err := hdrhistogram.Decode([]byte(r.LatencyHDR))
		if err != nil {
			return fmt.Errorf("%s: latency_hdr: %w", r.Label, err)
		}
		r.Latency = h
	}
	if r.E2E != nil && r.E2ELatency == nil && r.E2EHDR != "" {
		h, err := hdrhistogram.Decode([]byte(r.E2EHDR))
		if err != nil {
			return fmt.Errorf("%s: e2e_hdr: %w", r.Label, err)
		}
		r.E2ELatency = h
	}
	return nil
}
