// Package web is Anvil's operator UI: plain HTML, CSS and JavaScript with
// no build step, embedded in the binary and served by the API at "/". The
// UI talks only to the REST API, with the token the operator logs in with
// (kept in the browser's sessionStorage).
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// FS returns the UI's files.
func FS() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	return sub
}

// Handler serves the UI. Unknown paths get index.html so that the UI's
// own routes (#/volumes and the like) survive a reload.
func Handler() http.Handler {
	files := FS()
	fileServer := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
		w.Header().Set("Cache-Control", "no-cache")
		if _, err := fs.Stat(files, cleanPath(r.URL.Path)); err != nil {
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/"
			fileServer.ServeHTTP(w, r2)
			return
		}
		fileServer.ServeHTTP(w, r)
	})
}

func cleanPath(p string) string {
	if p == "/" || p == "" {
		return "index.html"
	}
	for len(p) > 0 && p[0] == '/' {
		p = p[1:]
	}
	return p
}
