package server

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/quivermq/quiver/daemon/acl"
	"github.com/quivermq/quiver/sdk/wire"
)

func testACL(t testing.TB) *acl.Holder {
	var b strings.Builder
	for i, spec := range []string{
		`produce = ["orders*"]`,
		`consume = ["orders*"]` + "\n" + `groups = ["billing*"]`,
		`admin = true`,
	} {
		sum := sha256.Sum256([]byte(fmt.Sprint("token-", i)))
		fmt.Fprintf(&b, "[[principal]]\nname = \"p%d\"\ntoken_sha256 = \"%s\"\n%s\n", i, hex.EncodeToString(sum[:]), spec)
	}
	a, err := acl.Parse([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return acl.NewHolder(a)
}

func testConn(t testing.TB, principal string) *conn {
	s := &Server{opts: Options{ACL: testACL(t)}}
	s.forbidden.init(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	return &conn{s: s, principal: principal}
}

// Every right against every kind of request: what each principal of the
// contract may do, what it may not, and what a refusal says.
func TestCheckMatrix(t *testing.T) {
	type ask struct {
		r    acl.Right
		name string
	}
	asks := map[string]ask{
		"produce orders": {acl.Produce, "orders"}, "produce payments": {acl.Produce, "payments"},
		"fetch orders": {acl.Consume, "orders"}, "group billing-1": {acl.Groups, "billing-1"},
		"group audit": {acl.Groups, "audit"}, "create/promote/elect": {acl.Admin, ""}, "peer": {acl.Peer, ""},
		// A consumer group's redelivery and dead-letter topics are its members'.
		"redeliver billing-1": {acl.Produce, "__retry.billing-1"}, "fetch redeliveries of billing-1": {acl.Consume, "__retry.billing-1"},
		"dead-letter billing-1": {acl.Produce, "__dlq.billing-1"}, "redeliver audit": {acl.Produce, "__retry.audit"},
	}
	allowed := map[string][]string{
		"p0":   {"produce orders"},
		"p1":   {"fetch orders", "group billing-1", "redeliver billing-1", "fetch redeliveries of billing-1", "dead-letter billing-1"},
		"p2":   {"create/promote/elect"},
		"gone": {}, // a principal a reload removed
	}
	for principal, may := range allowed {
		c := testConn(t, principal)
		for what, a := range asks {
			werr := c.check(a.r, a.name)
			want := false
			for _, m := range may {
				want = want || m == what
			}
			switch {
			case want && werr != nil:
				t.Errorf("%s %s: refused: %v", principal, what, werr)
			case !want && (werr == nil || werr.Code != wire.CodeForbidden || !strings.Contains(werr.Message, principal)):
				t.Errorf("%s %s: %v, want FORBIDDEN naming the principal", principal, what, werr)
			}
		}
	}
	c := testConn(t, "p0")
	c.check(acl.Produce, "payments")
	c.check(acl.Produce, "payments")
	if rep := c.s.forbidden.report(); len(rep) != 1 || rep[0].Count != 2 || rep[0].Principal != "p0" || rep[0].Right != "produce" {
		t.Fatalf("refusals %+v", rep)
	}
}

// BenchmarkCheck is the permission check a produce pays on the broker.
func BenchmarkCheck(b *testing.B) {
	c := testConn(b, "p0")
	b.ReportAllocs()
	for b.Loop() {
		if c.check(acl.Produce, "orders-eu") != nil {
			b.Fatal("refused")
		}
	}
}

// Every request type against every right, through a real server: what
// each principal of the contract gets for each request is FORBIDDEN
// exactly when the right the request needs is not granted (other answers,
// errors included, mean the check let it through).
func TestRequestRights(t *testing.T) {
	f := startWith(t, func(o *Options) { o.ACL = testACL(t) })
	if werr := f.b.CreateTopic("orders", 1); werr != nil {
		t.Fatal(werr)
	}
	type req struct {
		typ     wire.Type
		payload []byte
	}
	reqs := map[string]req{
		"produce orders":   {wire.TypeProduce, (&wire.Produce{Topic: "orders", Queue: wire.AnyQueue, Count: 1, Body: []byte("x")}).Append(nil)},
		"produce payments": {wire.TypeProduce, (&wire.Produce{Topic: "payments", Queue: wire.AnyQueue, Count: 1, Body: []byte("x")}).Append(nil)},
		"fetch orders":     {wire.TypeFetch, (&wire.Fetch{Topic: "orders", MaxMessages: 1, MaxBytes: 1 << 20}).Append(nil)},
		"join billing-1":   {wire.TypeGroupSync, (&wire.GroupSync{Group: "billing-1", Member: "m", SessionMs: 10000, Topics: []string{"orders"}}).Append(nil)},
		"join audit":       {wire.TypeGroupSync, (&wire.GroupSync{Group: "audit", Member: "m", SessionMs: 10000, Topics: []string{"orders"}}).Append(nil)},
		"commit billing-1": {wire.TypeCommit, (&wire.Commit{Group: "billing-1", Member: "m"}).Append(nil)},
		"create":           {wire.TypeCreate, (&wire.Create{Topic: "new", Queues: 1}).Append(nil)},
		"delete":           {wire.TypeDeleteTopic, (&wire.DeleteTopic{Topic: "gone"}).Append(nil)},
		"promote":          {wire.TypePromote, nil},
		"elect":            {wire.TypeElect, (&wire.Elect{Group: "g"}).Append(nil)},
		"metadata":         {wire.TypeMetadata, (&wire.Metadata{}).Append(nil)},
		"route":            {wire.TypeRoute, (&wire.Route{}).Append(nil)},
		"status":           {wire.TypeStatus, nil},
	}
	allowed := map[string][]string{
		"token-0": {"produce orders", "metadata", "route", "status"},
		"token-1": {"fetch orders", "join billing-1", "commit billing-1", "metadata", "route", "status"},
		"token-2": {"create", "delete", "promote", "elect", "metadata", "route", "status"},
	}
	for tok, may := range allowed {
		c := f.dial(t)
		c.send(t, wire.TypeHello, 1, hello(wire.ProtocolVersion, "matrix", tok))
		if h, _ := c.recv(t); h.Type != wire.TypeHelloOK {
			t.Fatalf("%s: hello answered with type %d", tok, h.Type)
		}
		id := uint64(1)
		for what, r := range reqs {
			id++
			c.send(t, r.typ, id, r.payload)
			h, p := c.recv(t)
			if h.RequestID != id {
				t.Fatalf("%s %s: answer to request %d, want %d", tok, what, h.RequestID, id)
			}
			refused := false
			if h.Type == wire.TypeError {
				werr, _ := wire.DecodeError(p)
				refused = werr != nil && werr.Code == wire.CodeForbidden
			}
			want := !slices.Contains(may, what)
			if refused != want {
				t.Errorf("%s %s: FORBIDDEN %v, want %v (answer type %d)", tok, what, refused, want, h.Type)
			}
		}
	}
}
