package admin

import (
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quivermq/quiver/sdk/wire"
)

// Who may read what on the admin address: /healthz and the console's pages
// (which hold no data) are open; with a token, everything else needs it,
// the console's data included; profiles exist only when asked for.
func TestAdminAccess(t *testing.T) {
	sum := sha256.Sum256([]byte("s3cret"))
	base := Options{Registry: prometheus.NewRegistry(), Status: func() wire.Status { return wire.Status{} },
		Healthy: func() error { return nil },
		UI:      http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("page")) }),
		UIAPI:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{}")) })}
	get := func(h http.Handler, path, token string) int {
		r := httptest.NewRequest("GET", path, nil)
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	open := Handler(base)
	guarded := base
	guarded.TokenSHA256, guarded.Pprof = sum[:], true
	locked := Handler(guarded)
	for _, tc := range []struct {
		h           http.Handler
		path, token string
		want        int
	}{
		{open, "/healthz", "", 200},
		{open, "/metrics", "", 200},
		{open, "/status", "", 200},
		{open, "/debug/pprof/", "", 404}, // off unless asked for
		{locked, "/healthz", "", 200},
		{locked, "/metrics", "", 401},
		{locked, "/metrics", "wrong", 401},
		{locked, "/status", "", 401},
		{locked, "/debug/pprof/", "", 401},
		{locked, "/metrics", "s3cret", 200},
		{locked, "/status", "s3cret", 200},
		{locked, "/debug/pprof/", "s3cret", 200},
		{open, "/", "", 302}, // to /ui/
		{open, "/ui/", "", 200},
		{open, "/ui/api/status", "", 200},
		{locked, "/", "", 302},
		{locked, "/ui/", "", 200},
		{locked, "/ui/app.js", "", 200},
		{locked, "/ui/api/status", "", 401},
		{locked, "/ui/api/messages?topic=a&queue=0", "wrong", 401},
		{locked, "/ui/api/status", "s3cret", 200},
	} {
		if got := get(tc.h, tc.path, tc.token); got != tc.want {
			t.Errorf("GET %s with token %q: %d, want %d", tc.path, tc.token, got, tc.want)
		}
	}
}
