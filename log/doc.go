// Package log is Quiver's commit log: every message a broker stores is a
// record appended here, and everything else (queue indexes, replicas,
// consumer offsets) is derived from it.
//
// # Layout
//
// The log is a directory of segment files of a fixed size (default 1 GiB),
// preallocated with fallocate and named by their base position, a 20-digit
// decimal. A log position is base + offset in the segment; positions grow
// across segments, skipping the unused end of a sealed segment:
//
//	dir/
//	  00000000000000000000.seg   records | seal (0xFFFFFFFF) | zeros
//	  00000000001073741824.seg   records | zeros (the active segment)
//	  checkpoint                 synced position + next offset of each queue
//
// Each record is self-describing and checksummed (see record.go for the
// byte layout): length, CRC32C, magic, flags, topic, queue id, queue offset,
// client and store times, count, key, tags, headers, body. A producer batch,
// compressed or not, is one record with Count messages and the batch flag,
// stored as it came. A zero length ends the data; 0xFFFFFFFF seals a segment.
//
// # Writing
//
// One flusher goroutine owns the tail and writes; one syncer goroutine
// syncs, dispatches and acknowledges (commit.go). Concurrent appends are
// coalesced into one O_DIRECT write of whole 4 KiB pages, issued through the
// ioengine (io_uring or portable), and one fdatasync covers every batch
// written before it; the disk writes the next batch while it syncs the
// previous one. In Sync mode an append returns after the sync; in Async mode
// after the write, with a sync at most AsyncInterval later. Records are
// dispatched to the indexes in the same stage, before the acknowledgement,
// so the dispatched position never trails silently (incident 003):
// Positions reports written, durable and dispatched.
//
// The most recent TailBytes of the log live in an in-memory ring, which is
// both the write buffer and the cache that serves caught-up readers; older
// records are read from the segment files.
//
// # Failures
//
// Any write, sync or dispatch error fails the log: nothing more is written
// and every append returns ErrFailed until the log is reopened. A failed
// fsync may have dropped dirty pages, so retrying it would risk acknowledging
// data that is not on disk.
//
// Running out of space is not such an error. A roll that finds no room for
// the next segment refuses its batch with ErrNoSpace before anything of it is
// written, and the log goes on. A dispatch that finds no room (ENOSPC from
// the indexes) acknowledges the durable appends and stops dispatching there;
// the syncer retries every second, re-reading the records from the segments,
// and consumers see them once the indexes have room.
//
// # Recovery
//
// Open verifies records from the checkpoint on, truncates the torn tail of
// the last group commit, and refuses to open (naming the file, the offset and
// the repair command) when damage lies before data that was acknowledged.
// See recover.go for the exact rule.
//
// # Caveats
//
//   - Segment size and TailBytes must not change between runs.
//   - Retention deletes whole segments by file modification time and total
//     size; a segment is never deleted before it is fully synced.
package log
