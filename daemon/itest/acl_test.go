package itest

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

// With an ACL, brokers replicate only as principals with the peer right:
// a follower whose certificate names one (here by its IP address, which
// every test broker's certificate carries) copies the leader's log; with
// the same certificates and the peer right taken away, the leader refuses
// the follower's peer connections and counts the refusals. The brokers ask
// each other for their state with peer_token, an ordinary principal.
func TestPeersNeedThePeerRight(t *testing.T) {
	for _, peerRight := range []bool{true, false} {
		t.Run(map[bool]string{true: "granted", false: "refused"}[peerRight], func(t *testing.T) {
			dir := t.TempDir()
			acl := filepath.Join(dir, "acl.toml")
			right := "false"
			if peerRight {
				right = "true"
			}
			os.WriteFile(acl, []byte(`
[[principal]]
name = "brokers"
cert_cn = "127.0.0.1"
token_sha256 = "`+testbroker.TokenSHA256("peer-secret")+`"
peer = `+right+`

[[principal]]
name = "app"
token_sha256 = "`+testbroker.TokenSHA256("app-secret")+`"
produce = ["*"]
admin = true
`), 0o600)
			args := []string{"--acl", acl, "--peer-token", "peer-secret"}
			g := testbroker.StartGroup(t, 1, append([]string{"--min-insync", "1", "--replica-ack-timeout", "500ms"}, args...), args)
			cl := groupClient(t, g, sdk.WithCredentials([]byte("app-secret")))
			p, err := cl.NewProducer(sdk.WithSendTimeout(2 * time.Second))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			ctx := ctxT(t, 30*time.Second)
			_, err = p.Send(ctx, &sdk.Message{Topic: "orders", Body: []byte("x")})
			if peerRight {
				if err != nil {
					t.Fatalf("a send acknowledged by the follower (min-insync 1): %v", err)
				}
				if r := replStatus(t, g.Leader); len(r.Followers) != 1 || !r.Followers[0].InSync {
					t.Fatalf("the leader's followers: %+v", r.Followers)
				}
				return
			}
			if err == nil {
				t.Fatal("a send was acknowledged with min-insync 1 while the only follower may not replicate")
			}
			testbroker.WaitFor(t, "the leader to count the refused peer connections", func() bool {
				for _, f := range g.Leader.Status().Connections.Forbidden {
					if f.Principal == "brokers" && f.Right == "peer" && f.Count > 0 {
						return true
					}
				}
				return false
			})
		})
	}
}
