package wire

import "encoding/binary"

// Delayed delivery (daemon/broker/delay.go): a ProduceAt is a Produce whose
// messages become visible to consumers at DeliverAt (unix nanoseconds),
// 1 s to 30 days ahead. Encoded as DeliverAt (i64) then the Produce;
// answered with ProduceAck (the position of its scheduled copy).
type ProduceAt struct {
	DeliverAt int64
	Produce
}

// MaxDelay is how far ahead a ProduceAt may deliver (30 days; a broker
// allows an hour more for clocks).
const MaxDelay = 30 * 24 * 3600 * 1e9

func (m *ProduceAt) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.DeliverAt))
	return m.Produce.Append(dst)
}

func DecodeProduceAt(b []byte, m *ProduceAt) error {
	if len(b) < 8 {
		return errorf("produce at: %d bytes", len(b))
	}
	m.DeliverAt = int64(binary.LittleEndian.Uint64(b))
	if m.DeliverAt <= 0 {
		return errorf("deliver at %d", m.DeliverAt)
	}
	return DecodeProduce(b[8:], &m.Produce)
}
