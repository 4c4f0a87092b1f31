package bench

import (
	"errors"
	"fmt"
	"time"
)

// Config is a workload. Its fields are part of every Result's JSON.
type Config struct {
	Producers int `json:"producers"`
	Size      int `json:"size"` // body bytes
	// Duration of the measured phase; ignored when Count is set.
	Duration time.Duration `json:"-"`
	// Count of messages to measure instead of a duration.
	Count  int64         `json:"count_target,omitempty"`
	Warmup time.Duration `json:"-"`
	// Window > 0: each producer keeps Window asynchronous sends in flight
	// (pipelined); 0: each producer sends synchronously.
	Window int `json:"window,omitempty"`
	// Rate > 0: open loop at Rate messages per second in total.
	Rate float64 `json:"rate,omitempty"`
	// Batch > 1: each send is a batch of Batch messages.
	Batch        int  `json:"batch,omitempty"`
	Consumers    int  `json:"consumers,omitempty"`
	Compressible bool `json:"compressible,omitempty"`
	// Drain bounds the wait for consumers after the last send.
	Drain time.Duration `json:"-"`
}

// Mode names how the producers send: "closed", "pipelined" or "open".
func (c *Config) Mode() string {
	switch {
	case c.Rate > 0:
		return "open"
	case c.Window > 0:
		return "pipelined"
	}
	return "closed"
}

// batch is the number of messages per send.
func (c *Config) batch() int { return max(c.Batch, 1) }

// Validate reports a workload that cannot run.
func (c *Config) Validate() error {
	switch {
	case c.Producers < 1:
		return errors.New("--producers must be at least 1")
	case c.Size < 0:
		return errors.New("--size must not be negative")
	case c.Count < 0:
		return errors.New("--count must not be negative")
	case c.Count == 0 && c.Duration <= 0:
		return errors.New("--duration must be positive (or give --count)")
	case c.Warmup < 0:
		return errors.New("--warmup must not be negative")
	case c.Window < 0:
		return errors.New("--window must not be negative")
	case c.Rate < 0:
		return errors.New("--rate must not be negative")
	case c.Batch < 0:
		return errors.New("--batch must not be negative")
	case c.Batch > 1 && c.Window > 0:
		return errors.New("--batch and --window cannot be combined: the SDK has no asynchronous batch send")
	case c.Consumers < 0:
		return errors.New("--consumers must not be negative")
	case c.Consumers > 0 && c.Size < stampLen:
		return fmt.Errorf("--consumers needs --size of at least %d: the send time travels in the body's first %d bytes", stampLen, stampLen)
	}
	return nil
}
