// Package index holds the data Quiver derives from the commit log: per-queue
// consume queues (offset -> log position), a key index, time lookups, and
// the producer table of idempotent sends.
// It is a log.Dispatcher: the log hands it every record in the same commit
// step that acknowledges the append, so a message is findable the moment its
// send returns. It is also a log.Resumer: it durably records the log
// position up to which it is complete, and at open the log replays every
// record after it. Deleting the index directory loses nothing.
//
// # Consume queues
//
//	DIR/cq/<hex(topic)>/<queue>/<20-digit first offset>.cq
//
// Each file holds EntriesPerFile entries of 32 bytes, entry i at byte i*32
// being queue offset first+i:
//
//	pos i64 | size u32 | inner u32 | store time i64 | tag hash u64
//
// inner is the message's index inside its record: a batch record of Count
// messages gives Count entries pointing at the same record.
//
// # Key index
//
//	DIR/keys/<20-digit sequence>.ki   (memory-mapped)
//
// A header, a slot table (hash of topic and key -> newest entry) and
// entries linked to the previous entry of the same slot, RocketMQ IndexFile
// style. Files roll when full. Hits are verified by reading the record from
// the log, so hash collisions never return a wrong message.
//
// # Producer table
//
//	DIR/producers
//
// The idempotent sends the log holds, by producer id (producers.go): the
// leader answers a retry of one of them with its stored copy. Kept in
// memory, snapshotted at most every 10 s; at open the log is replayed from
// the older of the snapshot and the checkpoint.
//
// # Caveats
//
//   - Only a record's own Key is indexed: a batch record is found by the key
//     the producer set on the batch, not by keys inside it.
//   - Index files are written through the page cache and synced by
//     Checkpoint (about once a second); a crash loses nothing because the
//     log replays everything after the last checkpoint.
package index
