package tlsfiles

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lookaside-lb/lookaside/internal/clock"
)

// DefaultPollInterval is how often Run reads the files when
// Config.PollInterval is zero.
const DefaultPollInterval = 10 * time.Second

// MinPollInterval is the shortest Config.PollInterval accepted.
const MinPollInterval = 10 * time.Millisecond

// Config says which files a Store reads. Paths are used as given.
type Config struct {
	// CertFile and KeyFile are a PEM certificate chain (leaf first,
	// intermediates after it) and the leaf's PEM private key (PKCS #1,
	// PKCS #8 or EC). Both or neither; ServerConfig needs them, and for
	// ClientConfig they are the client certificate offered to servers
	// that ask for one.
	CertFile, KeyFile string
	// CAFile is a PEM bundle of CA certificates. For ServerConfig it
	// turns on mutual TLS: clients must present a certificate that chains
	// to one of them. For ClientConfig it holds the roots that server
	// certificates must chain to; empty means the system roots.
	CAFile string
	// ServerName, for ClientConfig and ClientCredentials, is the name
	// that server certificates must carry, instead of the host that was
	// dialed (useful when servers are dialed by IP address and their
	// certificates name the service). Empty: the dialed host.
	ServerName string
	// ClientCertOptional, with CAFile, lets ServerConfig accept clients
	// that present no certificate (a certificate presented must still
	// verify). Only for servers that check per call who presented one
	// (VerifiedClient), such as a backend that lets Consul's health check
	// in without a certificate. Default false: a certificate is required.
	ClientCertOptional bool
	// PollInterval is how often Run reads the files and reloads them
	// when their content changed; at least MinPollInterval. Zero means
	// DefaultPollInterval (10 s); negative is rejected.
	PollInterval time.Duration
	// Logger receives the Store's logs, with component=tlsfiles. Nil
	// means slog.Default(). Key material is never logged.
	Logger *slog.Logger
}

// Validate reports the first problem with c's fields, without reading
// any file: a certificate without a key or the reverse, a
// ClientCertOptional without a CA file, or an out-of-range PollInterval.
// A Config without any file is valid: a client that trusts the system
// roots and has no certificate.
func (c Config) Validate() error {
	switch {
	case c.CertFile != "" && c.KeyFile == "":
		return fmt.Errorf("tlsfiles: certificate file %s has no key file", c.CertFile)
	case c.CertFile == "" && c.KeyFile != "":
		return fmt.Errorf("tlsfiles: key file %s has no certificate file", c.KeyFile)
	case c.ClientCertOptional && c.CAFile == "":
		return errors.New("tlsfiles: ClientCertOptional needs a CA file")
	case c.PollInterval < 0:
		return fmt.Errorf("tlsfiles: poll interval %v is negative", c.PollInterval)
	case c.PollInterval != 0 && c.PollInterval < MinPollInterval:
		return fmt.Errorf("tlsfiles: poll interval %v is under %v", c.PollInterval, MinPollInterval)
	}
	return nil
}

// Info describes the material in force, for status pages and logs.
type Info struct {
	// Subject, DNSNames and IPs are the leaf certificate's; NotAfter its
	// expiry. Zero without a certificate.
	Subject  string
	DNSNames []string
	IPs      []string
	NotAfter time.Time
	// CAs is the number of certificates in the CA bundle.
	CAs int
	// LoadedAt is when this material was read.
	LoadedAt time.Time
	// LastError is the last failed load, nil once a load succeeded after
	// it. The material in force is the last good one.
	LastError error
}

// material is one good, immutable set of TLS material.
type material struct {
	cert     *tls.Certificate // nil without CertFile
	pool     *x509.CertPool   // nil without CAFile
	cas      int
	hash     [sha256.Size]byte // of every file's content
	loadedAt time.Time
}

// Store holds the TLS material read from a Config's files and keeps it
// current: Reload reads them on demand, Run polls them. Its methods are
// safe for concurrent use; the tls.Configs and credentials it returns read
// the current material at each handshake.
type Store struct {
	// Read-only after New.
	cfg   Config
	log   *slog.Logger
	clock clock.Clock

	// cur is the material in force; never nil after New. Written under mu.
	cur atomic.Pointer[material]

	// mu serializes loads, so that a Reload and the poller never race to
	// install material out of order.
	mu       sync.Mutex
	reported string // guarded by mu: the content hash and error the poller last logged
	pending  string // guarded by mu: the same, seen by the last poll and not logged yet

	// lastErr is the last load's error; nil after a good one. Written
	// under mu.
	lastErr atomic.Pointer[error]
}

// New checks cfg, reads and checks its files, and returns a Store holding
// them. It blocks only to read the files and starts no goroutine; call Run
// to follow changes. Errors name the file at fault.
func New(cfg Config) (*Store, error) {
	return newStore(cfg, clock.Real{})
}

func newStore(cfg Config, clk clock.Clock) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Store{cfg: cfg, log: cfg.Logger.With("component", "tlsfiles"), clock: clk}
	m, err := s.read()
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	return s, nil
}

// Config returns the Store's configuration, with defaults applied.
func (s *Store) Config() Config { return s.cfg }

// Info describes the material in force. It does not block.
func (s *Store) Info() Info {
	m := s.cur.Load()
	in := Info{CAs: m.cas, LoadedAt: m.loadedAt}
	if m.cert != nil && m.cert.Leaf != nil {
		in.Subject = m.cert.Leaf.Subject.String()
		in.DNSNames = m.cert.Leaf.DNSNames
		for _, ip := range m.cert.Leaf.IPAddresses {
			in.IPs = append(in.IPs, ip.String())
		}
		in.NotAfter = m.cert.Leaf.NotAfter
	}
	if err := s.lastErr.Load(); err != nil {
		in.LastError = *err
	}
	return in
}

// Reload reads the files again and, when their content changed and is
// good, puts the new material in force. On error the material in force
// stays and the error, which names the file, is returned; Reload logs
// only a successful change. It blocks while it reads the files.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.reloadLocked()
	return err
}

// reloadLocked is Reload; it also returns the content hash it read.
func (s *Store) reloadLocked() ([sha256.Size]byte, error) {
	f, hash, err := s.readFiles()
	if err != nil {
		s.lastErr.Store(&err)
		return hash, err
	}
	if hash == s.cur.Load().hash {
		s.lastErr.Store(nil)
		return hash, nil
	}
	m, err := s.parse(f, hash)
	if err != nil {
		s.lastErr.Store(&err)
		return hash, err
	}
	s.cur.Store(m)
	s.lastErr.Store(nil)
	s.logLoaded(m)
	return hash, nil
}

// logLoaded logs new material at INFO.
func (s *Store) logLoaded(m *material) {
	args := []any{"ca_certs", m.cas}
	if m.cert != nil {
		args = append(args, "cert_file", s.cfg.CertFile, "subject", m.cert.Leaf.Subject.String(),
			"not_after", m.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if s.cfg.CAFile != "" {
		args = append(args, "ca_file", s.cfg.CAFile)
	}
	s.log.Info("TLS files reloaded", args...)
}

// Run reads the files every PollInterval and reloads them when their
// content changed, until ctx is done. A bad content is read again after
// SettleDelay (at most PollInterval), since a writer may be between two
// files; if it is still the same, it is logged once (at WARN, naming the
// file). The material in force stays meanwhile; the next good content is
// put in force. It blocks until ctx is done; run it in a goroutine the
// caller owns.
func (s *Store) Run(ctx context.Context) {
	settle := min(SettleDelay, s.cfg.PollInterval)
	for {
		wait := s.cfg.PollInterval
		if s.settling() {
			wait = settle
		}
		fire, stop := s.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			stop()
			return
		case <-fire:
		}
		s.poll()
	}
}

// SettleDelay is how soon Run reads bad files again before it logs them.
const SettleDelay = time.Second

// settling reports whether the last poll saw a bad content not logged yet.
func (s *Store) settling() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending != ""
}

// poll is one round of Run: a reload whose failure is logged once per
// distinct bad content and error, when two polls in a row saw it.
func (s *Store) poll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	hash, err := s.reloadLocked()
	if err == nil {
		s.reported, s.pending = "", ""
		return
	}
	key := fmt.Sprintf("%x %s", hash, err)
	switch key {
	case s.reported:
		return
	case s.pending:
		s.pending, s.reported = "", key
		s.log.Warn("TLS files not reloaded; keeping the material in force", "err", err)
	default:
		s.pending = key
	}
}

// read reads and parses the files into new material, for New.
func (s *Store) read() (*material, error) {
	contents, hash, err := s.readFiles()
	if err != nil {
		return nil, err
	}
	return s.parse(contents, hash)
}

// files holds the content of the configured files.
type files struct {
	cert, key, ca []byte
}

// readFiles reads every configured file and hashes their content.
func (s *Store) readFiles() (files, [sha256.Size]byte, error) {
	var f files
	var err error
	h := sha256.New()
	for _, x := range []struct {
		path, what string
		dst        *[]byte
	}{
		{s.cfg.CertFile, "certificate file", &f.cert},
		{s.cfg.KeyFile, "key file", &f.key},
		{s.cfg.CAFile, "CA file", &f.ca},
	} {
		if x.path == "" {
			h.Write([]byte{0})
			continue
		}
		if *x.dst, err = os.ReadFile(x.path); err != nil {
			return f, [sha256.Size]byte{}, fmt.Errorf("tlsfiles: %s: %w", x.what, err)
		}
		// Length-prefixed, so that moving bytes between files changes
		// the hash.
		fmt.Fprintf(h, "%d:", len(*x.dst))
		h.Write(*x.dst)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return f, sum, nil
}

// parse checks the files' content and builds material from it.
func (s *Store) parse(f files, hash [sha256.Size]byte) (*material, error) {
	now := s.clock.Now()
	m := &material{hash: hash, loadedAt: now}
	if s.cfg.CertFile != "" {
		cert, err := parsePair(s.cfg.CertFile, s.cfg.KeyFile, f.cert, f.key, now)
		if err != nil {
			return nil, err
		}
		m.cert = cert
	}
	if s.cfg.CAFile != "" {
		certs, err := parseCerts(s.cfg.CAFile, "CA file", f.ca)
		if err != nil {
			return nil, err
		}
		m.pool = x509.NewCertPool()
		for _, c := range certs {
			m.pool.AddCert(c)
		}
		m.cas = len(certs)
	}
	return m, nil
}

// parseCerts decodes every CERTIFICATE block of a PEM file. Other blocks
// are an error, as is a file without certificates.
func parseCerts(path, what string, data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("tlsfiles: %s %s: PEM block %d is a %q, not a CERTIFICATE", what, path, len(certs)+1, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("tlsfiles: %s %s: certificate %d: %w", what, path, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("tlsfiles: %s %s: no PEM CERTIFICATE block", what, path)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("tlsfiles: %s %s: data after certificate %d is not PEM (a file cut short?)", what, path, len(certs))
	}
	return certs, nil
}

// parsePair checks a certificate chain and its key and returns them as a
// tls.Certificate with Leaf set.
func parsePair(certPath, keyPath string, certPEM, keyPEM []byte, now time.Time) (*tls.Certificate, error) {
	chain, err := parseCerts(certPath, "certificate file", certPEM)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(keyPEM)
	if b == nil || !strings.HasSuffix(b.Type, "PRIVATE KEY") {
		return nil, fmt.Errorf("tlsfiles: key file %s: no PEM PRIVATE KEY block", keyPath)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsfiles: key file %s does not go with certificate file %s: %w", keyPath, certPath, err)
	}
	leaf := chain[0]
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("tlsfiles: certificate file %s: the certificate expired at %s", certPath, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	pair.Leaf = leaf
	return &pair, nil
}

// ServerConfig returns a server tls.Config that presents the current
// certificate (GetCertificate) and, with a CA file, requires and verifies
// client certificates against the current CA bundle (GetConfigForClient;
// see ClientCertOptional). TLS 1.2 at least. It fails when the Store has
// no certificate. Each call returns a new Config, which the caller may
// change (NextProtos, for example) before use.
func (s *Store) ServerConfig() (*tls.Config, error) {
	if s.cfg.CertFile == "" {
		return nil, errors.New("tlsfiles: a server needs a certificate and key file")
	}
	base := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cur.Load().cert, nil
		},
	}
	if s.cfg.CAFile == "" {
		return base, nil
	}
	auth := tls.RequireAndVerifyClientCert
	if s.cfg.ClientCertOptional {
		auth = tls.VerifyClientCertIfGiven
	}
	// Clients get base as it is at the handshake (with what the caller
	// set on it), with the client CA pool in force.
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := s.cur.Load()
		c := base.Clone()
		c.GetConfigForClient = nil
		c.GetCertificate = nil
		c.Certificates = []tls.Certificate{*m.cert}
		c.ClientCAs = m.pool
		c.ClientAuth = auth
		return c, nil
	}
	return base, nil
}

// ClientConfig returns a client tls.Config that offers the current
// certificate to servers that ask for one (GetClientCertificate) and
// verifies server certificates against the current CA bundle (the system
// roots without one) in VerifyConnection: InsecureSkipVerify is set only
// so that the roots can change without a new Config; VerifyConnection
// does the whole verification. The name checked is ServerName, else the
// name the connection was made to; a connection to an IP address without
// ServerName is refused (use ClientCredentials for gRPC, which checks the
// IP). TLS 1.2 at least. Each call returns a new Config.
func (s *Store) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		ServerName:           s.cfg.ServerName,
		InsecureSkipVerify:   true,
		VerifyConnection:     func(cs tls.ConnectionState) error { return s.verifyServer(cs, "") },
		GetClientCertificate: s.clientCertificate,
	}
}

// clientCertificate offers the current certificate, or none.
func (s *Store) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if c := s.cur.Load().cert; c != nil {
		return c, nil
	}
	return &tls.Certificate{}, nil
}

// verifyServer verifies a server's chain against the current roots and
// name (ServerName, else dialed, else the connection's SNI).
func (s *Store) verifyServer(cs tls.ConnectionState, dialed string) error {
	name := s.cfg.ServerName
	if name == "" {
		name = dialed
	}
	if name == "" {
		name = cs.ServerName
	}
	if name == "" {
		return errors.New("tlsfiles: no server name to check the server's certificate against (dialed by IP address?): set ServerName")
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tlsfiles: the server presented no certificate")
	}
	opts := x509.VerifyOptions{
		Roots:         s.cur.Load().pool,
		DNSName:       name,
		Intermediates: x509.NewCertPool(),
		CurrentTime:   s.clock.Now(),
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return fmt.Errorf("tlsfiles: server certificate: %w", err)
	}
	return nil
}
