// Package acl holds who may do what on a broker: principals, each
// identified by a token (kept only as its SHA-256) or a client
// certificate's common name, and the rights each one has. It is read
// from a TOML file (quiverd --acl) and can be replaced while the broker
// runs (SIGHUP): a session keeps its principal's name, and each request is
// checked against the file loaded now.
//
//	[[principal]]
//	name = "orders-app"
//	token_sha256 = "<64 hex digits>"   # or: cert_cn = "orders-app"
//	produce = ["orders*"]              # topics it may send to (and auto-create)
//	consume = []                       # topics it may read
//	groups = []                        # consumer groups it may join and commit for
//	admin = false                      # create topics, promote, elect
//	peer = false                       # broker-to-broker traffic
//
// Patterns are names (wire.ValidName) in which `*` matches any run of
// characters ("*" alone: everything). Anything not granted is refused.
package acl

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"github.com/BurntSushi/toml"

	"github.com/quivermq/quiver/sdk/wire"
)

// Right is what a request needs.
type Right uint8

const (
	Produce Right = iota // send to a topic (and auto-create it)
	Consume              // read a topic
	Groups               // join a consumer group and commit its offsets
	Admin                // create topics, promote, elect
	Peer                 // replication and controller traffic
	rights
)

var rightNames = [rights]string{"produce", "consume", "groups", "admin", "peer"}

func (r Right) String() string {
	if r < rights {
		return rightNames[r]
	}
	return fmt.Sprintf("right(%d)", uint8(r))
}

// Principal is one identity and its rights.
type Principal struct {
	Name   string
	CertCN string
	token  [sha256.Size]byte
	hasTok bool
	grants [rights][]string // patterns, for Produce, Consume, Groups
	admin  bool
	peer   bool
}

// Allowed reports whether p may use right r on name (a topic or a group;
// ignored for Admin and Peer).
func (p *Principal) Allowed(r Right, name string) bool {
	switch r {
	case Admin:
		return p.admin
	case Peer:
		return p.peer
	case Produce, Consume, Groups:
		for _, pat := range p.grants[r] {
			if Match(pat, name) {
				return true
			}
		}
	}
	return false
}

// ACL is one loaded file: immutable once parsed.
type ACL struct {
	principals []*Principal
	byName     map[string]*Principal
}

// Principal returns the principal called name, or nil.
func (a *ACL) Principal(name string) *Principal { return a.byName[name] }

// Len is the number of principals.
func (a *ACL) Len() int { return len(a.principals) }

// ByToken returns the principal whose token is tok, or nil. Every
// principal's hash is compared, in constant time, whatever matches.
func (a *ACL) ByToken(tok []byte) *Principal {
	if len(tok) == 0 {
		return nil
	}
	sum := sha256.Sum256(tok)
	var found *Principal
	for _, p := range a.principals {
		if p.hasTok && subtle.ConstantTimeCompare(p.token[:], sum[:]) == 1 {
			found = p
		}
	}
	return found
}

// ByCertCN returns the principal named by a client certificate's common
// name, or nil.
func (a *ACL) ByCertCN(cn string) *Principal {
	if cn == "" {
		return nil
	}
	for _, p := range a.principals {
		if p.CertCN == cn {
			return p
		}
	}
	return nil
}

// ByCert returns the principal whose cert_cn is the certificate's common
// name, or else one of its DNS names or IP addresses, or nil. The caller
// has verified the certificate (client_ca, or peer_ca for a broker).
func (a *ACL) ByCert(cert *x509.Certificate) *Principal {
	if cert == nil {
		return nil
	}
	if p := a.ByCertCN(cert.Subject.CommonName); p != nil {
		return p
	}
	for _, name := range cert.DNSNames {
		if p := a.ByCertCN(name); p != nil {
			return p
		}
	}
	for _, ip := range cert.IPAddresses {
		if p := a.ByCertCN(ip.String()); p != nil {
			return p
		}
	}
	return nil
}

// Holder is the ACL a broker enforces now; Store replaces it at once for
// every session.
type Holder struct{ p atomic.Pointer[ACL] }

// NewHolder holds a.
func NewHolder(a *ACL) *Holder {
	h := &Holder{}
	h.p.Store(a)
	return h
}

// Load is the current ACL.
func (h *Holder) Load() *ACL { return h.p.Load() }

// Store replaces the ACL.
func (h *Holder) Store(a *ACL) { h.p.Store(a) }

type fileDoc struct {
	Principal []principalDoc `toml:"principal"`
}

type principalDoc struct {
	Name        string   `toml:"name"`
	TokenSHA256 string   `toml:"token_sha256"`
	CertCN      string   `toml:"cert_cn"`
	Produce     []string `toml:"produce"`
	Consume     []string `toml:"consume"`
	Groups      []string `toml:"groups"`
	Admin       bool     `toml:"admin"`
	Peer        bool     `toml:"peer"`
}

// LoadFile reads and parses an ACL file.
func LoadFile(path string) (*ACL, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("acl: %w", err)
	}
	a, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("acl %s: %w", path, err)
	}
	return a, nil
}

// Parse parses an ACL file's text. Unknown keys, duplicate names, tokens
// or certificate names, a principal with neither a token hash nor a
// certificate name, and patterns with characters a name cannot have are
// errors; nothing of a file with an error is used.
func Parse(data []byte) (*ACL, error) {
	var doc fileDoc
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&doc)
	if err != nil {
		return nil, err
	}
	if un := md.Undecoded(); len(un) > 0 {
		keys := make([]string, len(un))
		for i, k := range un {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("unknown keys: %s", strings.Join(keys, ", "))
	}
	a := &ACL{byName: map[string]*Principal{}}
	tokens, cns := map[[sha256.Size]byte]string{}, map[string]string{}
	for i, d := range doc.Principal {
		where := fmt.Sprintf("principal %d", i+1)
		if d.Name != "" {
			where += fmt.Sprintf(" (%s)", d.Name)
		}
		p, err := d.principal()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if _, dup := a.byName[p.Name]; dup {
			return nil, fmt.Errorf("%s: the name is used twice", where)
		}
		if p.hasTok {
			if other, dup := tokens[p.token]; dup {
				return nil, fmt.Errorf("%s: the same token_sha256 as %s", where, other)
			}
			tokens[p.token] = p.Name
		}
		if p.CertCN != "" {
			if other, dup := cns[p.CertCN]; dup {
				return nil, fmt.Errorf("%s: the same cert_cn as %s", where, other)
			}
			cns[p.CertCN] = p.Name
		}
		a.principals = append(a.principals, p)
		a.byName[p.Name] = p
	}
	return a, nil
}

func (d *principalDoc) principal() (*Principal, error) {
	if err := wire.ValidName("principal", d.Name); err != nil {
		return nil, err
	}
	p := &Principal{Name: d.Name, CertCN: d.CertCN, admin: d.Admin, peer: d.Peer}
	switch {
	case d.TokenSHA256 == "" && d.CertCN == "":
		return nil, errors.New("needs token_sha256 or cert_cn")
	case d.TokenSHA256 != "":
		b, err := hex.DecodeString(d.TokenSHA256)
		if err != nil || len(b) != sha256.Size {
			return nil, errors.New("token_sha256 must be 64 hex digits (sha256sum of the token)")
		}
		copy(p.token[:], b)
		p.hasTok = true
	}
	for r, pats := range map[Right][]string{Produce: d.Produce, Consume: d.Consume, Groups: d.Groups} {
		for _, pat := range pats {
			if err := wire.ValidName("pattern", strings.ReplaceAll(pat, "*", "x")); err != nil {
				return nil, fmt.Errorf("%s pattern %q: %w", r, pat, err)
			}
		}
		p.grants[r] = append([]string(nil), pats...)
	}
	return p, nil
}

// Match reports whether name matches pat, in which '*' matches any run of
// characters (the usual backtracking to the last star: linear in practice,
// at most len(pat)*len(name) steps).
func Match(pat, name string) bool {
	p, n := 0, 0
	star, from := -1, 0
	for n < len(name) {
		switch {
		case p < len(pat) && pat[p] == '*':
			star, from = p, n
			p++
		case p < len(pat) && pat[p] == name[n]:
			p++
			n++
		case star >= 0:
			from++
			p, n = star+1, from
		default:
			return false
		}
	}
	for p < len(pat) && pat[p] == '*' {
		p++
	}
	return p == len(pat)
}
