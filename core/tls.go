package core

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TLS alerts that mean a certificate was refused, or no handshake can
// succeed with this configuration: handshake_failure (TLS 1.2's answer to
// a missing client certificate, or no shared cipher), bad_certificate,
// unsupported_certificate, certificate_revoked, certificate_expired,
// certificate_unknown, unknown_ca, access_denied, certificate_required.
var certificateAlerts = map[uint64]bool{40: true, 42: true, 43: true, 44: true, 45: true, 46: true, 48: true, 49: true, 116: true}

// certificateAlertTexts are the same alerts as crypto/tls words them, for
// amqp091-go's errors, which keep only the text.
var certificateAlertTexts = []string{
	"handshake failure", "bad certificate", "unsupported certificate", "revoked certificate",
	"expired certificate", "unknown certificate", "unknown certificate authority",
	"access denied", "certificate required",
}

// certificateError returns the certificate fault in err, if any: ours
// verifying the broker's (unknown authority, wrong host name, expired), or
// the broker's alert refusing ours.
func certificateError(err error) error {
	var verify *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var op *net.OpError
	var ae *amqp091.Error
	switch {
	case errors.As(err, &verify):
		return verify
	case errors.As(err, &unknownAuthority):
		return unknownAuthority
	case errors.As(err, &hostname):
		return hostname
	case errors.As(err, &invalid):
		return invalid
	case errors.As(err, &op) && op.Op == "remote error":
		// crypto/tls reports an alert it received as an OpError around its
		// unexported alert type, a uint8.
		if v := reflect.ValueOf(op.Err); v.IsValid() && v.Kind() == reflect.Uint8 && certificateAlerts[v.Uint()] {
			return op
		}
	case errors.As(err, &ae) && !ae.Server && strings.HasPrefix(ae.Reason, "remote error: tls: "):
		// The alert arrived once amqp091-go read the connection (TLS 1.3
		// sends it after the handshake): only its text is left.
		for _, text := range certificateAlertTexts {
			if strings.TrimPrefix(ae.Reason, "remote error: tls: ") == text {
				return ae
			}
		}
	}
	return nil
}

// probeTLS tells why a TLS connection to uri broke right after its
// handshake, when the dial's error does not (a reset, a closed connection):
// over TLS 1.3 a broker refusing our certificate says so in an alert sent
// after the handshake, which a reset can overtake. A fresh handshake, the
// AMQP protocol header, and a read get that alert, or the broker's answer
// (then it returns nil). It is bounded by the dial timeout (at most 2 s)
// and by the dialer's context.
func (d *dialer) probeTLS(uri string, base *tls.Config) error {
	parsed, err := amqp091.ParseURI(uri)
	if err != nil || parsed.Scheme != "amqps" {
		return nil
	}
	cfg, err := tlsConfigOf(parsed, base)
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(d.ctx, min(d.cfg.DialTimeout, 2*time.Second))
	defer cancel()
	var dialer net.Dialer
	raw, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(parsed.Host, strconv.Itoa(parsed.Port)))
	if err != nil {
		return nil
	}
	defer raw.Close()
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	defer stop()
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		return certificateError(err)
	}
	_, _ = conn.Write([]byte("AMQP\x00\x00\x09\x01"))
	_, err = conn.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return certificateError(err)
}

// tlsConfigOf is the TLS configuration amqp091-go dials uri with: base, or
// the one the URI's certfile, keyfile and cacertfile describe; with the
// URI's host as ServerName unless one is set.
func tlsConfigOf(uri amqp091.URI, base *tls.Config) (*tls.Config, error) {
	cfg := base.Clone()
	if cfg == nil {
		cfg = &tls.Config{ServerName: uri.ServerName, MinVersion: tls.VersionTLS12}
		if uri.CACertFile != "" {
			pem, err := os.ReadFile(uri.CACertFile)
			if err != nil {
				return nil, err
			}
			cfg.RootCAs = x509.NewCertPool()
			cfg.RootCAs.AppendCertsFromPEM(pem)
		}
		if uri.CertFile != "" && uri.KeyFile != "" {
			cert, err := tls.LoadX509KeyPair(uri.CertFile, uri.KeyFile)
			if err != nil {
				return nil, err
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = uri.Host
	}
	return cfg, nil
}

// tlsDialError classifies a dial's error as ErrTLS when a certificate is
// at fault, probing the broker when the error is only a broken connection
// right after the TLS handshake.
func (d *dialer) tlsDialError(err error, uri string, base *tls.Config, sock *socket) error {
	if certErr := certificateError(err); certErr != nil {
		return fmt.Errorf("%w: %w", ErrTLS, err)
	}
	if sock == nil || !strings.HasPrefix(uri, "amqps://") || !brokenAfterHandshake(err) {
		return nil
	}
	if alert := d.probeTLS(uri, base); alert != nil {
		return fmt.Errorf("%w: %w (the connection broke after the TLS handshake: %v)", ErrTLS, alert, err)
	}
	return nil
}

// brokenAfterHandshake: a reset or a closed connection, not a time-out.
func brokenAfterHandshake(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		return !ae.Server && !isTimeoutText(ae.Reason)
	}
	return isConnectionFault(err)
}
