package health

import "regexp"

// userinfo matches the user:password@ of a URI.
var userinfo = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@`)

// redact removes the user and password of any URI in s: health bodies are
// served to whoever can reach the port.
func redact(s string) string {
	return userinfo.ReplaceAllString(s, "${1}")
}
