// Package replica copies a broker's commit log to followers over QUIC.
//
// A broker group is one leader and N followers. A follower dials its
// leader on a peer connection of its own (daemon/peer: both sides present
// a certificate of the group's bundle), opens a stream whose first frame
// asks for the log from its own end (ReplStart). The leader answers with
// its epoch history and where to start (ReplHello), then streams runs of
// whole records (ReplData) as they become durable on the leader (a
// follower never holds a record its leader could lose in a crash, so a
// leader that restarts may lead its epoch again), or a heartbeat when it
// has none for a while. The follower writes them through its own log at
// the same positions (log.AppendRawAsync: the same verification, group
// commit and durability rules as local appends), so its log is
// byte-identical to the leader's, and its indexes, topics and committed
// consumer offsets (control records) are built from it the same way.
//
// # Acks (incident 000)
//
// The follower acks its durable position, with its session's epoch, after
// every batch its log applies, and on its own heartbeat timer, which
// nothing else resets. The leader drops a follower only when it heard
// nothing from it for the timeout; the follower drops the leader when the
// leader sent nothing (data or heartbeat) for its timeout. Whoever closes
// says why in the QUIC close, and both sides log what they saw: the side
// that closed, the true reason; the other, the reason it was given.
//
// # The in-sync set and synchronous replication
//
// The Tracker (tracker.go, pure: no goroutine, no clock) holds the rule.
// The committed in-sync set comes from the controller (or, in a group run
// by hand, from the leader itself); with min-insync = K a send is refused
// at once while that set has fewer than K followers, and acknowledged
// once every follower of the set, and of a proposed addition, has it
// durable. The set shrinks only when the controller commits it; a
// follower joins only with every acknowledged send durable. So every
// acknowledged send is on every broker the controller may elect.
//
// # Epochs
//
// Every leadership has an epoch; the epoch history (Epochs) records where
// each began. A follower that comes to a leader with records of an epoch
// the leader does not have past some point (after a failover) is told to
// truncate there first (the leader's EndOf for the follower's last epoch).
// A follower refuses a leader older than its group's epoch (MinEpoch); a
// leader ends a session whose acks carry another epoch, and one that meets
// a follower with a newer epoch than its own has been replaced and must
// stop taking writes.
package replica
