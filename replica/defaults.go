package replica

import "time"

// Defaults of replication, written once: this package, the broker and
// quiverd's configuration all take them from here.
const (
	DefaultHeartbeat  = time.Second      // follower acks when idle; leader heartbeats when it has nothing to send
	DefaultTimeout    = 10 * time.Second // drop the peer after this long without hearing from it
	DefaultInsyncLag  = 5 * time.Second  // a follower leaves the in-sync set after this long without having everything
	DefaultAckTimeout = 2 * time.Second  // a min-insync send fails (retryable) after this long without its acks
	DefaultChunkBytes = 256 << 10        // records of one ReplData
	DefaultCatchupMiB = 64               // MiB/s to followers catching up, in all
)
