// Package replica copies a broker's commit log to followers over QUIC.
//
// A broker group is one leader and N followers. A follower connects to the
// leader like any client (the Hello handshake), then opens a replication
// stream and asks for the log from its own end (ReplStart). The leader
// answers with its epoch history and where to start (ReplHello), then
// streams runs of whole records (ReplData) as they become readable, or a
// heartbeat when it has none for a while. The follower writes them through
// its own log at the same positions (log.AppendRawAsync: the same
// verification, group commit and durability rules as local appends), so
// its log is byte-identical to the leader's, and its indexes, topics and
// committed consumer offsets (control records) are built from it the same
// way.
//
// # Acks (incident 000)
//
// The follower acks its durable position after every batch its log
// applies, and on its own heartbeat timer, which nothing else resets. The
// leader drops a follower only when it heard nothing from it for the
// timeout; the follower drops the leader when the leader sent nothing
// (data or heartbeat) for its timeout. Whoever closes says why in the QUIC
// close, and both sides log what they saw: the side that closed, the true
// reason; the other, the reason it was given.
//
// # In sync and synchronous replication
//
// A follower is in sync while it has had, within InsyncLag, everything
// the leader had. With min-insync = K, the broker refuses a send at once
// (NOT_ENOUGH_REPLICAS, retryable) when fewer than K followers are in sync,
// and otherwise acknowledges it once K in-sync followers have it durable
// (Leader.WaitAcks).
//
// # Epochs
//
// Every leadership has an epoch; the epoch history (Epochs) records where
// each began. A follower that comes to a leader with records of an epoch
// the leader does not have past some point (after a failover) is told to
// truncate there first (the leader's EndOf for the follower's last epoch).
// A leader that meets a follower with a newer epoch than its own has been
// replaced and must stop taking writes.
package replica
