package sdk

import (
	"crypto/rand"
	"encoding/binary"
)

// Idempotent sends (on by default; WithoutIdempotence turns it off).
//
// Every client has a random producer id, and numbers the messages it
// sends: a message gets its sequence number when it is first sent (a
// coalesced frame's messages get consecutive ones), and keeps it for
// every retry. A broker that already stored (or is storing) a message of
// that producer id and sequence does not store it again: it answers the
// retry with the position of the first copy. So a send whose answer was
// lost (a timeout, a broker that froze, a connection that broke) and that
// is retried on the same broker group is stored once.
//
// This holds across a restart of the broker and a failover of its group:
// the stored record names the send, and every broker of the group knows
// the sends its log holds.
//
// What is not deduplicated: a send retried on another broker group (a
// keyless send moves on when its group fails; if the first attempt had
// landed, the message is in both groups), a retry of a send older than
// the broker's window for the producer (docs/operations.md, "Idempotent
// sends"), a message resent from the outbox, and SendOneway (never
// retried).

// newProducerID returns a random non-zero producer id.
func newProducerID() uint64 {
	var b [8]byte
	for {
		rand.Read(b[:])
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

// idempotent marks op's request with the client's producer id and, on its
// first attempt, count sequence numbers.
func (op *sendOp) idempotent() {
	if op.p.cfg.noIdempotence {
		return
	}
	op.req.ProducerID = op.p.cl.pid
	if op.req.Seq == 0 {
		op.req.Seq = op.p.cl.sequences(uint64(max(op.req.Count, 1)))
	}
}

// sequences reserves n consecutive sequence numbers and returns the first.
func (cl *Client) sequences(n uint64) uint64 { return cl.seq.Add(n) - n + 1 }
