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
	base := Options{Registry: prometheus.NewRegistry(), Status: func(wire.StatusSel) wire.Status { return wire.Status{} },
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

// /status passes its query's topic selection to the broker, and refuses a
// bad one.
func TestStatusSelection(t *testing.T) {
	var got wire.StatusSel
	h := Handler(Options{Registry: prometheus.NewRegistry(), Healthy: func() error { return nil },
		Status: func(sel wire.StatusSel) wire.Status { got = sel; return wire.Status{} }})
	for _, tc := range []struct {
		path string
		code int
		sel  wire.StatusSel
	}{
		{"/status", 200, wire.StatusSel{}},
		{"/status?topic=orders", 200, wire.StatusSel{Topic: "orders"}},
		{"/status?topics_from=m&topics_limit=50", 200, wire.StatusSel{From: "m", Limit: 50}},
		{"/status?topics_limit=10001", 400, wire.StatusSel{}},
		{"/status?topics_limit=x", 400, wire.StatusSel{}},
	} {
		got = wire.StatusSel{}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", tc.path, nil))
		if w.Code != tc.code || got != tc.sel {
			t.Errorf("GET %s: %d with %+v, want %d with %+v", tc.path, w.Code, got, tc.code, tc.sel)
		}
	}
}
