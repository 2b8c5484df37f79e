package tls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// secret is the password of the URIs of the negative tests: no error may
// carry it. (The handshake fails before any AMQP login, so no such user
// needs to exist.)
const secret = "tls-s3cret-Pa55w0rd"

// dialTimeout is the bound of the negative tests' dials; failing "fast"
// means in well under it.
const (
	dialTimeout = 10 * time.Second
	fast        = 2 * time.Second
)

func needNode(t *testing.T) {
	t.Helper()
	if node == nil {
		t.Skip(skipReason)
	}
}

func amqpsURI(user, pass string) string {
	return fmt.Sprintf("amqps://%s:%s@127.0.0.1:%d/", user, pass, tlsPort)
}

// config is a durable-queue config over amqps with tlsCfg.
func config(uri string, tlsCfg *tls.Config) resilient.Config {
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri)}
	cfg.AMQP.Connection.TLSConfig = tlsCfg
	return cfg
}

// TestCertificates checks the PKI itself, without a broker: what the
// negative tests count on failing fails for the reason they name.
func TestCertificates(t *testing.T) {
	verify := func(roots *x509.CertPool, name string, at time.Time) error {
		_, err := pki.server.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, CurrentTime: at})
		return err
	}
	now := time.Now()
	for _, name := range []string{"127.0.0.1", "localhost", "::1"} {
		if err := verify(pki.ca, name, now); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if err := verify(pki.otherCA, "127.0.0.1", now); !errors.As(err, new(x509.UnknownAuthorityError)) {
		t.Errorf("against the other CA: %v, want x509.UnknownAuthorityError", err)
	}
	if err := verify(pki.ca, "other.example", now); !errors.As(err, new(x509.HostnameError)) {
		t.Errorf("for other.example: %v, want x509.HostnameError", err)
	}
	var invalid x509.CertificateInvalidError
	if err := verify(pki.ca, "127.0.0.1", pki.server.NotAfter.Add(time.Hour)); !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
		t.Errorf("after NotAfter: %v, want x509.CertificateInvalidError{Reason: Expired}", err)
	}
	if _, err := pki.client.Leaf.Verify(x509.VerifyOptions{Roots: pki.ca, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := pki.stray.Leaf.Verify(x509.VerifyOptions{Roots: pki.ca, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Errorf("the stray client certificate verifies against our CA")
	}
}

// describe renders err's chain: each error's type, and what identifies
// the TLS and AMQP ones (an alert's number, an AMQP code).
func describe(err error) string {
	var b strings.Builder
	var walk func(error, int)
	walk = func(e error, depth int) {
		fmt.Fprintf(&b, "\n%s%T", strings.Repeat("  ", depth+1), e)
		switch v := e.(type) {
		case *net.OpError:
			fmt.Fprintf(&b, " Op=%q Err=%T", v.Op, v.Err)
			if rv := reflect.ValueOf(v.Err); rv.Kind() == reflect.Uint8 {
				fmt.Fprintf(&b, "(%d)", rv.Uint())
			} else if se, ok := v.Err.(*os.SyscallError); ok {
				fmt.Fprintf(&b, "{%s: %T(%d)}", se.Syscall, se.Err, reflect.ValueOf(se.Err).Uint())
			}
		case *amqp091.Error:
			fmt.Fprintf(&b, " Code=%d Server=%v Recover=%v", v.Code, v.Server, v.Recover)
		}
		if rv := reflect.ValueOf(e); rv.Kind() == reflect.Uint8 {
			fmt.Fprintf(&b, "(%d)", rv.Uint())
		}
		fmt.Fprintf(&b, ": %q", e.Error())
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, c := range u.Unwrap() {
				walk(c, depth+1)
			}
		case interface{ Unwrap() error }:
			if c := u.Unwrap(); c != nil {
				walk(c, depth+1)
			}
		default:
			// A wrapper that only implements As (resilient's
			// transientDialError): show what it lets errors.As find.
			var op *net.OpError
			var ae *amqp091.Error
			switch {
			case errors.As(e, &op) && error(op) != e:
				walk(op, depth+1)
			case errors.As(e, &ae) && error(ae) != e:
				walk(ae, depth+1)
			}
		}
	}
	walk(err, 0)
	return b.String()
}

// wantRejected checks that a constructor failed as a certificate fault
// must: at once (RetryOnFailedConnect or not), ErrTLS, permanent, naming
// the cause (cause, and a type matched by errors.As when as is not nil),
// and without the password.
func wantRejected(t *testing.T, what string, took time.Duration, err error, cause string, as any) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s succeeded (in %s), want a TLS failure", what, took)
	}
	t.Logf("%s failed in %s: %v%s", what, took.Round(time.Millisecond), err, describeIf(err))
	if !errors.Is(err, resilient.ErrTLS) {
		t.Errorf("%s: error does not match resilient.ErrTLS", what)
	}
	if !resilient.IsPermanent(err) {
		t.Errorf("%s: IsPermanent is false", what)
	}
	if took > fast {
		t.Errorf("%s took %s, want under %s (DialTimeout %s)", what, took, fast, dialTimeout)
	}
	if !strings.Contains(err.Error(), cause) {
		t.Errorf("%s: error does not name the cause %q", what, cause)
	}
	if as != nil && !errors.As(err, as) {
		t.Errorf("%s: no %T in the error's chain", what, as)
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("%s: error contains the password", what)
	}
}

// tlsCase is a handshake that must fail on a certificate.
type tlsCase struct {
	name  string
	cfg   func() *tls.Config
	cause string // in the error text
	as    func() any
}

var (
	// Our certificate, but we do not trust the broker's.
	unknownAuthority = tlsCase{
		name: "unknown authority",
		cfg: func() *tls.Config {
			return &tls.Config{RootCAs: pki.otherCA, Certificates: []tls.Certificate{pki.client}}
		},
		cause: "x509: certificate signed by unknown authority",
		as:    func() any { return new(x509.UnknownAuthorityError) },
	}
	wrongHost = tlsCase{
		name: "wrong host name",
		cfg: func() *tls.Config {
			c := pki.clientTLS()
			c.ServerName = "other.example"
			return c
		},
		cause: "x509: certificate is valid for localhost, not other.example",
		as:    func() any { return new(x509.HostnameError) },
	}
	expired = tlsCase{
		name: "expired",
		cfg: func() *tls.Config {
			c := pki.clientTLS()
			after := pki.server.NotAfter.Add(time.Hour)
			c.Time = func() time.Time { return after }
			return c
		},
		cause: "x509: certificate has expired or is not yet valid",
		as:    func() any { return new(x509.CertificateInvalidError) },
	}
	// The broker demands a client certificate (fail_if_no_peer_cert). In
	// TLS 1.3 it refuses after the client's handshake is over: the alert
	// (certificate_required, 116) is read by amqp091-go's reader, which
	// keeps only its text in a 501 *amqp091.Error; and when the broker's
	// reset beats amqp091-go's first write, the write fails with
	// ECONNRESET and nobody reads the alert (though a Read on the tls.Conn
	// still returns it). In TLS 1.2 the refusal comes in the handshake, as
	// *net.OpError{Op: "remote error", Err: crypto/tls's unexported alert},
	// handshake_failure (40).
	noClientCert = tlsCase{
		name:  "no client certificate",
		cfg:   func() *tls.Config { return &tls.Config{RootCAs: pki.ca} },
		cause: "certificate required",
	}
	noClientCertTLS12 = tlsCase{
		name: "no client certificate, TLS 1.2",
		cfg: func() *tls.Config {
			return &tls.Config{RootCAs: pki.ca, MaxVersion: tls.VersionTLS12}
		},
		cause: "remote error: tls:",
	}
	// A client certificate the broker cannot verify (unknown_ca, 48, in
	// TLS 1.3 after the handshake as above). Go sends a configured
	// certificate only if its issuer is among the CAs the server names;
	// GetClientCertificate sends it anyway.
	strayClientCert = tlsCase{
		name: "client certificate of an unknown CA",
		cfg: func() *tls.Config {
			return &tls.Config{RootCAs: pki.ca, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &pki.stray, nil
			}}
		},
		cause: "remote error: tls:",
	}
)

func testPublisherRejected(t *testing.T, c tlsCase) {
	needNode(t)
	for _, retry := range []bool{false, true} {
		t.Run(fmt.Sprintf("RetryOnFailedConnect=%v", retry), func(t *testing.T) {
			cfg := config(amqpsURI("tlsuser", secret), c.cfg())
			cfg.RetryOnFailedConnect = retry
			cfg.DialTimeout = dialTimeout
			cfg.PublishTimeout = 5 * time.Second
			start := time.Now()
			pub, err := resilient.NewPublisher(cfg, nil)
			took := time.Since(start)
			if err == nil {
				// Wrongly taken for a fault that may pass: say what the
				// supervisor saw, and what a Publish then does.
				h := pub.Health()
				msgs, _ := brokertest.Messages(1)
				pubStart := time.Now()
				pubErr := pub.Publish(brokertest.Name("tls-rejected"), msgs...)
				pubTook := time.Since(pubStart)
				_ = pub.Close()
				t.Fatalf("NewPublisher succeeded in %s (state %s, health error: %v), want ErrTLS at once%s\n"+
					"then Publish returned in %s (PublishTimeout %s), permanent %v: %v",
					took.Round(time.Millisecond), h.State, h.Err, describeIf(h.Err),
					pubTook.Round(time.Millisecond), cfg.PublishTimeout, resilient.IsPermanent(pubErr), pubErr)
			}
			var as any
			if c.as != nil {
				as = c.as()
			}
			wantRejected(t, "NewPublisher", took, err, c.cause, as)
		})
	}
}

func describeIf(err error) string {
	if err == nil {
		return ""
	}
	return "\nchain:" + describe(err)
}

func TestPublisherUnknownAuthority(t *testing.T) { testPublisherRejected(t, unknownAuthority) }
func TestPublisherWrongHostName(t *testing.T)    { testPublisherRejected(t, wrongHost) }
func TestPublisherExpired(t *testing.T)          { testPublisherRejected(t, expired) }
func TestPublisherNoClientCert(t *testing.T)     { testPublisherRejected(t, noClientCert) }
func TestPublisherNoClientCertTLS12(t *testing.T) {
	testPublisherRejected(t, noClientCertTLS12)
}
func TestPublisherStrayClientCert(t *testing.T) { testPublisherRejected(t, strayClientCert) }

// TestSubscriberUnknownAuthority: the subscriber fails the same way.
func TestSubscriberUnknownAuthority(t *testing.T) {
	needNode(t)
	for _, retry := range []bool{false, true} {
		t.Run(fmt.Sprintf("RetryOnFailedConnect=%v", retry), func(t *testing.T) {
			cfg := config(amqpsURI("tlsuser", secret), unknownAuthority.cfg())
			cfg.RetryOnFailedConnect = retry
			cfg.DialTimeout = dialTimeout
			start := time.Now()
			sub, err := resilient.NewSubscriber(cfg, nil)
			took := time.Since(start)
			if err == nil {
				_ = sub.Close()
			}
			wantRejected(t, "NewSubscriber", took, err, unknownAuthority.cause, unknownAuthority.as())
		})
	}
}

// tlsConnection is what the broker says of a client connection's TLS.
type tlsConnection struct {
	SSL         bool   `json:"ssl"`
	Protocol    string `json:"ssl_protocol"`
	PeerSubject string `json:"peer_cert_subject"`
	Port        int    `json:"port"`
}

// tlsConnections lists the broker's client connections of each of names,
// from one rabbitmqctl call (each costs seconds).
func tlsConnections(t *testing.T, names ...string) map[string][]tlsConnection {
	t.Helper()
	out, err := node.Ctl(nodeN, "list_connections", "client_properties", "ssl", "ssl_protocol",
		"peer_cert_subject", "port", "--formatter", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("list_connections: %v: %s", err, out)
	}
	conns := map[string][]tlsConnection{}
	for _, r := range rows {
		name := ""
		for _, n := range names {
			if strings.Contains(string(r["client_properties"]), fmt.Sprintf("%q", n)) {
				name = n
			}
		}
		if name == "" {
			continue
		}
		var c tlsConnection
		_ = json.Unmarshal(r["ssl"], &c.SSL)
		_ = json.Unmarshal(r["ssl_protocol"], &c.Protocol)
		_ = json.Unmarshal(r["peer_cert_subject"], &c.PeerSubject)
		_ = json.Unmarshal(r["port"], &c.Port)
		conns[name] = append(conns[name], c)
	}
	return conns
}

// TestPublishConsumeOverTLS publishes from several goroutines and consumes
// with resilient.Subscriber, both over mutual TLS, while the broker closes
// every connection three times: every confirmed message is handled.
func TestPublishConsumeOverTLS(t *testing.T) {
	needNode(t)
	topic := brokertest.Name("tls-pubsub")
	uri := amqpsURI("guest", "guest")

	pubStates, pubRecord := brokertest.NewStates(t)
	pubCfg := config(uri, pki.clientTLS())
	pubCfg.ConnectionName = "tls-suite-publisher"
	pubCfg.OnStateChange = func(c resilient.StateChange) { pubRecord(c.To.String()) }
	pub, err := resilient.NewPublisher(pubCfg, nil)
	if err != nil {
		t.Fatalf("NewPublisher over amqps: %v", err)
	}
	defer pub.Close()

	subStates, subRecord := brokertest.NewStates(t)
	subCfg := config(uri, pki.clientTLS())
	subCfg.ConnectionName = "tls-suite-subscriber"
	subCfg.AMQP.Consume.Qos.PrefetchCount = 100
	subCfg.OnStateChange = func(c resilient.StateChange) { subRecord(c.To.String()) }
	sub, err := resilient.NewSubscriber(subCfg, nil)
	if err != nil {
		t.Fatalf("NewSubscriber over amqps: %v", err)
	}
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	arrivals := brokertest.NewArrivals()
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for msg := range msgs {
			arrivals.Add(msg.UUID)
			msg.Ack()
		}
	}()

	// The broker sees both connections on the amqps listener, with our
	// client certificate.
	names := []string{pubCfg.ConnectionName, subCfg.ConnectionName}
	atStart := tlsConnections(t, names...)
	for _, name := range names {
		conns := atStart[name]
		if len(conns) == 0 {
			t.Fatalf("the broker lists no connection named %s", name)
		}
		for _, c := range conns {
			if !c.SSL || c.Port != tlsPort || !strings.Contains(c.PeerSubject, "tls-suite client") {
				t.Errorf("connection %s: ssl %v on port %d, peer %q: want TLS on %d with our client certificate",
					name, c.SSL, c.Port, c.PeerSubject, tlsPort)
			}
		}
		t.Logf("%s: %d connection(s) over %s, peer %s", name, len(conns), conns[0].Protocol, conns[0].PeerSubject)
	}

	load := brokertest.StartLoad(t, pub, 8, topic)
	load.WaitProgress(200)
	const closes = 3
	for i := range closes {
		before := load.Confirmed.Len()
		if out, err := node.Ctl(nodeN, "close_all_connections", "test"); err != nil {
			load.Stop()
			t.Fatalf("close_all_connections: %v %s", err, out)
		}
		// Both lose their connection and get a new one, over TLS again.
		pubStates.Await("reconnecting")
		pubStates.Await("connected")
		subStates.Await("reconnecting")
		subStates.Await("connected")
		load.WaitProgress(200)
		t.Logf("close %d: %d confirmed before, %d now", i+1, before, load.Confirmed.Len())
	}
	load.Stop()
	confirmed := load.Confirmed.All()
	arrivals.AwaitAll(t, confirmed)
	tally := arrivals.Tally(confirmed)
	t.Logf("after %d forced closes: %s", closes, tally)
	if len(tally.Lost) > 0 || tally.Unexpected > 0 {
		t.Errorf("lost %d (e.g. %v), unexpected %d", len(tally.Lost), tally.Lost[:min(5, len(tally.Lost))], tally.Unexpected)
	}
	after := tlsConnections(t, names...)
	for _, name := range names {
		for _, c := range after[name] {
			if !c.SSL || c.Port != tlsPort {
				t.Errorf("after the closes, connection %s: ssl %v on port %d", name, c.SSL, c.Port)
			}
		}
	}

	cancel()
	<-consumed
	if err := sub.Close(); err != nil {
		t.Errorf("subscriber Close: %v", err)
	}
	if err := pub.Close(); err != nil {
		t.Errorf("publisher Close: %v", err)
	}
}
