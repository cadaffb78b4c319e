package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/lookaside-lb/lookaside/internal/syncbuf"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
)

func TestTLSFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-no-consul", "-tls-cert", "c.pem", "-tls-key", "k.pem", "-tls-client-ca", "ca.pem",
		"-tls-poll-interval", "2s", "-tls-health-without-client-cert", "-consul-check-tls-verify",
		"-consul-check-tls-server-name", "user-srv"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TLS.CertFile != "c.pem" || cfg.TLS.KeyFile != "k.pem" || cfg.TLS.CAFile != "ca.pem" ||
		cfg.TLS.PollInterval != 2*time.Second || !cfg.HealthWithoutClientCert || !cfg.CheckTLSVerify ||
		cfg.CheckTLSServerName != "user-srv" {
		t.Errorf("TLS flags parsed to %+v, health %v, check verify %v %q", cfg.TLS, cfg.HealthWithoutClientCert, cfg.CheckTLSVerify, cfg.CheckTLSServerName)
	}
	var stderr strings.Builder
	if code := run([]string{"-no-consul", "-tls-cert", "/nonexistent/c.pem", "-tls-key", "k.pem"}, io.Discard, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "/nonexistent/c.pem") {
		t.Errorf("missing certificate file: exit %d, stderr %q; want 1 and the file", code, stderr.String())
	}
}

// TestCommandTLSReloadsOnSIGHUP runs the command with TLS and a poll
// interval of an hour: a rewritten certificate is served after SIGHUP, and
// a broken one sent with SIGHUP is refused and logged, the good one kept.
func TestCommandTLSReloadsOnSIGHUP(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "backend")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ca := tlstest.NewCA(t, "ca")
	first := ca.Issue(t, tlstest.Options{CommonName: "first", Names: []string{"user-srv"}})
	second := ca.Issue(t, tlstest.Options{CommonName: "second", Names: []string{"user-srv"}})
	files := tlstest.WriteFiles(t, dir, first, ca.PEM)

	cmd := exec.CommandContext(ctx, bin, "-no-consul", "-tls-cert", files.Cert, "-tls-key", files.Key,
		"-tls-poll-interval", "1h", "-drain-delay", "0")
	var logs syncbuf.Buffer
	cmd.Stderr = &logs
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		exited <- cmd.Wait()
	}()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	var addr string
	select {
	case line := <-lines:
		m := readyLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("first stdout line %q, want %q", line, readyLine)
		}
		addr = m[2]
	case err := <-exited:
		exited <- err
		t.Fatalf("backend exited before it was ready: %v\n%s", err, logs.String())
	case <-ctx.Done():
		t.Fatalf("no ready line\n%s", logs.String())
	}

	store, err := tlsfiles.New(tlsfiles.Config{CAFile: files.CA, ServerName: "user-srv", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	creds := store.ClientCredentials()
	if got := servedCert(t, addr, creds); got.Subject.CommonName != "first" {
		t.Fatalf("serving %q, want first", got.Subject.CommonName)
	}
	hup := func(wantLog string) {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(logs.String(), wantLog) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log after SIGHUP:\n%s", wantLog, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	tlstest.WriteFiles(t, dir, second)
	if got := servedCert(t, addr, creds); got.Subject.CommonName != "first" {
		t.Fatalf("serving %q before SIGHUP (poll interval 1h), want first", got.Subject.CommonName)
	}
	hup("SIGHUP: TLS files read again")
	if got := servedCert(t, addr, creds); got.Subject.CommonName != "second" {
		t.Fatalf("serving %q after SIGHUP, want second", got.Subject.CommonName)
	}

	tlstest.WriteAtomic(t, files.Key, []byte("not a key"))
	hup("TLS files not reloaded")
	if !strings.Contains(logs.String(), files.Key) {
		t.Errorf("the error does not name %s:\n%s", files.Key, logs.String())
	}
	if got := servedCert(t, addr, creds); got.Subject.CommonName != "second" {
		t.Fatalf("serving %q after a bad key, want second still", got.Subject.CommonName)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("still running 15s after SIGTERM\n%s", logs.String())
	}
}

// servedCert returns the certificate a new connection to addr gets.
func servedCert(t *testing.T, addr string, creds credentials.TransportCredentials) *x509.Certificate {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0]
}
