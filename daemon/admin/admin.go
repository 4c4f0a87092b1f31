// Package admin is quiverd's admin HTTP endpoint: /healthz, /metrics
// (Prometheus), /status (the JSON status document), the web console under
// /ui/ (package console; / redirects to it), /debug/pprof when the
// broker runs with admin_pprof, and /debug/faults to stall its disk when it
// runs with --debug-faults. With a token (admin_token_sha256) every
// endpoint but /healthz needs it as a bearer token.
package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quivermq/quiver/ioengine"
	"github.com/quivermq/quiver/sdk/wire"
)

// Options of the handler.
type Options struct {
	Registry *prometheus.Registry
	Status   func(wire.StatusSel) wire.Status
	// Healthy returns nil when the broker can take writes.
	Healthy func() error
	// Faults, when set, is served under /debug/faults.
	Faults *ioengine.Faulty
	// Pprof serves Go's profiles under /debug/pprof/.
	Pprof bool
	// TokenSHA256, when set, is the SHA-256 of the bearer token that every
	// endpoint but /healthz and the console's pages requires
	// ("Authorization: Bearer <token>").
	TokenSHA256 []byte
	// UI serves the console's pages under /ui/ (they hold no data, and ask
	// for the token when the API answers 401), UIAPI their data under
	// /ui/api/ (with the token).
	UI, UIAPI http.Handler
}

// Handler returns the admin endpoints.
func Handler(o Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := o.Healthy(); err != nil {
			http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	guarded := http.NewServeMux()
	mux.Handle("/", bearer(o.TokenSHA256, guarded))
	if o.UI != nil {
		mux.Handle("GET /ui/", o.UI)
		mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
		mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
		mux.Handle("GET /ui/api/", bearer(o.TokenSHA256, o.UIAPI))
	}
	guarded.Handle("GET /metrics", promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{}))
	if o.Pprof {
		// Profiles, for the operator who must find out where the time goes.
		guarded.HandleFunc("/debug/pprof/", pprof.Index)
		guarded.HandleFunc("/debug/pprof/profile", pprof.Profile)
		guarded.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	guarded.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		sel, err := wire.ParseStatusQuery(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(o.Status(sel))
	})
	if f := o.Faults; f != nil {
		// POST /debug/faults/stall holds every disk flush until
		// POST /debug/faults/resume: the drill for incident 001.
		guarded.HandleFunc("POST /debug/faults/stall", func(w http.ResponseWriter, r *http.Request) {
			f.Stall()
			w.Write([]byte("stalled\n"))
		})
		guarded.HandleFunc("POST /debug/faults/resume", func(w http.ResponseWriter, r *http.Request) {
			f.Resume()
			w.Write([]byte("resumed\n"))
		})
		// POST /debug/faults/fail-sync fails the disk's next fsync: the
		// drill for a failing disk (the log fails, the broker fences
		// itself).
		guarded.HandleFunc("POST /debug/faults/fail-sync", func(w http.ResponseWriter, r *http.Request) {
			f.FailSync(0, errDrill)
			w.Write([]byte("the next fsync fails\n"))
		})
		guarded.HandleFunc("GET /debug/faults", func(w http.ResponseWriter, r *http.Request) {
			json.NewEncoder(w).Encode(map[string]int{"stalled_flushes": f.Stalled()})
		})
	}
	return mux
}

// bearer lets a request through to next only with the bearer token whose
// SHA-256 is want (compared in constant time); with no want, every request.
func bearer(want []byte, next http.Handler) http.Handler {
	if len(want) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(tok))
		if !ok || subtle.ConstantTimeCompare(sum[:], want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="quiverd admin"`)
			http.Error(w, "this endpoint needs the admin bearer token (admin_token_sha256)", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

var errDrill = errors.New("fsync failed (drill: POST /debug/faults/fail-sync)")
