package wire

// The status document: what a broker's /status endpoint and a StatusResp
// carry, as JSON. The broker fills it; the SDK and the CLI read it. Byte
// positions are log positions; times are RFC 3339 with nanoseconds.

// Status is a broker's status document.
type Status struct {
	Broker    BrokerInfo `json:"broker"`
	Positions Positions  `json:"positions"`
	Lag       Lag        `json:"lag"`
	SendQueue SendQueue  `json:"send_queue"`
	Disk      Disk       `json:"disk"`
	Warnings  []string   `json:"warnings"`
	// Topics are the topics StatusSel selected (by default the first
	// DefaultStatusTopics by name); TopicsTotal and QueuesTotal count them
	// all; TopicsNext, when set, is the From of the next page.
	Topics      []TopicStatus `json:"topics"`
	TopicsTotal int           `json:"topics_total"`
	QueuesTotal int           `json:"queues_total"`
	TopicsNext  string        `json:"topics_next,omitempty"`
	Groups      []GroupStatus `json:"groups"`
	Replication *Replication  `json:"replication,omitempty"`
	Cluster     []RouteBroker `json:"cluster,omitempty"` // the other brokers this one knows of
	Connections *Connections  `json:"connections,omitempty"`
	// ClientsSetAside are the brokers this broker's clients report they
	// set aside now (fault avoidance; SDK reports, wire.ClientReport).
	ClientsSetAside []SetAside `json:"clients_set_aside,omitempty"`
}

// SetAside is one broker that clients set aside, as they reported it.
type SetAside struct {
	Addr    string `json:"addr"`
	Clients int    `json:"clients"` // how many clients report it
	// Reason and Last are the newest report's.
	Reason string `json:"reason"`
	Last   string `json:"last"`
}

// Disk is the data file system's free space, with the unused room of the
// log's preallocated segments, against the broker's reserve: below it
// (full) sends are refused with DISK_FULL.
type Disk struct {
	FreeBytes    int64 `json:"free_bytes"`
	LogRoomBytes int64 `json:"log_room_bytes"` // unused in the log's preallocated segments
	TotalBytes   int64 `json:"total_bytes"`
	ReserveBytes int64 `json:"reserve_bytes"`
	Full         bool  `json:"full"`
}

type BrokerInfo struct {
	ID      string `json:"id"`
	Version string `json:"version"`
	// Build is the broker's build: version, commit, build date, Go
	// version and platform, as quiverd --version prints it.
	Build      string `json:"build"`
	Started    string `json:"started"`
	UptimeSec  int64  `json:"uptime_sec"`
	Engine     string `json:"engine"`
	Durability string `json:"durability"`
	Listen     string `json:"listen,omitempty"`
	Admin      string `json:"admin,omitempty"`
}

// Positions of the commit log: written (handed to the disk) >= durable
// (synced); dispatched is what consumers can see.
type Positions struct {
	Start        int64  `json:"start"`
	Written      int64  `json:"written"`
	Durable      int64  `json:"durable"`
	Dispatched   int64  `json:"dispatched"`
	DurableAt    string `json:"durable_at,omitempty"`
	DispatchedAt string `json:"dispatched_at,omitempty"`
}

// Lag between the positions, in bytes and in time (incident 003).
type Lag struct {
	// WrittenNotDurable: bytes written but not yet synced (async appends).
	WrittenNotDurable int64 `json:"written_not_durable_bytes"`
	// WrittenNotVisible: bytes written but not yet visible to consumers.
	WrittenNotVisible int64 `json:"written_not_visible_bytes"`
	// NotVisibleMs: how long the oldest not-yet-visible byte has waited (0: none).
	NotVisibleMs int64 `json:"not_visible_ms"`
	// NotDurableMs: how long the oldest unsynced byte has waited (0: none).
	NotDurableMs int64 `json:"not_durable_ms"`
}

type SendQueue struct {
	Depth     int   `json:"depth"`
	BusyTotal int64 `json:"busy_total"`
	MaxWaitMs int64 `json:"max_wait_ms"`
}

type TopicStatus struct {
	Name   string        `json:"name"`
	Queues []QueueStatus `json:"queues"`
}

// QueueStatus is one queue's readable offsets [Min, Max) and the time of
// its newest message, like RocketMQ's topicStatus.
type QueueStatus struct {
	Queue          uint32 `json:"queue"`
	Min            uint64 `json:"min"`
	Max            uint64 `json:"max"`
	LastStore      string `json:"last_store,omitempty"`
	LastStoreAgeMs int64  `json:"last_store_age_ms,omitempty"`
}

type GroupStatus struct {
	Name       string         `json:"name"`
	Generation uint64         `json:"generation"`
	Members    []MemberStatus `json:"members"`
	Offsets    []GroupOffset  `json:"offsets"`
}

type MemberStatus struct {
	ID         string     `json:"id"`
	Topics     []string   `json:"topics"`
	Queues     []QueueRef `json:"queues"`
	LastSeenMs int64      `json:"last_seen_ms"`
}

// GroupOffset is a group's committed offset in one queue and its lag
// (messages between it and the queue's end).
type GroupOffset struct {
	Topic     string `json:"topic"`
	Queue     uint32 `json:"queue"`
	Committed uint64 `json:"committed"`
	Max       uint64 `json:"max"`
	Lag       uint64 `json:"lag"`
}

// Connections are the broker's client connections, and those that closed
// before a session was established (incident 004), per source.
type Connections struct {
	Open             int             `json:"open"`
	GSO              int             `json:"gso"` // open connections whose packets go out with UDP GSO
	Sessions         int             `json:"sessions"`
	AcceptedTotal    int64           `json:"accepted_total"`
	FailedHandshakes []HandshakeFail `json:"failed_handshakes"`
	// Clients counts the sessions open now by the client's build (Hello),
	// most first.
	Clients []ClientBuild `json:"clients"`
	// Forbidden counts requests refused FORBIDDEN, per principal and right
	// (only with an ACL).
	Forbidden []Forbidden `json:"forbidden,omitempty"`
}

// Forbidden is one principal's refusals for one right.
type Forbidden struct {
	Principal  string `json:"principal"`
	Right      string `json:"right"`
	Count      int64  `json:"count"`
	Last       string `json:"last"`
	LastReason string `json:"last_reason"`
}

// ClientBuild is how many sessions clients of one build have open.
type ClientBuild struct {
	Build    string `json:"build"`
	Sessions int    `json:"sessions"`
}

type HandshakeFail struct {
	Source     string `json:"source"`
	ClientID   string `json:"client_id"`
	Count      int64  `json:"count"`
	PerMinute  int64  `json:"last_minute"`
	Last       string `json:"last"`
	LastReason string `json:"last_reason"`
}

// Replication is a broker's replication state in the status document.
type Replication struct {
	// Role: leader, follower, fenced (a leader that learned of a newer
	// epoch) or waiting (under a controller: no role given yet, or the
	// group has no leader).
	Role   string `json:"role"`
	Epoch  uint64 `json:"epoch"`
	Leader string `json:"leader,omitempty"` // the leader's broker id
	// Note says why the broker takes no writes now ("" when it does).
	Note string `json:"note,omitempty"`
	// MinInsync is how many followers of the in-sync set must have a send
	// durable before it is acknowledged (0: none).
	MinInsync int `json:"min_insync"`
	// InSync is the size of the committed in-sync set (followers), ISR
	// the set and ISRVersion its version; Proposal a change of it waiting
	// for the controller (on a leader).
	InSync     int             `json:"in_sync"`
	ISR        []string        `json:"isr,omitempty"`
	ISRVersion uint64          `json:"isr_version,omitempty"`
	Proposal   string          `json:"proposal,omitempty"`
	Followers  []ReplicaStatus `json:"followers,omitempty"` // on a leader
	Following  *FollowerStatus `json:"following,omitempty"` // on a follower
	Epochs     []Epoch         `json:"epochs"`
	// Controller is the controller quorum and the groups it runs, as this
	// broker knows them (brokers under a controller only).
	Controller *ControllerStatus `json:"controller,omitempty"`
}

// ControllerStatus is the controller quorum, and every group it runs, as
// a broker knows them.
type ControllerStatus struct {
	Voters []string `json:"voters"`
	Leader string   `json:"leader"` // the quorum's leader (an address; "" while there is none)
	Term   uint64   `json:"term"`
	// Connected: this broker has a session with the quorum's leader.
	Connected bool `json:"connected"`
	// LeaseMs is how much longer the controller vouches for this broker's
	// session (negative: lapsed; a leader with min-insync 0 then takes no
	// writes).
	LeaseMs int64 `json:"lease_ms"`
	// Version is the index of the controller state this broker has.
	Version uint64 `json:"version"`
	// RaftState and LastContact: this broker's own raft member, when it is
	// a voter (Leader, Follower or Candidate; a follower's last contact
	// with the quorum's leader).
	RaftState   string         `json:"raft_state,omitempty"`
	LastContact string         `json:"last_contact,omitempty"`
	Groups      []GroupControl `json:"groups"`
}

// GroupControl is one group as the controller runs it.
type GroupControl struct {
	Name       string `json:"name"`
	Leader     string `json:"leader,omitempty"` // broker id
	LeaderAddr string `json:"leader_addr,omitempty"`
	Epoch      uint64 `json:"epoch"`
	// ISR is the committed in-sync set, the leader included: only its
	// members, and the eligible ones, are elected automatically.
	ISR        []string `json:"isr"`
	ISRVersion uint64   `json:"isr_version"`
	// Eligible are members outside the set that may still be elected: they
	// left it while it fell below min-insync, so no send was acknowledged
	// without them since.
	Eligible  []string         `json:"eligible,omitempty"`
	Members   []MemberControl  `json:"members"`
	Elections []ElectionStatus `json:"elections,omitempty"` // the newest last
	Waiting   string           `json:"waiting,omitempty"`   // why the group has no leader now
	Topics    int              `json:"topics"`
}

// MemberControl is one broker of a group, as the controller sees it.
type MemberControl struct {
	ID     string `json:"id"`
	Addr   string `json:"addr"`
	Live   bool   `json:"live"`   // its controller session is live
	AgeMs  int64  `json:"age_ms"` // since the controller last heard it (-1: not live)
	InSync bool   `json:"in_sync"`
	// Left says why it is not in the in-sync set, and LeftAgoMs when it left.
	Left      string `json:"left,omitempty"`
	LeftAgoMs int64  `json:"left_ago_ms,omitempty"`
}

// ElectionStatus is one election of a group's leader.
type ElectionStatus struct {
	Epoch   uint64 `json:"epoch"`
	From    string `json:"from,omitempty"`
	To      string `json:"to"`
	Reason  string `json:"reason"`
	Unclean bool   `json:"unclean,omitempty"`
	At      string `json:"at"`
	// LeaderlessMs is how long the group had no live leader before it
	// (from the old leader's last heartbeat to the commit).
	LeaderlessMs int64 `json:"leaderless_ms,omitempty"`
}

// ReplicaStatus is a leader's view of one follower.
type ReplicaStatus struct {
	ID           string `json:"id"`
	Addr         string `json:"addr"`
	Connected    bool   `json:"connected"`
	InSync       bool   `json:"in_sync"`            // in the committed in-sync set
	Proposed     bool   `json:"proposed,omitempty"` // proposed for it, not committed yet (it counts for acknowledgements already)
	Leaving      string `json:"leaving,omitempty"`  // proposed out of it, and why (it still counts until committed)
	Acked        int64  `json:"acked"`
	LagBytes     int64  `json:"lag_bytes"`
	LagMs        int64  `json:"lag_ms"` // since the follower last had everything the leader had; -1: never
	LastAckMs    int64  `json:"last_ack_ms"`
	Sessions     int64  `json:"sessions"`
	Reconnects   int64  `json:"reconnects"`
	LastClose    string `json:"last_close,omitempty"`
	LastCloseBy  string `json:"last_close_by,omitempty"` // "leader" or "follower"
	LastCloseAgo int64  `json:"last_close_ago_ms,omitempty"`
}

// FollowerStatus is a follower's view of its replication.
type FollowerStatus struct {
	LeaderAddr   string `json:"leader_addr"`
	Connected    bool   `json:"connected"`
	End          int64  `json:"end"`
	Durable      int64  `json:"durable"`
	LeaderEnd    int64  `json:"leader_end"`
	LagBytes     int64  `json:"lag_bytes"`
	LastDataMs   int64  `json:"last_heard_ms"`
	Sessions     int64  `json:"sessions"`
	Reconnects   int64  `json:"reconnects"`
	LastClose    string `json:"last_close,omitempty"`
	LastCloseBy  string `json:"last_close_by,omitempty"` // "leader" or "follower"
	LastCloseAgo int64  `json:"last_close_ago_ms,omitempty"`
	Truncations  int64  `json:"truncations"`
}
