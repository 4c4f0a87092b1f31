package ioengine

import (
	"testing"
)

// BenchmarkFlush4KSync is the log's worst case: one 4 KiB page written and
// fdatasync'ed per Flush, into a preallocated file (as segments are), so
// the sync has no size update to journal.
func BenchmarkFlush4KSync(b *testing.B) { benchFlush(b, 4<<10) }

// BenchmarkFlush64KSync is one 64 KiB write + fdatasync per Flush.
func BenchmarkFlush64KSync(b *testing.B) { benchFlush(b, 64<<10) }

func benchFlush(b *testing.B, size int) {
	for _, backend := range Backends() {
		b.Run(backend, func(b *testing.B) {
			e := newEngine(b, backend)
			f := openT(b, e, tempPath(b, "bench"))
			const span = 64 << 20
			if err := f.Allocate(span); err != nil {
				b.Fatal(err)
			}
			slots := int64(span / size)
			ops := []WriteOp{{File: f, Buf: page(size/Alignment, 1)}}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ops[0].Off = (int64(i) % slots) * int64(size)
				if err := e.Flush(ops, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
