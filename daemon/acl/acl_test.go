package acl

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/quivermq/quiver/sdk/wire"
)

func hash(tok string) string {
	s := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(s[:])
}

// The contract's file: a producer, a consumer and an admin.
func contractFile() string {
	return `
[[principal]]
name = "orders-app"
token_sha256 = "` + hash("producer-secret") + `"
produce = ["orders*"]

[[principal]]
name = "billing"
token_sha256 = "` + hash("consumer-secret") + `"
consume = ["orders*"]
groups = ["billing*"]

[[principal]]
name = "ops"
token_sha256 = "` + hash("admin-secret") + `"
admin = true

[[principal]]
name = "broker-2"
cert_cn = "broker-2.peers"
peer = true
`
}

func TestRights(t *testing.T) {
	a, err := Parse([]byte(contractFile()))
	if err != nil {
		t.Fatal(err)
	}
	prod, cons, ops := a.ByToken([]byte("producer-secret")), a.ByToken([]byte("consumer-secret")), a.ByToken([]byte("admin-secret"))
	if prod == nil || prod.Name != "orders-app" || cons == nil || cons.Name != "billing" || ops == nil || ops.Name != "ops" {
		t.Fatalf("tokens map to %v %v %v", prod, cons, ops)
	}
	if a.ByToken([]byte("producer-secreT")) != nil || a.ByToken(nil) != nil {
		t.Fatal("a wrong or empty token found a principal")
	}
	if p := a.ByCertCN("broker-2.peers"); p == nil || !p.Allowed(Peer, "") || p.Allowed(Admin, "") {
		t.Fatalf("cert principal %v", p)
	}
	for _, tc := range []struct {
		p    *Principal
		r    Right
		name string
		want bool
	}{
		{prod, Produce, "orders", true},
		{prod, Produce, "orders-eu", true},
		{prod, Produce, "payments", false},
		{prod, Consume, "orders", false},
		{prod, Groups, "billing-1", false},
		{prod, Admin, "", false},
		{prod, Peer, "", false},
		{cons, Consume, "orders", true},
		{cons, Groups, "billing-1", true},
		{cons, Groups, "audit", false},
		{cons, Produce, "orders", false},
		{cons, Consume, "payments", false},
		{ops, Admin, "", true},
		{ops, Produce, "orders", false},
		{ops, Peer, "", false},
	} {
		if got := tc.p.Allowed(tc.r, tc.name); got != tc.want {
			t.Errorf("%s %s %q: %v, want %v", tc.p.Name, tc.r, tc.name, got, tc.want)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pat, name string
		want      bool
	}{
		{"*", "anything", true},
		{"*", "", true},
		{"orders", "orders", true},
		{"orders", "orders2", false},
		{"orders*", "orders", true},
		{"orders*", "order", false},
		{"*-eu", "orders-eu", true},
		{"*-eu", "orders-us", false},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"a*a*a", "aaa", true},
		{"a*a*a", "aa", false},
		{"*.dlq", "orders.dlq", true},
	} {
		if got := Match(tc.pat, tc.name); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pat, tc.name, got, tc.want)
		}
	}
}

// Files that cannot be what the operator meant are refused, saying why.
func TestParseErrors(t *testing.T) {
	h := hash("x")
	for _, tc := range []struct{ file, want string }{
		{`[[principal]]` + "\n" + `name = "a"` + "\n" + `token_sha256 = "` + h + `"` + "\n" + `prodcue = ["x"]`, "unknown keys: principal.prodcue"},
		{`[[principal]]` + "\n" + `name = "a"`, "needs token_sha256 or cert_cn"},
		{`[[principal]]` + "\n" + `name = "a"` + "\n" + `token_sha256 = "abc"`, "64 hex digits"},
		{`[[principal]]` + "\n" + `token_sha256 = "` + h + `"`, "principal name of 0 bytes"},
		{`[[principal]]` + "\n" + `name = "a b"` + "\n" + `token_sha256 = "` + h + `"`, "only letters"},
		{`[[principal]]` + "\n" + `name = "a"` + "\n" + `token_sha256 = "` + h + `"` + "\n" + `produce = ["orders/*"]`, `produce pattern "orders/*"`},
		{`[[principal]]` + "\n" + `name = "a"` + "\n" + `token_sha256 = "` + h + `"` + "\n" + `[[principal]]` + "\n" + `name = "a"` + "\n" + `cert_cn = "c"`, "used twice"},
		{`[[principal]]` + "\n" + `name = "a"` + "\n" + `token_sha256 = "` + h + `"` + "\n" + `[[principal]]` + "\n" + `name = "b"` + "\n" + `token_sha256 = "` + h + `"`, "same token_sha256 as a"},
		{`[[principal]]` + "\n" + `name = "a"` + "\n" + `admin = "yes"` + "\n" + `cert_cn = "c"`, "admin"},
		{`principal = 3`, "principal"},
	} {
		_, err := Parse([]byte(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q): %v, want an error containing %q", tc.file, err, tc.want)
		}
	}
	if a, err := Parse(nil); err != nil || a.Len() != 0 {
		t.Fatalf("an empty file: %v, %v (it grants nothing)", a, err)
	}
}

// FuzzParse: any file either parses into principals whose rights can be
// asked about, or is refused with an error; it never panics.
func FuzzParse(f *testing.F) {
	f.Add([]byte(contractFile()))
	f.Add([]byte("[[principal]]\nname = \"a\"\ncert_cn = \"c\"\nproduce = [\"*\", \"a*b*\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := Parse(data)
		if err != nil {
			return
		}
		for _, p := range a.principals {
			if a.Principal(p.Name) != p || wire.ValidName("principal", p.Name) != nil {
				t.Fatalf("principal %q", p.Name)
			}
			for r := Produce; r < rights; r++ {
				p.Allowed(r, "orders")
			}
		}
	})
}
