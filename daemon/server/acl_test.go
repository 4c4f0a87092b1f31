package server

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
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
	}
	allowed := map[string][]string{
		"p0":   {"produce orders"},
		"p1":   {"fetch orders", "group billing-1"},
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
