package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/quivermq/quiver/daemon/peer"
	"github.com/quivermq/quiver/sdk/wire"
)

// fsm is the State as hashicorp/raft's FSM. The State it hands out is
// immutable: Apply changes a copy and publishes it, so readers never lock.
type fsm struct {
	mu      sync.Mutex // serialises Apply and Restore
	cur     atomic.Pointer[State]
	changed chan struct{} // closed (and replaced) by every change
	chMu    sync.Mutex
}

func newFSM() *fsm {
	f := &fsm{changed: make(chan struct{})}
	f.cur.Store(NewState())
	return f
}

// state is the newest State (do not modify it).
func (f *fsm) state() *State { return f.cur.Load() }

// watch returns a channel closed at the next change.
func (f *fsm) watch() <-chan struct{} {
	f.chMu.Lock()
	defer f.chMu.Unlock()
	return f.changed
}

func (f *fsm) publish(s *State) {
	f.cur.Store(s)
	f.chMu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.chMu.Unlock()
}

// Apply applies one raft log entry; its result (nil or an error) is the
// ApplyFuture's Response.
func (f *fsm) Apply(l *raft.Log) any {
	c, err := DecodeCommand(l.Data)
	f.mu.Lock()
	defer f.mu.Unlock()
	next := f.state().Clone()
	if err == nil {
		err = next.Apply(l.Index, c)
	}
	if err != nil {
		// A refused command changes nothing but the index.
		next = f.state().Clone()
		next.Index = max(next.Index, l.Index)
	}
	f.publish(next)
	return err
}

// Snapshot hands raft the State as it is now.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	b, err := f.state().Marshal()
	if err != nil {
		return nil, err
	}
	return snapshot(b), nil
}

// Restore replaces the State with a snapshot's.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxState+1))
	if err != nil {
		return err
	}
	s, err := UnmarshalState(b)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.publish(s)
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}

// streamLayer is raft's transport over peer streams: a Dial opens a stream
// of type Raft on the pooled peer connection; the Mux hands accepted ones
// to Accept.
type streamLayer struct {
	d      *peer.Dialer
	addr   addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

type addr string

func (a addr) Network() string { return "quic" }
func (a addr) String() string  { return string(a) }

func newStreamLayer(d *peer.Dialer, self string) *streamLayer {
	return &streamLayer{d: d, addr: addr(self), conns: make(chan net.Conn), closed: make(chan struct{})}
}

// handle is the Mux's handler for Raft streams.
func (l *streamLayer) handle(s *peer.Stream, _ wire.Header, _ []byte) {
	c := peer.NewConn(s.Conn.LocalAddr(), s.Conn.RemoteAddr(), s.QS, s.R)
	select {
	case l.conns <- c:
	case <-l.closed:
		c.Close()
	}
}

var errLayerClosed = errors.New("controller: raft transport closed")

func (l *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, errLayerClosed
	}
}

func (l *streamLayer) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *streamLayer) Addr() net.Addr { return l.addr }

func (l *streamLayer) Dial(a raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return l.d.OpenConn(ctx, string(a), wire.TypeRaft, nil)
}

// hcLogger makes hashicorp/raft log through slog (and so through the
// daemon's rate limit): hclog writes JSON lines, which this parses.
func hcLogger(l *slog.Logger, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Info, Output: &slogWriter{l: l},
		JSONFormat: true, DisableTime: true})
}

type slogWriter struct{ l *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			w.l.Info(line)
			continue
		}
		lv := slog.LevelInfo
		switch m["@level"] {
		case "trace", "debug":
			lv = slog.LevelDebug
		case "warn":
			lv = slog.LevelWarn
		case "error":
			lv = slog.LevelError
		}
		msg, _ := m["@message"].(string)
		mod, _ := m["@module"].(string)
		attrs := []any{"module", mod}
		for k, v := range m {
			if !strings.HasPrefix(k, "@") {
				attrs = append(attrs, k, v)
			}
		}
		w.l.Log(context.Background(), lv, "raft: "+msg, attrs...)
	}
	return len(p), nil
}

// raftApply proposes c and waits for it to be applied; the error is raft's
// (not the leader, timed out) or Apply's (a stale command).
func raftApply(r *raft.Raft, c *Command, timeout time.Duration) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	f := r.Apply(b, timeout)
	if err := f.Error(); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return err
	}
	return nil
}
