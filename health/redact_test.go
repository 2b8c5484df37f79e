package health

import "testing"

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"dial amqp://guest:guest@localhost:5672/: refused": "dial amqp://localhost:5672/: refused",
		"amqps://user@host/vh and amqp://a:b@c/":           "amqps://host/vh and amqp://c/",
		"amqp://localhost:5672/":                           "amqp://localhost:5672/",
		"blocked: low on memory":                           "blocked: low on memory",
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}
