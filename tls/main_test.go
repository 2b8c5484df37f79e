// Package tls_test proves the resilient publisher and subscriber over TLS
// (amqps, mutual TLS) against a RabbitMQ node of the suite's own, started by
// scripts/cluster.sh with an amqps listener, its certificates made here with
// crypto/x509.
//
// On RabbitMQ 3.10 (RABBITMQ_LINE unset or 3.10) the node is tls1@localhost:
// it keeps the script's plain listener (127.0.0.1:5701, which the script
// waits for and prints) and adds an amqps listener on 127.0.0.1:5702 that
// demands a client certificate (verify_peer, fail_if_no_peer_cert). On 4.0
// (RABBITMQ_LINE=4.0) it is rtls1@localhost in RabbitMQ 4's chroot, plain on
// 5706 and amqps on 5707, its certificates inside the chroot; both lines can
// run at once. Under -short, or where the line's RabbitMQ is not installed,
// the tests that need the node skip themselves and say why.
package tls_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/resilientmq/watermill-rabbitmq/internal/clustertest"
)

// nodeN is the node's number in the Cluster.
const nodeN = 1

// The line's node: prefix names it (<prefix>1@localhost); its plain AMQP
// listener is on portBase+1 (the script's, which stays), its Erlang
// distribution on 20000+portBase+1; tlsPort is the amqps listener's.
var prefix, portBase, tlsPort = func() (string, int, int) {
	if clustertest.Chroot() != "" {
		return "rtls", 5705, 5707
	}
	return "tls", 5700, 5702
}()

var (
	// pki is what TestMain generated; set in every mode.
	pki *certs
	// node is the running TLS node, nil when the tests must skip.
	node *clustertest.Cluster
	// skipReason says why node is nil.
	skipReason string
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := run(m)
	if code == 0 {
		// The node is stopped by now: only our goroutines are left to check.
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// run makes the certificates, starts the node unless the tests must skip,
// runs the tests, and stops the node (whatever the tests did: a panic ends
// the process before this returns, and then the next start reaps the node
// through the script's owner pid).
func run(m *testing.M) int {
	// The node runs as the rabbitmq user (in the chroot on 4.0): it must
	// reach the directory and read the certificates and the key. Without a
	// chroot of the line's, a directory of the machine's (the tests skip).
	root := clustertest.Chroot()
	if _, err := os.Stat(filepath.Join(root, "tmp")); root != "" && err != nil {
		root = ""
	}
	dir, err := clustertest.MkdirTemp(root, "tls-suite-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "tls: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	pki, err = generate(filepath.Join(dir, "certs"), func(path string) string { return clustertest.NodePath(root, path) })
	if err != nil {
		fmt.Fprintf(os.Stderr, "tls: certificates: %v\n", err)
		return 1
	}

	switch {
	case testing.Short():
		skipReason = "-short: the TLS tests need a RabbitMQ node of their own"
	case clustertest.Available() != nil:
		skipReason = "no RabbitMQ node can be started here: " + clustertest.Available().Error()
	default:
		// An interrupted run stops its node too, even one still starting:
		// the signal waits in sigs until StartWith returns. (A panic or a
		// -timeout does not: the next start reaps a node whose owner is
		// gone.)
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sigs)
		start := time.Now()
		c, err := clustertest.StartWith(filepath.Join(dir, "nodes"), clustertest.Options{
			Size:       1,
			NamePrefix: prefix,
			PortBase:   portBase,
			ExtraConf:  pki.rabbitConf(),
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "tls: start the TLS node: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "tls: node %s started in %s (amqps on 127.0.0.1:%d)\n",
			c.Node(nodeN), time.Since(start).Round(10*time.Millisecond), tlsPort)
		var once sync.Once
		stopNode := func() {
			once.Do(func() {
				stop := time.Now()
				if err := c.Stop(); err != nil {
					fmt.Fprintf(os.Stderr, "tls: stop the TLS node: %v\n", err)
					return
				}
				fmt.Fprintf(os.Stderr, "tls: node stopped in %s\n", time.Since(stop).Round(10*time.Millisecond))
			})
		}
		select {
		case sig := <-sigs: // while it started
			fmt.Fprintf(os.Stderr, "tls: %v: stopping the TLS node\n", sig)
			stopNode()
			return 1
		default:
		}
		node = c
		done := make(chan struct{})
		go func() {
			select {
			case sig := <-sigs:
				fmt.Fprintf(os.Stderr, "tls: %v: stopping the TLS node\n", sig)
				stopNode()
				_ = os.RemoveAll(dir)
				os.Exit(1)
			case <-done:
			}
		}()
		defer func() {
			close(done)
			stopNode()
		}()
	}
	code := m.Run()
	if code != 0 && node != nil {
		dumpLogs(node)
	}
	return code
}

// dumpLogs prints the end of the node's logs, which Stop removes.
func dumpLogs(c *clustertest.Cluster) {
	logs, _ := filepath.Glob(filepath.Join(c.Dir(), prefix+"1", "log", "*.log"))
	for _, path := range logs {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		var lines []string
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		f.Close()
		fmt.Fprintf(os.Stderr, "--- %s (last 40 lines)\n%s\n", path, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
}

// certs is the test PKI: a CA that signs the server's and a client's
// certificates, and another CA unknown to both sides (with a client
// certificate of its own, which the broker must refuse).
type certs struct {
	caFile, certFile, keyFile string // the server's, in PEM, for rabbitmq.conf, as the node names them

	ca      *x509.CertPool // trusts our CA
	otherCA *x509.CertPool // trusts only the unknown CA
	server  *x509.Certificate
	client  tls.Certificate // signed by our CA
	stray   tls.Certificate // a client certificate signed by the unknown CA
}

// rabbitConf is the node's extra configuration: an amqps listener that
// checks client certificates against our CA and refuses a client without
// one.
func (p *certs) rabbitConf() string {
	return strings.Join([]string{
		fmt.Sprintf("listeners.ssl.default = 127.0.0.1:%d", tlsPort),
		"ssl_options.cacertfile = " + p.caFile,
		"ssl_options.certfile = " + p.certFile,
		"ssl_options.keyfile = " + p.keyFile,
		"ssl_options.verify = verify_peer",
		"ssl_options.fail_if_no_peer_cert = true",
	}, "\n")
}

// clientTLS is the configuration of a client with our CA and certificate.
func (p *certs) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: p.ca, Certificates: []tls.Certificate{p.client}}
}

type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// generate writes the server's files to dir (0755, files 0644: the node
// runs as the rabbitmq user) and returns the PKI; nodePath names a file as
// the node sees it.
func generate(dir string, nodePath func(string) string) (*certs, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	now := time.Now()
	ca, err := newCA("tls-suite CA", now)
	if err != nil {
		return nil, err
	}
	other, err := newCA("tls-suite unknown CA", now)
	if err != nil {
		return nil, err
	}
	server, serverKey, err := ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "tls-suite server"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(24 * time.Hour),
	})
	if err != nil {
		return nil, err
	}
	client, err := ca.clientCert("tls-suite client", now)
	if err != nil {
		return nil, err
	}
	stray, err := other.clientCert("tls-suite stray client", now)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(serverKey)
	if err != nil {
		return nil, err
	}
	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	p := &certs{
		caFile:   nodePath(caFile),
		certFile: nodePath(certFile),
		keyFile:  nodePath(keyFile),
		ca:       x509.NewCertPool(),
		otherCA:  x509.NewCertPool(),
		server:   server,
		client:   client,
		stray:    stray,
	}
	p.ca.AddCert(ca.cert)
	p.otherCA.AddCert(other.cert)
	for path, block := range map[string]*pem.Block{
		caFile:   {Type: "CERTIFICATE", Bytes: ca.cert.Raw},
		certFile: {Type: "CERTIFICATE", Bytes: server.Raw},
		keyFile:  {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o644); err != nil {
			return nil, err
		}
		if err := os.Chmod(path, 0o644); err != nil { // whatever the umask
			return nil, err
		}
	}
	return p, nil
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func serial() (*big.Int, error) { return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120)) }

func newCA(name string, now time.Time) (*issuer, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &issuer{cert: cert, key: key}, nil
}

// issue signs tmpl (its subject, names, usages and validity) with a new key.
func (ca *issuer) issue(tmpl *x509.Certificate) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, nil, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func (ca *issuer) clientCert(name string, now time.Time) (tls.Certificate, error) {
	cert, key, err := ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(24 * time.Hour),
	})
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}, nil
}
