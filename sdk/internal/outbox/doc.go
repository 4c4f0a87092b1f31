// Package outbox is the SDK's outbox: sends that exhausted their retries,
// kept on local disk so that they can be resent once the cluster recovers
// (sdk.WithOutbox, whose resender is in the sdk package). It is a durable
// FIFO of wire.Produce: an entry survives a crash once Add returned, and
// stays until it is acked.
//
// On disk it is a directory of three files:
//
//	outbox.dat    records, appended one per entry:
//	                u32 length | u32 CRC-32C (Castagnoli) of payload | payload
//	              little endian; the payload is the entry's wire.Produce in its
//	              stored layout (AppendStored: protocol 2's, no producer id
//	              or sequence), 1..wire.MaxFrameSize bytes.
//	outbox.acked  "QOB1" | u64 offset in outbox.dat of the first unacked record |
//	              u32 CRC-32C of the 12 bytes before it. Missing means 0. It is
//	              replaced on every ack by write to temp, fsync, rename, dir fsync,
//	              so it is always one whole version, never a torn one.
//	outbox.lock   locked while an outbox is open (flock; LockFileEx on Windows);
//	              holds the holder's pid, for the error a second opener gets.
//	outbox.rejected  entries a broker refused for a reason retrying cannot
//	              fix (same record format, appended); kept for the operator.
//
// Space is reclaimed on ack: when nothing is pending, outbox.dat is truncated
// to empty; when the acked prefix is over half the file and over 1 MiB, the
// pending tail is copied to a new file that replaces outbox.dat by rename.
// Both leave outbox.dat shorter than the acked offset until outbox.acked is
// reset to 0, so Open reads an acked offset past the end of the data
// file as "the file was reclaimed after that offset was written" and starts
// at 0. That is why the offset is always written durably before the file is
// compacted, and why a compaction only happens when the tail is smaller than
// the prefix it drops.
//
// Recovery: each add writes one record and fsyncs before the next starts
// (one mutex), so a crash leaves at most one torn record, at the end, no
// longer than the largest record. Such a tail (partial header, length past
// the end, bad checksum of the last record, zeros) is cut off and counted in
// RecoveredBytes. Anything that a crash cannot produce (a complete record
// with a bad checksum followed by more bytes, a damaged record followed by
// valid ones, more damaged bytes than one record can hold) is
// ErrCorrupt: the outbox refuses to open rather than drop entries.
//
// The file lock is per platform, behind build tags: flock on unix-likes
// (lock_unix.go), LockFileEx on Windows (lock_windows.go), an error where
// there is neither (lock_other.go).
package outbox
