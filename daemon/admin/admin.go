// Package admin is quiverd's admin HTTP endpoint: /healthz, /metrics
// (Prometheus), /status (the JSON status document) and /debug/pprof, plus, only when
// the broker runs with --debug-faults, /debug/faults to stall its disk.
package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quivermq/quiver/ioengine"
	"github.com/quivermq/quiver/sdk/wire"
)

// Options of the handler.
type Options struct {
	Registry *prometheus.Registry
	Status   func() wire.Status
	// Healthy returns nil when the broker can take writes.
	Healthy func() error
	// Faults, when set, is served under /debug/faults.
	Faults *ioengine.Faulty
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
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{}))
	// Profiles, for the operator who must find out where the time goes.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(o.Status())
	})
	if f := o.Faults; f != nil {
		// POST /debug/faults/stall holds every disk flush until
		// POST /debug/faults/resume: the drill for incident 001.
		mux.HandleFunc("POST /debug/faults/stall", func(w http.ResponseWriter, r *http.Request) {
			f.Stall()
			w.Write([]byte("stalled\n"))
		})
		mux.HandleFunc("POST /debug/faults/resume", func(w http.ResponseWriter, r *http.Request) {
			f.Resume()
			w.Write([]byte("resumed\n"))
		})
		// POST /debug/faults/fail-sync fails the disk's next fsync: the
		// drill for a failing disk (the log fails, the broker fences
		// itself).
		mux.HandleFunc("POST /debug/faults/fail-sync", func(w http.ResponseWriter, r *http.Request) {
			f.FailSync(0, errDrill)
			w.Write([]byte("the next fsync fails\n"))
		})
		mux.HandleFunc("GET /debug/faults", func(w http.ResponseWriter, r *http.Request) {
			json.NewEncoder(w).Encode(map[string]int{"stalled_flushes": f.Stalled()})
		})
	}
	return mux
}

var errDrill = errors.New("fsync failed (drill: POST /debug/faults/fail-sync)")
