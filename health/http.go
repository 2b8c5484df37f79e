package health

import (
	"net/http"
	"strings"
)

// ReadyHandler serves the readiness probe: 200 when every component is
// connected, else 503, with one line per component.
func (c *Checker) ReadyHandler() http.Handler { return handler{c, readiness} }

// LiveHandler serves the liveness probe: 200 unless a component is closed
// or has been without a connection for longer than the checker's bound,
// else 503, with one line per component.
func (c *Checker) LiveHandler() http.Handler { return handler{c, liveness} }

type handler struct {
	c *Checker
	p probe
}

// ServeHTTP answers GET and HEAD with the probe's status and, for GET, a
// body such as
//
//	not ready
//	publisher: ok: connected for 3m2s
//	subscriber: blocked for 1.2s: blocked: low on memory
func (h handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if err := r.Context().Err(); err != nil {
		return // the client went away
	}
	now := h.c.now()
	results := h.c.results(h.p, now)
	var b strings.Builder
	pass := true
	for _, res := range results {
		if res.err != nil {
			pass = false
			b.WriteString(res.err.Error())
		} else {
			b.WriteString(res.name + ": ok: " + describe(res.health, now))
		}
		b.WriteByte('\n')
	}
	verdict, status := "ready", http.StatusOK
	if h.p == liveness {
		verdict = "live"
	}
	if !pass {
		verdict, status = "not "+verdict, http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write([]byte(verdict + "\n" + b.String()))
}
