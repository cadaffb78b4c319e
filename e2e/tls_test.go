package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
)

// balancerName is the name grpc-go's grpclb checks the balancer's
// certificate against: the ServerName lbdial gives balancer addresses (a
// DNS SRV target, for clients that find balancers in DNS).
const balancerName = "lookaside"

// testPKI is one CA and the files the tests hand to processes.
type testPKI struct {
	ca  *tlstest.CA
	dir string
}

func newTestPKI(t *testing.T) *testPKI {
	return &testPKI{ca: tlstest.NewCA(t, "e2e CA"), dir: t.TempDir()}
}

// files issues a certificate for names and writes it, its key and the CA
// into a new folder.
func (p *testPKI) files(t *testing.T, folder string, names ...string) tlstest.Files {
	t.Helper()
	d := filepath.Join(p.dir, folder)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	cn := folder
	if len(names) > 0 {
		cn = names[0]
	}
	return tlstest.WriteFiles(t, d, p.ca.Issue(t, tlstest.Options{CommonName: cn, Names: names}), p.ca.PEM)
}

// clientTLS is what a user's program sets: the CA as roots and, for
// mTLS, its certificate. Nothing else: grpc-go's grpclb dials the
// balancer with the channel's transport credentials, checking the
// balancer's certificate against the balancer address's ServerName, and
// the backends against the dial target's host.
func (p *testPKI) clientTLS(t *testing.T, cert *tlstest.Files) credentials.TransportCredentials {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		pair, err := tls.LoadX509KeyPair(cert.Cert, cert.Key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(cfg)
}

// tlsBinaries builds the commands, with the race detector when the tests
// run with it.
func tlsBinaries(t *testing.T) (lbBin, beBin string) {
	if raceDetector {
		return buildCmds(t)
	}
	return buildCmdsWith(t)
}

// startTLSBackend runs a backend in this process serving tls, registered
// for svc.
func startTLSBackend(t *testing.T, svc string, files tlstest.Files, mtls bool) *runningBackend {
	t.Helper()
	return startBackend(t, svc, func(c *backend.Config) {
		c.TLS = tlsfiles.Config{CertFile: files.Cert, KeyFile: files.Key, Logger: quietLogger()}
		if mtls {
			c.TLS.CAFile = files.CA
			c.HealthWithoutClientCert = true // the shared agent presents no certificate
		}
	})
}

// tlsGrpclbClient dials svc through the balancer at lbAddr with creds.
func tlsGrpclbClient(t *testing.T, svc, lbAddr string, creds credentials.TransportCredentials) userpb.UserClient {
	t.Helper()
	return client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{lbAddr},
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(creds)}})
}

// balancerCert makes a health check on a new connection to the balancer
// with creds and returns the certificate the balancer presented.
func balancerCert(t *testing.T, addr string, creds credentials.TransportCredentials) (*x509.Certificate, error) {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds), grpc.WithAuthority(balancerName))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var p peer.Peer
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
	if err != nil {
		return nil, err
	}
	return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0], nil
}

// TestTLS runs the lbserver and backend commands over TLS: grpclb clients
// over TLS and mTLS, a client without a certificate refused under mTLS,
// the balancer's certificate rotated under load (a broken key refused,
// then SIGHUP, then polling) without a failed call, and ORCA load reports
// over mTLS to TLS backends.
func TestTLS(t *testing.T) {
	t.Parallel()
	lbBin, beBin := tlsBinaries(t)
	pki := newTestPKI(t)
	lbFiles := pki.files(t, "balancer", balancerName, "127.0.0.1")
	clientFiles := pki.files(t, "client", "client")
	lbArgs := func(extra ...string) []string {
		return append([]string{"-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(), "-client-stats-interval", "1s",
			"-log-level", "warn", "-tls-cert", lbFiles.Cert, "-tls-key", lbFiles.Key}, extra...)
	}

	t.Run("grpclb over TLS", func(t *testing.T) {
		t.Parallel()
		svc := serviceName(t)
		beFiles := pki.files(t, "tls-backends", svc)
		bs := []*runningBackend{startTLSBackend(t, svc, beFiles, false), startTLSBackend(t, svc, beFiles, false)}
		waitPassing(t, svc, 2)
		lbp := startProcess(t, lbBin, lbArgs()...)

		c := tlsGrpclbClient(t, svc, lbp.addr, pki.clientTLS(t, nil))
		waitSeen(t, c, bs...)
		got := spread(t, c, 100)
		t.Logf("100 calls over TLS: %v", got)
		for _, b := range bs {
			if got[b.ID()] == 0 {
				t.Errorf("backend %s got no call: %v", b.ID(), got)
			}
		}
		// A plaintext client reaches no balancer, so no backend.
		plain := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{lbp.addr}})
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		if r, err := call(ctx, plain); err == nil {
			t.Errorf("a plaintext client reached backend %s through a TLS balancer", r.BackendId)
		}
	})

	t.Run("grpclb over mTLS", func(t *testing.T) {
		t.Parallel()
		svc := serviceName(t)
		beFiles := pki.files(t, "mtls-backends", svc)
		bs := []*runningBackend{startTLSBackend(t, svc, beFiles, true), startTLSBackend(t, svc, beFiles, true)}
		waitPassing(t, svc, 2)
		lbp := startProcess(t, lbBin, lbArgs("-tls-client-ca", lbFiles.CA)...)

		c := tlsGrpclbClient(t, svc, lbp.addr, pki.clientTLS(t, &clientFiles))
		waitSeen(t, c, bs...)
		got := spread(t, c, 100)
		t.Logf("100 calls over mTLS: %v", got)

		// Without a certificate: the balancer refuses the connection,
		// the client gets no list and no call goes anywhere.
		if _, err := balancerCert(t, lbp.addr, pki.clientTLS(t, nil)); err == nil {
			t.Error("the balancer answered a client without a certificate")
		} else {
			t.Logf("a client without a certificate: %v", err)
		}
		if _, err := balancerCert(t, lbp.addr, pki.clientTLS(t, &clientFiles)); err != nil {
			t.Errorf("health check with a certificate: %v", err)
		}
		noCert := tlsGrpclbClient(t, svc, lbp.addr, pki.clientTLS(t, nil))
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		if r, err := call(ctx, noCert); err == nil {
			t.Errorf("a client without a certificate reached backend %s through an mTLS balancer", r.BackendId)
		}
		// A certificate from another CA is refused too.
		other := newTestPKI(t)
		otherFiles := other.files(t, "intruder", "client")
		if _, err := balancerCert(t, lbp.addr, pki.clientTLSWithCert(t, otherFiles)); err == nil {
			t.Error("the balancer answered a client whose certificate another CA signed")
		}
	})

	t.Run("registered mTLS replica", func(t *testing.T) {
		t.Parallel()
		svc := serviceName(t)
		beFiles := pki.files(t, "registered-backends", svc)
		b := startTLSBackend(t, svc, beFiles, true)
		waitPassing(t, svc, 1)
		// Consul's agent presents no certificate: the replica lets its
		// health check in without one, and nothing else.
		lbp := startProcess(t, lbBin, lbArgs("-tls-client-ca", lbFiles.CA, "-register", "-register-service", svc+"-lb",
			"-check-interval", "1s", "-drain-delay", "0s")...)
		waitPassing(t, svc+"-lb", 1)

		c := tlsGrpclbClient(t, svc, lbp.addr, pki.clientTLS(t, &clientFiles))
		waitSeen(t, c, b)
		if _, err := balancerCert(t, lbp.addr, pki.clientTLS(t, nil)); err != nil {
			t.Errorf("health check without a certificate (as Consul's): %v", err)
		}
		noCert := tlsGrpclbClient(t, svc, lbp.addr, pki.clientTLS(t, nil))
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		if r, err := call(ctx, noCert); err == nil {
			t.Errorf("a client without a certificate reached backend %s through a registered mTLS balancer", r.BackendId)
		}
	})

	t.Run("rotation under load", func(t *testing.T) {
		t.Parallel()
		svc := serviceName(t)
		beFiles := pki.files(t, "rotation-backends", svc)
		bs := []*runningBackend{startTLSBackend(t, svc, beFiles, false), startTLSBackend(t, svc, beFiles, false)}
		waitPassing(t, svc, 2)
		// The balancer gets its own files, rewritten below.
		rotFiles := pki.files(t, "rotating-balancer", balancerName, "127.0.0.1")
		lbp := startProcess(t, lbBin, "-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(), "-client-stats-interval", "1s",
			"-log-level", "info", "-tls-cert", rotFiles.Cert, "-tls-key", rotFiles.Key)
		creds := pki.clientTLS(t, nil)
		first, err := balancerCert(t, lbp.addr, creds)
		if err != nil {
			t.Fatal(err)
		}

		c := tlsGrpclbClient(t, svc, lbp.addr, creds)
		waitSeen(t, c, bs...)
		ld := startLoadFor(t.Context(), c, 5*time.Millisecond, 60*time.Second)
		// New clients connect to the balancer all along, each making one
		// call, so that handshakes happen across each rotation.
		fresh := startFreshClients(t, svc, lbp.addr, creds, 100*time.Millisecond, 60*time.Second)

		waitCert := func(what string, want *x509.Certificate, limit time.Duration) time.Duration {
			t.Helper()
			start := time.Now()
			waitFor(t, limit, what, func() bool {
				got, err := balancerCert(t, lbp.addr, creds)
				return err == nil && got.SerialNumber.Cmp(want.SerialNumber) == 0
			})
			return time.Since(start)
		}

		// 0. A broken key and SIGHUP: refused, the certificate stays.
		time.Sleep(500 * time.Millisecond)
		tlstest.WriteAtomic(t, rotFiles.Key, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
		if err := lbp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the balancer to refuse the broken key", func() bool {
			return strings.Contains(lbp.logs(), rotFiles.Key)
		})
		if got, err := balancerCert(t, lbp.addr, creds); err != nil || got.SerialNumber.Cmp(first.SerialNumber) != 0 {
			t.Fatalf("after a broken key and SIGHUP: %v, %v; want the first certificate still", got, err)
		}

		// 1. New files (each renamed into place), then SIGHUP.
		second := pki.ca.Issue(t, tlstest.Options{CommonName: "balancer-2", Names: []string{balancerName, "127.0.0.1"}})
		tlstest.WriteFiles(t, filepath.Dir(rotFiles.Cert), second)
		if err := lbp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		took := waitCert("the certificate after SIGHUP", second.Cert, 5*time.Second)
		t.Logf("SIGHUP: new certificate served %v after the signal (first %v)", took, first.SerialNumber)

		// 2. Files rewritten in place, the key 200 ms after the
		// certificate (a poll in between sees a pair that does not
		// match), and no signal: the balancer's poller takes them.
		time.Sleep(500 * time.Millisecond)
		third := pki.ca.Issue(t, tlstest.Options{CommonName: "balancer-3", Names: []string{balancerName, "127.0.0.1"}})
		if err := os.WriteFile(rotFiles.Cert, third.CertPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		if err := os.WriteFile(rotFiles.Key, third.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		took = waitCert("the certificate taken by polling", third.Cert, 30*time.Second)
		t.Logf("polling: new certificate served %v after the files were written", took)
		time.Sleep(500 * time.Millisecond)

		counts, err := ld.finish()
		freshCalls, freshErr := fresh.finish()
		if err != nil {
			t.Errorf("calls failed while the certificate rotated: %v", err)
		}
		if freshErr != nil {
			t.Errorf("new clients failed while the certificate rotated: %v", freshErr)
		}
		t.Logf("%d calls on one client and %d new clients, none failed: %v", ld.calls.Load(), freshCalls, counts)
		if ld.calls.Load() < 100 || freshCalls < 10 {
			t.Errorf("too little load to tell: %d calls, %d new clients", ld.calls.Load(), freshCalls)
		}
		if n := strings.Count(lbp.logs(), "TLS files reloaded"); n != 2 {
			t.Errorf("the balancer logged %d reloads, want 2:\n%s", n, lbp.logs())
		}
	})

	t.Run("ORCA over mTLS", func(t *testing.T) {
		t.Parallel()
		svc := serviceName(t)
		beFiles := pki.files(t, "orca-backends", svc)
		for range 2 {
			startProcess(t, beBin, "-consul", agent.HTTPAddr(), "-service", svc, "-check-interval", "1s",
				"-drain-delay", "0", "-log-level", "warn", "-orca-min-interval", "100ms",
				"-tls-cert", beFiles.Cert, "-tls-key", beFiles.Key, "-tls-client-ca", beFiles.CA,
				"-tls-health-without-client-cert")
		}
		waitPassing(t, svc, 2)
		orcaFiles := pki.files(t, "orca-client", "lookaside-orca")
		// ORCA's TLS in the config file, as an operator would write it.
		conf := filepath.Join(pki.dir, "orca-lookaside.yaml")
		yaml := fmt.Sprintf("load_reports:\n  tls:\n    enabled: true\n    ca_file: %q\n    cert_file: %q\n    key_file: %q\n    server_name: %q\n",
			orcaFiles.CA, orcaFiles.Cert, orcaFiles.Key, svc)
		if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		lbp := startProcess(t, lbBin, append([]string{"-config", conf}, lbArgs("-policy", "least_load",
			"-load-report-interval", "100ms", "-admin-listen", freeAddr(t))...)...)
		admin := lbp.waitLine(t, "lbserver admin on ", 10*time.Second)

		c := tlsGrpclbClient(t, svc, lbp.addr, pki.clientTLS(t, &clientFiles))
		spread(t, c, 20) // the first stream makes the balancer watch the service
		var last []endpointLoad
		defer func() {
			if t.Failed() {
				t.Logf("endpoints: %+v\nbalancer log:\n%s", last, lbp.logs())
			}
		}()
		waitFor(t, 20*time.Second, "ORCA reports from both backends over mTLS", func() bool {
			last = endpointLoads(t, admin, svc)
			n := 0
			for _, e := range last {
				if e.HasReport && e.LoadStream == "connected" {
					n++
				}
			}
			return n == 2
		})
		t.Logf("endpoints: %+v", last)
	})
}

// clientTLSWithCert is clientTLS trusting p's CA with the certificate of
// other files (of another CA, say).
func (p *testPKI) clientTLSWithCert(t *testing.T, files tlstest.Files) credentials.TransportCredentials {
	return p.clientTLS(t, &files)
}

// endpointLoad is the part of an endpoint in /status.json these tests read.
type endpointLoad struct {
	Address    string  `json:"address"`
	HasReport  bool    `json:"has_report"`
	LoadStream string  `json:"load_stream"`
	LoadWeight float64 `json:"load_weight"`
}

// endpointLoads reads the endpoints of svc from the admin listener's
// /status.json.
func endpointLoads(t *testing.T, admin, svc string) []endpointLoad {
	t.Helper()
	resp, err := http.Get(admin + "status.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Services []struct {
			Service   string         `json:"service"`
			Endpoints []endpointLoad `json:"endpoints"`
		} `json:"services"`
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("/status.json: %v\n%s", err, body)
	}
	for _, s := range st.Services {
		if s.Service == svc {
			return s.Endpoints
		}
	}
	t.Logf("/status.json has no service %s:\n%s", svc, body)
	return nil
}

// freshClients dials a new grpclb client every `every`, makes one call
// and closes it, until finished or limit.
type freshClients struct {
	mu    sync.Mutex
	errs  []error // guarded by mu
	n     int     // guarded by mu
	stop  chan struct{}
	done  chan struct{}
	close sync.Once
}

func startFreshClients(t *testing.T, svc, lbAddr string, creds credentials.TransportCredentials, every, limit time.Duration) *freshClients {
	f := &freshClients{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		end := time.After(limit)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-f.stop:
				return
			case <-end:
				return
			case <-tick.C:
			}
			err := func() error {
				cc, _, err := lbdial.Dial(lbdial.Options{Target: svc + ":50051", Balancers: []string{lbAddr},
					DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(creds)}})
				if err != nil {
					return err
				}
				defer cc.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, err = call(ctx, userpb.NewUserClient(cc))
				return err
			}()
			f.mu.Lock()
			f.n++
			if err != nil {
				f.errs = append(f.errs, fmt.Errorf("new client %d: %w", i, err))
			}
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() { f.finish() })
	return f
}

// finish stops the loop and returns the clients made and their failures.
func (f *freshClients) finish() (int, error) {
	f.close.Do(func() { close(f.stop) })
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n, joinErrs(f.errs)
}

func joinErrs(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%d failures, first: %w", len(errs), errs[0])
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
