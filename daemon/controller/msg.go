package controller

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/quivermq/quiver/sdk/wire"
)

// A broker's session with the controller is one peer stream
// (wire.TypeCtlSession, whose payload is the first Heartbeat). Both sides
// then send wire.TypeCtlMsg frames holding one Msg each, as JSON: the
// broker heartbeats and requests, the controller answers each heartbeat
// with the state (whole when the broker's is older) and pushes it the
// moment it changes. JSON because this is control traffic, a few
// messages a second per broker, that operators may want to read; every
// decoder bounds its input and checks what it decoded.

// Heartbeat is a broker's report of itself.
type Heartbeat struct {
	Seq       uint64   `json:"seq"`
	Broker    string   `json:"broker"`
	Addr      string   `json:"addr"`
	Group     string   `json:"group"`                // the group's key (GroupKey)
	GroupName string   `json:"group_name,omitempty"` // what the broker's epoch history calls its group
	Peers     []string `json:"peers,omitempty"`
	LastEpoch uint64   `json:"last_epoch"` // the newest epoch its log has data of
	Durable   int64    `json:"durable"`    // its log's durable end
	Role      string   `json:"role"`       // as it acts now
	Epoch     uint64   `json:"epoch"`      // of the role it acts in
	Version   uint64   `json:"version"`    // the newest state index it has
	Stopping  bool     `json:"stopping,omitempty"`
	Failed    string   `json:"failed,omitempty"` // its log failed (fail-stop) and why: it may lead or stay in sync no longer
	MinInsync int      `json:"min_insync"`       // its configured min_insync
}

// Info is the controller quorum as one voter sees it.
type Info struct {
	Voters      []string `json:"voters"`
	Leader      string   `json:"leader"`                 // the raft leader's address ("" while there is none)
	Term        uint64   `json:"term"`                   //
	Self        string   `json:"self,omitempty"`         // the voter that answers
	State       string   `json:"state,omitempty"`        // its raft state: Leader, Follower, Candidate
	LastContact string   `json:"last_contact,omitempty"` // a follower's last contact with the leader
	CommitIndex uint64   `json:"commit_index,omitempty"`
}

// Request kinds.
const (
	ReqISR     = "isr"     // a group leader's proposal of its in-sync set
	ReqTopics  = "topics"  // a group leader registers topics its group hosts
	ReqElect   = "elect"   // quiver admin elect
	ReqHandoff = "handoff" // a stopping leader hands its group over
)

// Msg is one message of a session, either way.
type Msg struct {
	Kind string `json:"kind"` // heartbeat, request (broker); state, result (controller)

	Heartbeat *Heartbeat `json:"heartbeat,omitempty"`

	// request
	ID      uint64   `json:"id,omitempty"`
	Req     string   `json:"req,omitempty"`
	Command *Command `json:"command,omitempty"` // isr, topics
	Group   string   `json:"group,omitempty"`   // elect, handoff: the group's name or key
	Target  string   `json:"target,omitempty"`  // elect, handoff: the broker to elect ("" : the best)
	Unclean bool     `json:"unclean,omitempty"` // elect

	// state, result
	Ack      uint64            `json:"ack,omitempty"`      // state: the heartbeat it answers (0: a push)
	Leader   bool              `json:"leader,omitempty"`   // state: this controller leads (else see Redirect)
	Redirect string            `json:"redirect,omitempty"` // state: the raft leader's address, when known
	Info     *Info             `json:"info,omitempty"`     // state
	State    *State            `json:"state,omitempty"`    // state: when newer than the broker's version
	Live     map[string]int64  `json:"live,omitempty"`     // state: ms since each broker was last heard (-1: not live)
	Waiting  map[string]string `json:"waiting,omitempty"`  // state: groups that wait, and why
	Error    string            `json:"error,omitempty"`    // result: why the request failed ("" : done)
}

// maxMsg bounds a message (a state with every topic of a large cluster).
const maxMsg = wire.MaxFrameSize

// AppendMsg encodes m.
func AppendMsg(dst []byte, m *Msg) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

// DecodeMsg decodes one message and checks what it carries.
func DecodeMsg(b []byte) (*Msg, error) {
	if len(b) > maxMsg {
		return nil, fmt.Errorf("%w: message of %d bytes", ErrBadCommand, len(b))
	}
	var m Msg
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	return &m, nil
}

// DecodeHeartbeat decodes a session's first heartbeat (the payload of
// wire.TypeCtlSession).
func DecodeHeartbeat(b []byte) (*Heartbeat, error) {
	if len(b) > maxMsg {
		return nil, fmt.Errorf("%w: heartbeat of %d bytes", ErrBadCommand, len(b))
	}
	var h Heartbeat
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	return &h, h.check()
}

func (h *Heartbeat) check() error {
	switch {
	case h.Broker == "" || len(h.Broker) > wire.MaxClientIDLen:
		return fmt.Errorf("%w: heartbeat: broker id %q", ErrBadCommand, h.Broker)
	case h.Addr == "" || len(h.Addr) > wire.MaxAddrLen:
		return fmt.Errorf("%w: heartbeat: address %q", ErrBadCommand, h.Addr)
	case h.Group == "":
		return fmt.Errorf("%w: heartbeat: no group", ErrBadCommand)
	case h.Durable < 0:
		return fmt.Errorf("%w: heartbeat: durable %d", ErrBadCommand, h.Durable)
	case len(h.Peers) > wire.MaxRouteBrokers:
		return fmt.Errorf("%w: heartbeat: %d peers", ErrBadCommand, len(h.Peers))
	}
	return nil
}

func (m *Msg) check() error {
	switch m.Kind {
	case "heartbeat":
		if m.Heartbeat == nil {
			return fmt.Errorf("%w: a heartbeat message without a heartbeat", ErrBadCommand)
		}
		return m.Heartbeat.check()
	case "request":
		if m.ID == 0 {
			return fmt.Errorf("%w: a request without an id", ErrBadCommand)
		}
		switch m.Req {
		case ReqISR, ReqTopics:
			if m.Command == nil || m.Command.Group == "" {
				return fmt.Errorf("%w: a %s request without its command", ErrBadCommand, m.Req)
			}
		case ReqElect, ReqHandoff:
			if m.Group == "" {
				return fmt.Errorf("%w: a %s request without a group", ErrBadCommand, m.Req)
			}
		default:
			return fmt.Errorf("%w: request %q", ErrBadCommand, m.Req)
		}
	case "state":
		if m.State != nil {
			// The same checks as a snapshot's.
			b, err := m.State.Marshal()
			if err != nil {
				return fmt.Errorf("%w: %v", ErrBadCommand, err)
			}
			if _, err := UnmarshalState(b); err != nil {
				return err
			}
		}
	case "result":
		if m.ID == 0 {
			return fmt.Errorf("%w: a result without an id", ErrBadCommand)
		}
	default:
		return fmt.Errorf("%w: message kind %q", ErrBadCommand, m.Kind)
	}
	return nil
}

// sameRegistration reports whether the State already holds what the
// heartbeat says of the broker.
func sameRegistration(s *State, h *Heartbeat) bool {
	b := s.Brokers[h.Broker]
	if b == nil || b.Addr != h.Addr || b.Group != h.Group || b.MinInsync != h.MinInsync {
		return false
	}
	g := s.Groups[h.Group]
	if g == nil || !slices.Contains(g.Members, h.Broker) {
		return false
	}
	if g.Name == "" && h.GroupName != "" {
		return false
	}
	return len(h.Peers) == 0 || slices.Equal(g.Peers, slices.Sorted(slices.Values(h.Peers)))
}
