package controller

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/quivermq/quiver/sdk/wire"
)

// State is what the controller quorum agrees on: the brokers, their
// groups, each group's leader, epoch and in-sync set, and the topics each
// group hosts. Raft's log holds the Commands that built it; a snapshot
// holds it whole (JSON). It changes only through Apply, which is pure:
// every voter that applies the same commands holds the same State.
type State struct {
	// Index is the raft index of the last command applied: the version
	// brokers compare to know they have the newest state.
	Index   uint64             `json:"index"`
	Brokers map[string]*Broker `json:"brokers"` // by id
	Groups  map[string]*Group  `json:"groups"`  // by key
}

// Broker is a registered broker.
type Broker struct {
	ID    string `json:"id"`
	Addr  string `json:"addr"`  // where peers and clients reach it
	Group string `json:"group"` // its group's key
	// MinInsync is its configured min_insync (a group's members should
	// agree; the group counts the smallest, see Group.eligible).
	MinInsync int `json:"min_insync,omitempty"`
}

// Group is one broker group.
type Group struct {
	// Key identifies the group: its configured name, or "peers:" and its
	// members' sorted addresses when it has none (brokers started alike
	// with the same --peers are one group).
	Key string `json:"key"`
	// Name is what clients and operators see: the configured name, else
	// the id of the group's first leader (which never changes after).
	Name string `json:"name"`
	// Peers are the configured addresses of the group's brokers; the
	// first election waits for all of them.
	Peers   []string `json:"peers,omitempty"`
	Members []string `json:"members"` // registered broker ids, sorted
	// Leader, Epoch: who leads, and the leadership's epoch ("" and 0
	// before the first election).
	Leader string `json:"leader,omitempty"`
	Epoch  uint64 `json:"epoch"`
	// ISR is the committed in-sync set, the leader included, sorted: only
	// its members may be elected without --unclean.
	ISR        []string `json:"isr"`
	ISRVersion uint64   `json:"isr_version"`
	// ELR are the eligible members outside the set (Kafka's KIP-966): a
	// follower that left the set while that left it with fewer followers
	// than min-insync. No send can be acknowledged then (the leader needs
	// min-insync followers in the committed set), so it still has every
	// acknowledged send and may be elected, until the set holds min-insync
	// followers again. It keeps a group electable when its leader and a
	// follower die together and the follower's departure was committed
	// first.
	ELR []string `json:"elr,omitempty"`
	// Left says why members are not in the set (and when they left).
	Left      map[string]Left   `json:"left,omitempty"`
	Elections []Election        `json:"elections,omitempty"` // the newest last, at most keepElections
	Topics    map[string]uint32 `json:"topics,omitempty"`    // topics with queues on this group, and how many
}

// Left is why a member left the in-sync set.
type Left struct {
	Reason string `json:"reason"`
	AtMs   int64  `json:"at_ms"`
}

// Election is one change of a group's leader.
type Election struct {
	Epoch   uint64 `json:"epoch"`
	From    string `json:"from,omitempty"`
	To      string `json:"to"`
	Reason  string `json:"reason"`
	Unclean bool   `json:"unclean,omitempty"`
	AtMs    int64  `json:"at_ms"`
	// TookMs is how long the group had no live leader, from its old
	// leader's last heartbeat (0 for a handoff or the first election).
	TookMs int64 `json:"took_ms,omitempty"`
}

const keepElections = 16

// Command ops.
const (
	OpRegister = "register" // a broker joins (or comes back with a new address)
	OpElect    = "elect"    // a group gets a leader in a new epoch
	OpISR      = "isr"      // a group's in-sync set changes
	OpTopics   = "topics"   // topics appear on a group
)

// Command is one change of the State, as raft's log holds it (JSON).
type Command struct {
	Op   string `json:"op"`
	AtMs int64  `json:"at_ms"` // the proposer's clock: Apply reads none

	// register
	Broker    *Broker  `json:"broker,omitempty"`
	GroupName string   `json:"group_name,omitempty"` // the name the broker knows its group by ("" : none yet)
	Peers     []string `json:"peers,omitempty"`

	// elect, isr, topics
	Group      string            `json:"group,omitempty"`
	Epoch      uint64            `json:"epoch,omitempty"`       // elect: the epoch it replaces; isr: the leader's
	Floor      uint64            `json:"floor,omitempty"`       // elect: the new epoch is newer than this too (the members' histories)
	ISRVersion uint64            `json:"isr_version,omitempty"` // isr: the version it changes
	Leader     string            `json:"leader,omitempty"`      // elect
	ISR        []string          `json:"isr,omitempty"`         // elect, isr: the whole new set
	Reasons    map[string]string `json:"reasons,omitempty"`     // isr: why members leave
	Reason     string            `json:"reason,omitempty"`      // elect
	Unclean    bool              `json:"unclean,omitempty"`     // elect
	TookMs     int64             `json:"took_ms,omitempty"`     // elect
	Topics     []wire.TopicInfo  `json:"topics,omitempty"`      // topics
}

// Errors of Apply: the command was valid when proposed, and the State
// moved on before it was applied (or it was never valid).
var (
	ErrStaleEpoch   = errors.New("controller: the group's epoch has changed")
	ErrStaleISR     = errors.New("controller: the group's in-sync set has changed")
	ErrUnknown      = errors.New("controller: unknown broker or group")
	ErrBadCommand   = errors.New("controller: bad command")
	ErrNotElectable = errors.New("controller: not electable")
)

// NewState is the empty State.
func NewState() *State {
	return &State{Brokers: map[string]*Broker{}, Groups: map[string]*Group{}}
}

// Apply applies c at raft index idx. An error leaves the State as it was
// (but for Index, which follows raft's log whatever the outcome).
func (s *State) Apply(idx uint64, c *Command) error {
	s.Index = max(s.Index, idx)
	switch c.Op {
	case OpRegister:
		return s.register(c)
	case OpElect:
		return s.elect(c)
	case OpISR:
		return s.alterISR(c)
	case OpTopics:
		return s.topics(c)
	}
	return fmt.Errorf("%w: op %q", ErrBadCommand, c.Op)
}

func (s *State) register(c *Command) error {
	b := c.Broker
	if b == nil || b.ID == "" || b.Addr == "" || b.Group == "" {
		return fmt.Errorf("%w: a registration needs an id, an address and a group", ErrBadCommand)
	}
	if old := s.Brokers[b.ID]; old != nil && old.Group != b.Group {
		if g := s.Groups[old.Group]; g != nil && (g.Leader == b.ID || slices.Contains(g.ISR, b.ID)) {
			return fmt.Errorf("%w: broker %s is in group %s's in-sync set and cannot move to %s", ErrBadCommand, b.ID, g.displayName(), b.Group)
		} else if g != nil {
			g.Members = slices.DeleteFunc(g.Members, func(id string) bool { return id == b.ID })
		}
	}
	s.Brokers[b.ID] = &Broker{ID: b.ID, Addr: b.Addr, Group: b.Group, MinInsync: b.MinInsync}
	g := s.Groups[b.Group]
	if g == nil {
		g = &Group{Key: b.Group, Topics: map[string]uint32{}}
		s.Groups[b.Group] = g
	}
	if !slices.Contains(g.Members, b.ID) {
		g.Members = append(g.Members, b.ID)
		sort.Strings(g.Members)
	}
	if len(c.Peers) > 0 {
		g.Peers = slices.Sorted(slices.Values(c.Peers))
	}
	if g.Name == "" && c.GroupName != "" {
		g.Name = c.GroupName
	}
	return nil
}

func (s *State) elect(c *Command) error {
	g := s.Groups[c.Group]
	if g == nil {
		return fmt.Errorf("%w: group %s", ErrUnknown, c.Group)
	}
	if g.Epoch != c.Epoch {
		return fmt.Errorf("%w: group %s is at epoch %d, not %d", ErrStaleEpoch, g.displayName(), g.Epoch, c.Epoch)
	}
	if !slices.Contains(g.Members, c.Leader) {
		return fmt.Errorf("%w: %s is not a member of group %s", ErrNotElectable, c.Leader, g.displayName())
	}
	if !c.Unclean && g.Leader != "" && !slices.Contains(g.ISR, c.Leader) && !slices.Contains(g.ELR, c.Leader) {
		return fmt.Errorf("%w: %s is not in group %s's in-sync set %v (nor eligible: %v)", ErrNotElectable, c.Leader, g.displayName(), g.ISR, g.ELR)
	}
	if !slices.Contains(c.ISR, c.Leader) {
		return fmt.Errorf("%w: the new in-sync set %v lacks its leader %s", ErrBadCommand, c.ISR, c.Leader)
	}
	for _, id := range c.ISR {
		if !slices.Contains(g.Members, id) {
			return fmt.Errorf("%w: %s is not a member of group %s", ErrBadCommand, id, g.displayName())
		}
	}
	old := g.ISR
	epoch := max(g.Epoch, c.Floor) + 1
	g.Elections = append(g.Elections, Election{Epoch: epoch, From: g.Leader, To: c.Leader, Reason: c.Reason,
		Unclean: c.Unclean, AtMs: c.AtMs, TookMs: c.TookMs})
	if len(g.Elections) > keepElections {
		g.Elections = slices.Delete(g.Elections, 0, len(g.Elections)-keepElections)
	}
	oldLeader := g.Leader
	g.Leader, g.Epoch = c.Leader, epoch
	if g.Name == "" {
		g.Name = c.Leader
	}
	if c.Unclean {
		g.ELR = nil // the new leader's log is the truth: nobody else is sure to have it
	}
	g.setISR(s, old, c.ISR, c.AtMs, oldLeader, func(id string) string {
		if id == g.Elections[len(g.Elections)-1].From {
			return "was the leader: " + c.Reason
		}
		return "not live at the election of epoch " + fmt.Sprint(g.Epoch)
	})
	return nil
}

func (s *State) alterISR(c *Command) error {
	g := s.Groups[c.Group]
	if g == nil {
		return fmt.Errorf("%w: group %s", ErrUnknown, c.Group)
	}
	switch {
	case g.Epoch != c.Epoch:
		return fmt.Errorf("%w: group %s is at epoch %d, not %d", ErrStaleEpoch, g.displayName(), g.Epoch, c.Epoch)
	case g.ISRVersion != c.ISRVersion:
		return fmt.Errorf("%w: group %s's in-sync set is at version %d, not %d", ErrStaleISR, g.displayName(), g.ISRVersion, c.ISRVersion)
	case !slices.Contains(c.ISR, g.Leader):
		return fmt.Errorf("%w: the new in-sync set %v lacks the leader %s", ErrBadCommand, c.ISR, g.Leader)
	}
	for _, id := range c.ISR {
		if !slices.Contains(g.Members, id) {
			return fmt.Errorf("%w: %s is not a member of group %s", ErrBadCommand, id, g.displayName())
		}
	}
	g.setISR(s, g.ISR, c.ISR, c.AtMs, "", func(id string) string {
		if r := c.Reasons[id]; r != "" {
			return r
		}
		return "left the in-sync set"
	})
	return nil
}

// setISR replaces the set, bumping its version, records why members left
// it, and keeps the eligible members (ELR): followers that left it while
// it fell below min-insync stay electable until it holds min-insync
// followers again. exLeader, a leader replaced by an election, is never
// eligible: with async durability its own log may lack a send its
// followers acknowledged.
func (g *Group) setISR(s *State, old, isr []string, atMs int64, exLeader string, why func(string) string) {
	g.ISR = slices.Compact(slices.Sorted(slices.Values(isr)))
	g.ISRVersion++
	if g.Left == nil {
		g.Left = map[string]Left{}
	}
	k := g.minInsync(s)
	below := k > 0 && len(g.Followers()) < k
	for _, id := range old {
		if slices.Contains(g.ISR, id) {
			continue
		}
		g.Left[id] = Left{Reason: why(id), AtMs: atMs}
		if below && id != exLeader && !slices.Contains(g.ELR, id) {
			g.ELR = append(g.ELR, id)
		}
	}
	if !below {
		g.ELR = nil // sends may be acknowledged without them from now on
	}
	g.ELR = slices.DeleteFunc(g.ELR, func(id string) bool { return slices.Contains(g.ISR, id) })
	sort.Strings(g.ELR)
	for _, id := range g.ISR {
		delete(g.Left, id)
	}
}

// minInsync is the smallest min_insync of the group's members: ELR's rule
// holds only if no send is acknowledged with fewer followers than that.
func (g *Group) minInsync(s *State) int {
	k := -1
	for _, id := range g.Members {
		if b := s.Brokers[id]; b != nil && (k < 0 || b.MinInsync < k) {
			k = b.MinInsync
		}
	}
	return max(k, 0)
}

func (s *State) topics(c *Command) error {
	g := s.Groups[c.Group]
	if g == nil {
		return fmt.Errorf("%w: group %s", ErrUnknown, c.Group)
	}
	if g.Topics == nil {
		g.Topics = map[string]uint32{}
	}
	for _, t := range c.Topics {
		if _, ok := g.Topics[t.Name]; !ok && t.Queues > 0 && t.Name != "" {
			g.Topics[t.Name] = t.Queues // the first definition wins, as in the group's log
		}
	}
	return nil
}

func (g *Group) displayName() string {
	if g.Name != "" {
		return g.Name
	}
	return g.Key
}

// Followers is the in-sync set without the leader.
func (g *Group) Followers() []string {
	return slices.DeleteFunc(slices.Clone(g.ISR), func(id string) bool { return id == g.Leader })
}

// Clone is a deep copy (the State handed out is never the one Apply changes).
func (s *State) Clone() *State {
	c := &State{Index: s.Index, Brokers: make(map[string]*Broker, len(s.Brokers)), Groups: make(map[string]*Group, len(s.Groups))}
	for id, b := range s.Brokers {
		bb := *b
		c.Brokers[id] = &bb
	}
	for k, g := range s.Groups {
		gg := *g
		gg.Peers, gg.Members, gg.ISR, gg.ELR = slices.Clone(g.Peers), slices.Clone(g.Members), slices.Clone(g.ISR), slices.Clone(g.ELR)
		gg.Left, gg.Topics = maps.Clone(g.Left), maps.Clone(g.Topics)
		gg.Elections = slices.Clone(g.Elections)
		c.Groups[k] = &gg
	}
	return c
}

// GroupOf is the group of broker id (nil: not registered).
func (s *State) GroupOf(id string) *Group {
	if b := s.Brokers[id]; b != nil {
		return s.Groups[b.Group]
	}
	return nil
}

// GroupNamed is the group whose name or key is name.
func (s *State) GroupNamed(name string) *Group {
	if g := s.Groups[name]; g != nil {
		return g
	}
	for _, g := range s.Groups {
		if g.Name == name {
			return g
		}
	}
	return nil
}

// Marshal encodes the State (snapshots, and the state pushed to brokers).
func (s *State) Marshal() ([]byte, error) { return json.Marshal(s) }

// maxState bounds a decoded State (a snapshot or a push).
const maxState = 64 << 20

// UnmarshalState decodes a State, checking that it holds together.
func UnmarshalState(b []byte) (*State, error) {
	if len(b) > maxState {
		return nil, fmt.Errorf("%w: state of %d bytes", ErrBadCommand, len(b))
	}
	s := NewState()
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("%w: state: %v", ErrBadCommand, err)
	}
	if s.Brokers == nil {
		s.Brokers = map[string]*Broker{}
	}
	if s.Groups == nil {
		s.Groups = map[string]*Group{}
	}
	for id, b := range s.Brokers {
		if b == nil || b.ID != id {
			return nil, fmt.Errorf("%w: state: broker %q", ErrBadCommand, id)
		}
	}
	for k, g := range s.Groups {
		if g == nil || g.Key != k {
			return nil, fmt.Errorf("%w: state: group %q", ErrBadCommand, k)
		}
		if g.Leader != "" && !slices.Contains(g.ISR, g.Leader) {
			return nil, fmt.Errorf("%w: state: group %q's leader %s is not in its in-sync set", ErrBadCommand, k, g.Leader)
		}
	}
	return s, nil
}

// DecodeCommand decodes a raft log entry.
func DecodeCommand(b []byte) (*Command, error) {
	var c Command
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	return &c, nil
}

// GroupKey is the key of a group of brokers started with peers and name.
func GroupKey(name string, peers []string) string {
	if name != "" {
		return name
	}
	return "peers:" + strings.Join(slices.Sorted(slices.Values(peers)), ",")
}
