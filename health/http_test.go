package health_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/resilientmq/watermill-rabbitmq/health"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func get(t *testing.T, h http.Handler, method string) (int, string, http.Header) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, "/", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body), rec.Result().Header
}

func TestHandlers(t *testing.T) {
	pub := newFake(resilient.StateConnected, time.Minute, nil)
	sub := newFake(resilient.StateConnected, time.Minute, nil)
	checker := health.NewChecker(0).Add("publisher", pub).Add("subscriber", sub)
	ready, live := checker.ReadyHandler(), checker.LiveHandler()

	code, body, hdr := get(t, ready, http.MethodGet)
	if code != http.StatusOK || !strings.HasPrefix(body, "ready\n") ||
		!contains(body, "publisher: ok: connected for 1m0s") || !contains(body, "subscriber: ok: connected") {
		t.Errorf("ready: %d %q", code, body)
	}
	if ct := hdr.Get("Content-Type"); ct != "text/plain; charset=utf-8" || hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("headers: %v", hdr)
	}

	sub.set(resilient.StateBlocked, time.Second, errors.New("blocked: low on memory"))
	code, body, _ = get(t, ready, http.MethodGet)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready\n") ||
		!contains(body, "publisher: ok") || !contains(body, "subscriber: blocked for 1s: blocked: low on memory") {
		t.Errorf("ready while blocked: %d %q", code, body)
	}
	code, body, _ = get(t, live, http.MethodGet)
	if code != http.StatusOK || !strings.HasPrefix(body, "live\n") || !contains(body, "subscriber: ok: blocked") {
		t.Errorf("live while blocked: %d %q", code, body)
	}

	// The password of a URI in an error never reaches the body.
	pub.set(resilient.StateReconnecting, 2*time.Minute,
		errors.New(`dial amqp://admin:s3cret@10.0.0.7:5672/prod: connection refused; also amqps://u:p@host/`))
	code, body, _ = get(t, live, http.MethodGet)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not live\n") ||
		!contains(body, "publisher: reconnecting for 2m0s: dial amqp://10.0.0.7:5672/prod: connection refused; also amqps://host/") {
		t.Errorf("live after two minutes away: %d %q", code, body)
	}
	if contains(body, "s3cret") || contains(body, "admin") || contains(body, "u:p") {
		t.Errorf("a password in the body: %q", body)
	}

	code, body, _ = get(t, live, http.MethodHead)
	if code != http.StatusServiceUnavailable || body != "" {
		t.Errorf("HEAD: %d %q, want 503 and no body", code, body)
	}
	code, _, hdr = get(t, ready, http.MethodPost)
	if code != http.StatusMethodNotAllowed || hdr.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d %v", code, hdr)
	}
}
