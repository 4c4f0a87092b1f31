package sdk

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/quivermq/quiver/sdk/wire"
)

// TopicInfo is a topic and its number of queues.
type TopicInfo = wire.TopicInfo

// Status is a broker's status document (docs/operations.md).
type Status = wire.Status

// Admin manages topics and reads status. Get one with Client.Admin.
type Admin struct{ cl *Client }

// Admin returns the client's admin interface.
func (cl *Client) Admin() *Admin { return &Admin{cl: cl} }

// CreateTopic creates a topic with the given number of queues. Creating a
// topic that exists with the same number of queues succeeds.
func (a *Admin) CreateTopic(ctx context.Context, name string, queues int) error {
	if queues < 1 || queues > wire.MaxQueues {
		return fmt.Errorf("quiver: %d queues (1..%d)", queues, wire.MaxQueues)
	}
	req := wire.Create{Topic: name, Queues: uint32(queues)}
	call, err := a.cl.requestAny(ctx, streamControl, wire.TypeCreate, req.Append)
	if err != nil {
		return err
	}
	call.release()
	return nil
}

// Topics lists the topics (all of them when no names are given; a named
// topic that does not exist has 0 queues).
func (a *Admin) Topics(ctx context.Context, names ...string) ([]TopicInfo, error) {
	req := wire.Metadata{Topics: names}
	call, err := a.cl.requestAny(ctx, streamControl, wire.TypeMetadata, req.Append)
	if err != nil {
		return nil, err
	}
	defer call.release()
	var resp wire.MetaResp
	if err := wire.DecodeMetaResp(call.resp, &resp); err != nil {
		return nil, err
	}
	return resp.Topics, nil
}

// Status returns the status document of one broker (the first reachable).
func (a *Admin) Status(ctx context.Context) (*Status, error) {
	call, err := a.cl.requestAny(ctx, streamControl, wire.TypeStatus, func(b []byte) []byte { return b })
	if err != nil {
		return nil, err
	}
	defer call.release()
	doc, err := wire.DecodeStatusResp(call.resp)
	if err != nil {
		return nil, err
	}
	var s Status
	if err := json.Unmarshal(doc, &s); err != nil {
		return nil, fmt.Errorf("quiver: status document: %w", err)
	}
	return &s, nil
}

// EpochInfo is a broker's epoch and leader.
type EpochInfo = wire.EpochInfo

// Promote makes the follower at addr (one of the client's brokers) the
// leader of its group, with a new epoch; it tells the group's other
// brokers, so that an old leader stops taking writes. Promoting a leader
// does nothing. It returns the broker's epoch and leader afterwards.
func (a *Admin) Promote(ctx context.Context, addr string) (EpochInfo, error) {
	var bc *brokerConn
	for _, c := range a.cl.conns {
		if c.addr == addr {
			bc = c
		}
	}
	if bc == nil {
		return EpochInfo{}, fmt.Errorf("quiver: %s is not one of this client's brokers", addr)
	}
	call, err := a.cl.request(ctx, bc, streamControl, wire.TypePromote, func(b []byte) []byte { return b })
	if err != nil {
		return EpochInfo{}, err
	}
	defer call.release()
	var info EpochInfo
	if err := wire.DecodeEpochInfo(call.resp, &info); err != nil {
		return EpochInfo{}, err
	}
	return info, nil
}
