package console

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
)

// The pages: plain HTML, CSS and JavaScript with no build step and no
// third-party code, so that what is checked in is what is served.
//
//go:embed ui
var uiFS embed.FS

type asset struct {
	body, gz    []byte
	ctype, etag string
}

var (
	assetsOnce sync.Once
	assets     map[string]*asset
)

// loadAssets reads the embedded files once, with their gzip encoding and
// an ETag (a hash of the content: the build is the version).
func loadAssets() map[string]*asset {
	assetsOnce.Do(func() {
		assets = map[string]*asset{}
		fs.WalkDir(uiFS, "ui", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			body, err := uiFS.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(body)
			a := &asset{body: body, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, ctype: mime.TypeByExtension(path.Ext(p))}
			var buf bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
			zw.Write(body)
			zw.Close()
			if buf.Len() < len(body) {
				a.gz = buf.Bytes()
			}
			assets[strings.TrimPrefix(p, "ui/")] = a
			return nil
		})
	})
	return assets
}

// Pages serves the console's files under /ui/ (index.html for /ui/). They
// hold no data: the API under /ui/api/ does, behind the admin token.
func (c *Console) Pages() http.Handler {
	as := loadAssets()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/ui/")
		if name == "" {
			name = "index.html"
		}
		a := as[name]
		if a == nil {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		// Nothing but this origin's own files and data; no framing.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache") // revalidate: the ETag changes with the binary
		h.Set("ETag", a.etag)
		h.Set("Vary", "Accept-Encoding")
		if a.ctype != "" {
			h.Set("Content-Type", a.ctype)
		}
		if r.Header.Get("If-None-Match") == a.etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		body := a.body
		if a.gz != nil && strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			h.Set("Content-Encoding", "gzip")
			body = a.gz
		}
		w.Write(body)
	})
}

// API serves /ui/api/.
func (c *Console) API() http.Handler {
	mux := http.NewServeMux()
	c.api(mux)
	return mux
}
