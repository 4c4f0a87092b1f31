package wire

import (
	"encoding/binary"
	"fmt"
)

// Field encodings: u16-prefixed short bytes, u32-prefixed long bytes.

func appendShort(dst, b []byte) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(b)))
	return append(dst, b...)
}

func appendShortString(dst []byte, s string) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

func appendLong(dst, b []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(b)))
	return append(dst, b...)
}

// decoder reads fields from a payload; the first failure sticks, so a
// decoding function checks err once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
}

func (d *decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail("%s: need %d bytes, have %d", what, n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8(what string) uint8 {
	if b := d.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) u16(what string) uint16 {
	if b := d.take(2, what); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32(what string) uint32 {
	if b := d.take(4, what); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64(what string) uint64 {
	if b := d.take(8, what); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) short(what string, limit int) []byte {
	n := int(d.u16(what))
	if d.err == nil && n > limit {
		d.fail("%s is %d bytes, limit %d", what, n, limit)
		return nil
	}
	return d.take(n, what)
}

func (d *decoder) long(what string, limit int) []byte {
	n := d.u32(what)
	if d.err == nil && int64(n) > int64(limit) {
		d.fail("%s is %d bytes, limit %d", what, n, limit)
		return nil
	}
	return d.take(int(n), what)
}

// end fails if bytes are left over.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

// count reads a u16 list length and checks it against limit and against
// what the rest of the payload can hold (minEach bytes per element), so that
// a lying count fails before anything is allocated for it.
func (d *decoder) count(what string, limit, minEach int) int {
	n := int(d.u16(what))
	if d.err == nil && (n > limit || n*minEach > len(d.b)) {
		d.fail("%s: %d entries cannot fit (limit %d, %d bytes left)", what, n, limit, len(d.b))
		return 0
	}
	return n
}

// name reads a non-empty short string of at most limit bytes.
func (d *decoder) name(what string, limit int) string {
	b := d.short(what, limit)
	if d.err == nil && len(b) == 0 {
		d.fail("empty %s", what)
	}
	return string(b)
}
