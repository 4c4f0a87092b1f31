package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quivermq/quiver/daemon/acl"
	"github.com/quivermq/quiver/daemon/broker"
	"github.com/quivermq/quiver/sdk/wire"
)

// stream serves the frames of one stream of a session.
type stream struct {
	c  *conn
	qs *quic.Stream
	br *bufio.Reader
	w  *wire.Writer
}

// Frame buffers: a produce keeps its frame's buffer until it is answered.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) <= 1<<20 {
		*b = (*b)[:0]
		bufPool.Put(b)
	}
}

func (st *stream) serve() {
	c := st.c
	defer c.wg.Done()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := st.w.Run(); err != nil {
			c.qc.CloseWithError(closeNormal, "") // the stream is broken: so is the session
		}
	}()
	defer st.w.Close()
	for {
		bp := getBuf()
		h, payload, buf, err := wire.ReadFrame(st.br, *bp)
		*bp = buf
		if err != nil {
			putBuf(bp)
			if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrFrameTooLarge) {
				// The framing is lost: nothing after this can be trusted.
				st.sendError(0, &wire.Error{Code: wire.CodeInvalid, Message: err.Error()})
				c.flushAndClose(closeProtocol, err.Error())
			}
			return
		}
		if !st.dispatch(h, payload, bp) {
			return
		}
	}
}

// dispatch handles one frame; bp is handed on with it. It returns false
// when the connection must stop.
func (st *stream) dispatch(h wire.Header, payload []byte, bp *[]byte) bool {
	s := st.c.s
	switch h.Type {
	case wire.TypeProduce, wire.TypeProduceAt:
		call := broker.NewProduceCall()
		var err error
		if h.Type == wire.TypeProduce {
			err = wire.DecodeProduce(payload, &call.In)
		} else {
			var pa wire.ProduceAt
			if err = wire.DecodeProduceAt(payload, &pa); err == nil {
				call.In, call.DeliverAt = pa.Produce, pa.DeliverAt
			}
		}
		if err != nil {
			putBuf(bp)
			st.sendError(h.RequestID, &wire.Error{Code: wire.CodeInvalid, Message: err.Error()})
			return true
		}
		if s.stopping.Load() {
			putBuf(bp)
			st.sendError(h.RequestID, &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"})
			return true
		}
		if werr := st.c.check(acl.Produce, call.In.Topic); werr != nil {
			putBuf(bp)
			st.sendError(h.RequestID, werr)
			return true
		}
		call.Owner, call.ReqID, call.Buf = st, h.RequestID, bp
		call.Reply = replyProduce
		if h.Flags&wire.FrameNoReply != 0 {
			call.Reply = replyNone
		}
		s.inflight.Add(1)
		s.b.Produce(call)
		return true
	case wire.TypeFetch, wire.TypeMetadata, wire.TypeCreate, wire.TypeGroupSync, wire.TypeCommit, wire.TypeStatus,
		wire.TypePromote, wire.TypeElect, wire.TypeRoute, wire.TypeOffsets, wire.TypeReset, wire.TypeLookup, wire.TypeFetchTags, wire.TypeClientReport, wire.TypeDeleteTopic:
		if s.stopping.Load() {
			putBuf(bp)
			st.sendError(h.RequestID, &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"})
			return true
		}
		select {
		case st.c.pending <- struct{}{}:
		default:
			putBuf(bp)
			st.sendError(h.RequestID, &wire.Error{Code: wire.CodeBusy,
				Message: fmt.Sprintf("%d requests of this connection are already running", cap(st.c.pending))})
			return true
		}
		st.c.wg.Add(1)
		go func() {
			defer st.c.wg.Done()
			defer func() { <-st.c.pending }()
			defer putBuf(bp)
			st.handle(h, payload)
		}()
		return true
	}
	putBuf(bp)
	msg := fmt.Sprintf("frame type %d is not a request", h.Type)
	if h.Type == wire.TypeHello {
		msg = "Hello on an established session"
	}
	st.sendError(h.RequestID, &wire.Error{Code: wire.CodeInvalid, Message: msg})
	st.c.flushAndClose(closeProtocol, msg)
	return false
}

func replyProduce(c *broker.ProduceCall, ack wire.ProduceAck, werr *wire.Error) {
	st := c.Owner.(*stream)
	if werr != nil {
		st.sendError(c.ReqID, werr)
	} else {
		b, start := st.w.Begin(wire.Header{Type: wire.TypeProduceAck, RequestID: c.ReqID})
		st.w.End(ack.Append(b), start)
	}
	putBuf(c.Buf)
	st.c.s.inflight.Done()
}

func replyNone(c *broker.ProduceCall, _ wire.ProduceAck, _ *wire.Error) {
	st := c.Owner.(*stream)
	putBuf(c.Buf)
	st.c.s.inflight.Done()
}

func (st *stream) sendError(reqID uint64, werr *wire.Error) {
	b, start := st.w.Begin(wire.Header{Type: wire.TypeError, RequestID: reqID})
	st.w.End(wire.AppendError(b, werr), start)
}

func (st *stream) ok(reqID uint64) {
	b, start := st.w.Begin(wire.Header{Type: wire.TypeOK, RequestID: reqID})
	st.w.End(b, start)
}

// handle runs a request other than a produce, on its own goroutine.
func (st *stream) handle(h wire.Header, payload []byte) {
	b := st.c.s.b
	id := h.RequestID
	bad := func(err error) { st.sendError(id, &wire.Error{Code: wire.CodeInvalid, Message: err.Error()}) }
	switch h.Type {
	case wire.TypeFetch, wire.TypeFetchTags:
		var f wire.Fetch
		var tf *broker.TagFilter
		if h.Type == wire.TypeFetch {
			if err := wire.DecodeFetch(payload, &f); err != nil {
				bad(err)
				return
			}
		} else {
			var ft wire.FetchTags
			if err := wire.DecodeFetchTags(payload, &ft); err != nil {
				bad(err)
				return
			}
			filter, _ := wire.ParseTagFilter(ft.Expr) // checked by the decoder
			f, tf = ft.Fetch, broker.NewTagFilter(filter)
		}
		if werr := st.c.check(acl.Consume, f.Topic); werr != nil {
			st.sendError(id, werr)
			return
		}
		ctx := st.c.qc.Context()
		if err := st.w.WaitRoom(ctx); err != nil {
			return
		}
		out := getBuf()
		defer putBuf(out)
		resp, werr := b.FetchTags(ctx, &f, tf, (*out)[:0])
		*out = resp
		if werr != nil {
			st.sendError(id, werr)
			return
		}
		st.w.Frame(wire.Header{Type: wire.TypeFetchResp, RequestID: id}, resp)
	case wire.TypeMetadata:
		var m wire.Metadata
		if err := wire.DecodeMetadata(payload, &m); err != nil {
			bad(err)
			return
		}
		resp := b.Metadata(m.Topics)
		buf, start := st.w.Begin(wire.Header{Type: wire.TypeMetaResp, RequestID: id})
		st.w.End(resp.Append(buf), start)
	case wire.TypeCreate:
		var m wire.Create
		if err := wire.DecodeCreate(payload, &m); err != nil {
			bad(err)
			return
		}
		right, name := acl.Admin, ""
		if g, ok := wire.GroupTopic(m.Topic); ok {
			right, name = acl.Groups, g // a group's members create its redelivery topic
		}
		if werr := st.c.check(right, name); werr != nil {
			st.sendError(id, werr)
			return
		}
		if werr := b.CreateTopic(m.Topic, m.Queues); werr != nil {
			st.sendError(id, werr)
			return
		}
		st.ok(id)
	case wire.TypeDeleteTopic:
		var m wire.DeleteTopic
		if err := wire.DecodeDeleteTopic(payload, &m); err != nil {
			bad(err)
			return
		}
		if werr := st.c.check(acl.Admin, ""); werr != nil {
			st.sendError(id, werr)
			return
		}
		if werr := b.DeleteTopic(m.Topic); werr != nil {
			st.sendError(id, werr)
			return
		}
		st.ok(id)
	case wire.TypeOffsets:
		var m wire.Offsets
		if err := wire.DecodeOffsets(payload, &m); err != nil {
			bad(err)
			return
		}
		werr := st.c.check(acl.Consume, m.Topic)
		if werr == nil && m.Group != "" {
			werr = st.c.check(acl.Groups, m.Group)
		}
		var resp wire.OffsetsResp
		if werr == nil {
			resp, werr = b.Offsets(&m)
		}
		if werr != nil {
			st.sendError(id, werr)
			return
		}
		buf, start := st.w.Begin(wire.Header{Type: wire.TypeOffsetsResp, RequestID: id})
		st.w.End(resp.Append(buf), start)
	case wire.TypeReset:
		var m wire.Reset
		if err := wire.DecodeReset(payload, &m); err != nil {
			bad(err)
			return
		}
		werr := st.c.check(acl.Groups, m.Group)
		if werr == nil {
			werr = st.c.check(acl.Consume, m.Topic)
		}
		var resp wire.OffsetsResp
		if werr == nil {
			resp, werr = b.Reset(&m)
		}
		if werr != nil {
			st.sendError(id, werr)
			return
		}
		buf, start := st.w.Begin(wire.Header{Type: wire.TypeOffsetsResp, RequestID: id})
		st.w.End(resp.Append(buf), start)
	case wire.TypeLookup:
		var m wire.Lookup
		if err := wire.DecodeLookup(payload, &m); err != nil {
			bad(err)
			return
		}
		werr := st.c.check(acl.Consume, m.Topic)
		var resp wire.LookupResp
		if werr == nil {
			resp, werr = b.Lookup(&m)
		}
		if werr != nil {
			st.sendError(id, werr)
			return
		}
		buf, start := st.w.Begin(wire.Header{Type: wire.TypeLookupResp, RequestID: id})
		st.w.End(resp.Append(buf), start)
	case wire.TypeGroupSync:
		var m wire.GroupSync
		if err := wire.DecodeGroupSync(payload, &m); err != nil {
			bad(err)
			return
		}
		werr := st.c.check(acl.Groups, m.Group)
		for _, topic := range m.Topics {
			if werr == nil {
				werr = st.c.check(acl.Consume, topic)
			}
		}
		if werr != nil {
			st.sendError(id, werr)
			return
		}
		a, werr := b.GroupSync(&m)
		if werr != nil {
			st.sendError(id, werr)
			return
		}
		buf, start := st.w.Begin(wire.Header{Type: wire.TypeAssignment, RequestID: id})
		st.w.End(a.Append(buf), start)
	case wire.TypeCommit:
		var m wire.Commit
		if err := wire.DecodeCommit(payload, &m); err != nil {
			bad(err)
			return
		}
		if werr := st.c.check(acl.Groups, m.Group); werr != nil {
			st.sendError(id, werr)
			return
		}
		if werr := b.Commit(&m); werr != nil {
			st.sendError(id, werr)
			return
		}
		st.ok(id)
	case wire.TypePromote:
		if err := wire.DecodeEmpty(payload); err != nil {
			bad(err)
			return
		}
		if werr := st.c.check(acl.Admin, ""); werr != nil {
			st.sendError(id, werr)
			return
		}
		info, werr := b.Promote()
		if werr != nil {
			st.sendError(id, werr)
			return
		}
		buf, start := st.w.Begin(wire.Header{Type: wire.TypeEpochInfo, RequestID: id})
		st.w.End(info.Append(buf), start)
	case wire.TypeElect:
		var m wire.Elect
		if err := wire.DecodeElect(payload, &m); err != nil {
			bad(err)
			return
		}
		if werr := st.c.check(acl.Admin, ""); werr != nil {
			st.sendError(id, werr)
			return
		}
		ctx, cancel := context.WithTimeout(st.c.qc.Context(), 10*time.Second)
		info, werr := b.Elect(ctx, &m)
		cancel()
		if werr != nil {
			st.sendError(id, werr)
			return
		}
		buf, start := st.w.Begin(wire.Header{Type: wire.TypeEpochInfo, RequestID: id})
		st.w.End(info.Append(buf), start)
	case wire.TypeRoute:
		var m wire.Route
		if err := wire.DecodeRoute(payload, &m); err != nil {
			bad(err)
			return
		}
		resp := b.Route(m)
		buf, start := st.w.Begin(wire.Header{Type: wire.TypeRouteResp, RequestID: id})
		st.w.End(resp.Append(buf), start)
	case wire.TypeClientReport:
		var m wire.ClientReport
		if err := wire.DecodeClientReport(payload, &m); err != nil {
			bad(err)
			return
		}
		st.c.s.asides.record(st.c.clientID+" "+st.c.source, &m)
		st.ok(id)
	case wire.TypeStatus:
		var sel wire.StatusSel
		if err := wire.DecodeStatusSel(payload, &sel); err != nil {
			bad(err)
			return
		}
		doc, err := json.Marshal(st.c.s.status(sel))
		if err != nil {
			st.sendError(id, &wire.Error{Code: wire.CodeInternal, Message: err.Error()})
			return
		}
		buf, start := st.w.Begin(wire.Header{Type: wire.TypeStatusResp, RequestID: id})
		st.w.End(wire.AppendStatusResp(buf, doc), start)
	}
}

// status is the configured status document, or the broker's with this
// server's connections.
func (s *Server) status(sel wire.StatusSel) wire.Status {
	if s.opts.Status != nil {
		return s.opts.Status(sel)
	}
	doc := s.b.StatusOf(sel)
	doc.Connections = s.Connections()
	doc.ClientsSetAside = s.ClientsSetAside()
	return doc
}
