package server

import (
	"log/slog"
	"sync"
)

// builds notes the client builds (Hello) that opened sessions, so that an
// operator learns from the log which SDK versions talk to the broker:
// each build is logged once, when its first session opens. At most
// maxBuilds are remembered; past that, new ones are logged no more (said
// once). The builds of open sessions are in the status (Connections).
type builds struct {
	mu     sync.Mutex
	known  map[string]struct{}
	full   bool
	logger *slog.Logger
}

const maxBuilds = 1000

func (b *builds) seen(build, clientID, source string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.known[build]; ok || b.logger == nil {
		return
	}
	if len(b.known) >= maxBuilds {
		if !b.full {
			b.full = true
			b.logger.Info("client builds: more than the ones logged so far connected; the status lists the builds of open sessions", "logged", len(b.known))
		}
		return
	}
	if b.known == nil {
		b.known = map[string]struct{}{}
	}
	b.known[build] = struct{}{}
	b.logger.Info("a client build connected for the first time", "build", build, "client_id", clientID, "source", source)
}
