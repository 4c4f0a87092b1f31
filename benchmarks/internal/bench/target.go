// Package bench is quiver-bench's load generator: producers in closed
// loop, pipelined or open loop (with the coordinated-omission correction),
// batches, consumers measuring publish-to-consume latency, and the
// result: throughput, HdrHistogram latencies, JSON, a table and a plot.
// It knows nothing of a particular system: a Target (Quiver, NATS
// JetStream) supplies producers and consumers.
package bench

import "context"

// Producer is one load worker's way to send to the system under test.
// Bodies passed to it must not change until the send has completed.
type Producer interface {
	// Send sends one message and returns once the system acknowledged it.
	Send(ctx context.Context, body []byte) error
	// SendBatch sends the bodies as one batch and returns once the system
	// acknowledged all of them.
	SendBatch(ctx context.Context, bodies [][]byte) error
	// SendAsync starts a send; done is called once with its outcome. The
	// done calls of one Producer never run concurrently. SendAsync may
	// block while the system's own limit of sends in flight is reached.
	SendAsync(ctx context.Context, body []byte, done func(error)) error
	Close() error
}

// Target is a system under test, set up (topic or stream created) and
// connected.
type Target interface {
	// NewProducer returns the producer of load worker i.
	NewProducer(ctx context.Context, i int) (Producer, error)
	// StartConsumers starts n consumers sharing the load's messages (one
	// consumer group), reading only messages stored from now on. Consumer
	// i calls deliver(i, body) for each message, from one goroutine at a
	// time. StartConsumers returns once every consumer can receive; stop
	// ends them.
	StartConsumers(ctx context.Context, n int, deliver func(i int, body []byte)) (stop func() error, err error)
}
