// Package broker is the broker's logic, without the network: topics and
// their queues, the produce and fetch paths, consumer groups and their
// committed offsets, and the status document. daemon/server puts it on
// QUIC; daemon/admin on HTTP.
//
// # Produce
//
// A produce is validated, given its queue, and handed to the commit log
// with AppendAsync; the log's group commit acknowledges it (after the sync,
// for a sync produce) and the broker replies. A produce that waits in the
// log's intake queue longer than MaxQueueWait fails with the retryable BUSY
// code, carrying the wait and the queue depth (incident 001): the log is the
// send queue.
//
// # Fetch
//
// A fetch reads a queue through its consume queue (daemon/store's index)
// and the log; at the end of the queue it waits for the next record
// (long poll). Records are indexed in the same step that makes them
// durable, so a message is visible the moment it is acknowledged
// (incident 003).
//
// # Control records
//
// Topic definitions and committed consumer offsets are records in the log,
// in the reserved topics __topics and __offsets (queue 0, control flag).
// The broker's tables are derived from them by one applier, which both the
// write path (after its append) and recovery run, so a follower that copies
// the log holds exactly the leader's tables (incident 002). A snapshot of
// the tables (DATA/state/snapshot.json) bounds replay at start and survives
// retention of old segments.
//
// # Consumer groups
//
// Membership is in memory on the broker. Queues are assigned by range over
// the members sorted by id, and move cooperatively: a queue goes to its new
// member only once its old member has released it (see sdk/wire's
// group.go), so a rebalance causes no duplicates beyond what was in flight.
package broker
