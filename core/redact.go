package core

import (
	"net/url"
	"strings"
)

// redactURI returns uri with its password replaced, for logs and errors.
func redactURI(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		// Unparsable: keep scheme and host only if we can find them safely.
		if at := strings.LastIndexByte(uri, '@'); at >= 0 {
			if scheme := strings.Index(uri, "://"); scheme >= 0 && scheme < at {
				return uri[:scheme+3] + "xxxxx@" + uri[at+1:]
			}
			return "xxxxx@" + uri[at+1:]
		}
		return uri
	}
	return u.Redacted()
}

// redactText removes the password of uri (and uri itself) from text, for
// error messages of libraries that quote what they were given.
func redactText(text, uri string) string {
	if uri != "" {
		text = strings.ReplaceAll(text, uri, redactURI(uri))
	}
	if u, err := url.Parse(uri); err == nil {
		if pass, ok := u.User.Password(); ok && pass != "" {
			text = strings.ReplaceAll(text, pass, "xxxxx")
		}
	} else if at := strings.LastIndexByte(uri, '@'); at >= 0 {
		if colon := strings.LastIndexByte(uri[:at], ':'); colon >= 0 && colon+1 < at {
			text = strings.ReplaceAll(text, uri[colon+1:at], "xxxxx")
		}
	}
	return text
}

// redactedError keeps the cause reachable with errors.Is/As while its text
// carries no password.
type redactedError struct {
	text  string
	cause error
}

func (e *redactedError) Error() string { return e.text }
func (e *redactedError) Unwrap() error { return e.cause }

func redactErr(err error, uri string) error {
	if err == nil {
		return nil
	}
	text := redactText(err.Error(), uri)
	if text == err.Error() {
		return err
	}
	return &redactedError{text: text, cause: err}
}
