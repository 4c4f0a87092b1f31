package wire

import "encoding/binary"

// ClientReport tells a broker which brokers the client sets aside (fault
// avoidance: slow, failing or silent), so that the broker's status and web
// console can show what its clients see. A client sends it to the brokers
// it has sessions with when the set changes, and every ClientReportEvery
// while it is not empty; the broker forgets a client's report after
// ClientReportTTL. Answered with OK; a broker without it answers INVALID,
// which the client ignores.
type ClientReport struct {
	Aside []AsideReport
}

// AsideReport is one broker a client sets aside.
type AsideReport struct {
	Addr string // as the client reaches it
	// ForMs is how much longer it stays aside (0: for as long as it does
	// not answer the sends waiting on it).
	ForMs      uint32
	Isolations uint32 // times the client set it aside
	Reason     string // why, in a few words
}

const (
	// MaxAsideReports bounds a report's entries, MaxAsideReason a reason.
	MaxAsideReports = 64
	MaxAsideReason  = 200

	ClientReportEvery = 10 * 1e9 // ns
	ClientReportTTL   = 30 * 1e9
)

func (m *ClientReport) Append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.Aside)))
	for _, a := range m.Aside {
		dst = appendShortString(dst, a.Addr)
		dst = binary.LittleEndian.AppendUint32(dst, a.ForMs)
		dst = binary.LittleEndian.AppendUint32(dst, a.Isolations)
		dst = appendShortString(dst, a.Reason)
	}
	return dst
}

func DecodeClientReport(b []byte, m *ClientReport) error {
	d := decoder{b: b}
	n := d.count("set-aside brokers", MaxAsideReports, 12)
	m.Aside = make([]AsideReport, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		a := AsideReport{Addr: d.name("set-aside broker address", MaxAddrLen)}
		a.ForMs, a.Isolations = d.u32("aside for"), d.u32("isolations")
		a.Reason = string(d.short("reason", MaxAsideReason))
		m.Aside = append(m.Aside, a)
	}
	return d.end()
}
