package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/internal/consultest"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
)

// tlsAgent is a Consul dev agent serving its HTTP API over HTTPS (and,
// for readiness, plain HTTP) on loopback, requiring client certificates.
type tlsAgent struct {
	httpsAddr string
	ca        *tlstest.CA
	dir       string
}

// freePorts returns n ports free on 127.0.0.1 a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var liss []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		liss = append(liss, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range liss {
		l.Close()
	}
	return ports
}

// startTLSAgent runs a dev agent whose HTTPS port presents a certificate
// for "server.dc1.consul" and "localhost" (not its IP) signed by a CA of
// the test, and requires client certificates signed by it.
func startTLSAgent(t *testing.T) *tlsAgent {
	t.Helper()
	bin, err := consultest.Binary()
	if err != nil {
		t.Skipf("no consul binary: %v", err)
	}
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "consul CA")
	srv := ca.Issue(t, tlstest.Options{CommonName: "server.dc1.consul", Names: []string{"server.dc1.consul", "localhost"}})
	f := tlstest.WriteFiles(t, dir, srv, ca.PEM)
	p := freePorts(t, 6)
	conf := map[string]any{
		"node_name": "tls-test", "bind_addr": "127.0.0.1", "client_addr": "127.0.0.1",
		"advertise_addr": "127.0.0.1", "disable_update_check": true, "log_level": "warn",
		"ports": map[string]int{"http": p[0], "https": p[1], "dns": -1, "grpc": -1, "serf_lan": p[2], "serf_wan": p[3], "server": p[4]},
		"tls": map[string]any{
			"defaults": map[string]any{"ca_file": f.CA, "cert_file": f.Cert, "key_file": f.Key},
			"https":    map[string]any{"verify_incoming": true},
		},
	}
	b, _ := json.Marshal(conf)
	confPath := filepath.Join(dir, "agent.json")
	if err := os.WriteFile(confPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "agent", "-dev", "-config-file="+confPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("agent log:\n%s", out)
		}
	})
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/status/leader", p[0]))
		if err == nil {
			var leader string
			json.NewDecoder(resp.Body).Decode(&leader)
			resp.Body.Close()
			if leader != "" {
				break
			}
		}
		select {
		case <-exited:
			t.Fatal("the agent exited before it was ready")
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent has no leader after 60 s")
		}
	}
	return &tlsAgent{httpsAddr: fmt.Sprintf("127.0.0.1:%d", p[1]), ca: ca, dir: dir}
}

// clearConsulEnv empties the CONSUL_* variables that NewClient reads.
func clearConsulEnv(t *testing.T) {
	for _, k := range []string{"CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_SSL",
		"CONSUL_HTTP_SSL_VERIFY", "CONSUL_CACERT", "CONSUL_CAPATH", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY", "CONSUL_TLS_SERVER_NAME"} {
		t.Setenv(k, "")
	}
}

// TestNewClientTLS talks to a real agent over HTTPS with client
// certificates, configured by ClientConfig fields, by CONSUL_* variables,
// and by both (the fields win).
func TestNewClientTLS(t *testing.T) {
	a := startTLSAgent(t)
	other := tlstest.NewCA(t, "other CA")
	good := tlstest.WriteFiles(t, mkdirT(t, a.dir, "good"), a.ca.Issue(t, tlstest.Options{CommonName: "lookaside"}), a.ca.PEM)
	wrong := tlstest.WriteFiles(t, mkdirT(t, a.dir, "wrong"), other.Issue(t, tlstest.Options{CommonName: "lookaside"}), other.PEM)
	const name = "server.dc1.consul"
	tests := []struct {
		name string
		env  map[string]string
		cfg  ClientConfig
		// wantErr is "" for a leader answered, else a substring of the
		// error; "*" is any error (a refused client certificate shows as
		// a TLS alert or as a connection closed after the handshake).
		wantErr string
	}{
		{"fields", nil, ClientConfig{Address: a.httpsAddr, CAFile: good.CA, CertFile: good.Cert, KeyFile: good.Key, ServerName: name}, ""},
		{"fields, https:// address", nil, ClientConfig{Address: "https://" + a.httpsAddr, CAFile: good.CA, CertFile: good.Cert, KeyFile: good.Key, ServerName: name}, ""},
		{"environment", map[string]string{
			"CONSUL_HTTP_ADDR": a.httpsAddr, "CONSUL_HTTP_SSL": "true", "CONSUL_CACERT": good.CA,
			"CONSUL_CLIENT_CERT": good.Cert, "CONSUL_CLIENT_KEY": good.Key, "CONSUL_TLS_SERVER_NAME": name,
		}, ClientConfig{}, ""},
		{"fields win over the environment", map[string]string{
			"CONSUL_HTTP_ADDR": a.httpsAddr, "CONSUL_HTTP_SSL": "true", "CONSUL_CACERT": wrong.CA,
			"CONSUL_CLIENT_CERT": wrong.Cert, "CONSUL_CLIENT_KEY": wrong.Key, "CONSUL_TLS_SERVER_NAME": "nope",
		}, ClientConfig{CAFile: good.CA, CertFile: good.Cert, KeyFile: good.Key, ServerName: name}, ""},
		{"the environment's wrong CA", map[string]string{
			"CONSUL_HTTP_ADDR": a.httpsAddr, "CONSUL_HTTP_SSL": "true", "CONSUL_CACERT": wrong.CA,
			"CONSUL_CLIENT_CERT": good.Cert, "CONSUL_CLIENT_KEY": good.Key, "CONSUL_TLS_SERVER_NAME": name,
		}, ClientConfig{}, "unknown authority"},
		{"TLS inferred from a CA file", map[string]string{"CONSUL_HTTP_ADDR": a.httpsAddr},
			ClientConfig{CAFile: good.CA, CertFile: good.Cert, KeyFile: good.Key, ServerName: name}, ""},
		{"no client certificate", nil, ClientConfig{Address: a.httpsAddr, CAFile: good.CA, ServerName: name}, "*"},
		{"client certificate of another CA", nil, ClientConfig{Address: a.httpsAddr, CAFile: good.CA, CertFile: wrong.Cert, KeyFile: wrong.Key, ServerName: name}, "*"},
		{"dialed by IP without a server name", nil, ClientConfig{Address: a.httpsAddr, CAFile: good.CA, CertFile: good.Cert, KeyFile: good.Key}, "doesn't contain any IP SANs"},
		{"wrong server name", nil, ClientConfig{Address: a.httpsAddr, CAFile: good.CA, CertFile: good.Cert, KeyFile: good.Key, ServerName: "consul.example"}, "not consul.example"},
		{"insecure skip verify", nil, ClientConfig{Address: a.httpsAddr, CertFile: good.Cert, KeyFile: good.Key, InsecureSkipVerify: true}, ""},
		{"plain HTTP to the HTTPS port", nil, ClientConfig{Address: a.httpsAddr}, "HTTP request to an HTTPS server"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearConsulEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := NewClient(tc.cfg)
			if err != nil {
				t.Fatalf("NewClient: %v", err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			leader, err := API(c).LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
			if tc.wantErr == "" {
				if err != nil || leader == "" {
					t.Fatalf("Leader over HTTPS = %q, %v", leader, err)
				}
				return
			}
			if err == nil || (tc.wantErr != "*" && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Leader = %q, %v; want an error saying %q", leader, err, tc.wantErr)
			}
		})
	}
}

func mkdirT(t *testing.T, parts ...string) string {
	d := filepath.Join(parts...)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestNewClientTLSRejects: contradictory TLS settings are refused by
// NewClient, naming the fields.
func TestNewClientTLSRejects(t *testing.T) {
	clearConsulEnv(t)
	dir := t.TempDir()
	tests := []struct {
		cfg  ClientConfig
		want string
	}{
		{ClientConfig{CertFile: "c.pem"}, "CertFile c.pem has no KeyFile"},
		{ClientConfig{KeyFile: "k.pem"}, "KeyFile k.pem has no CertFile"},
		{ClientConfig{CAFile: "ca.pem", InsecureSkipVerify: true}, "InsecureSkipVerify and a CA file or path are both set"},
		{ClientConfig{Address: "http://127.0.0.1:8501", CAFile: "ca.pem"}, `Address "http://127.0.0.1:8501" is plain HTTP, but TLS settings are given`},
		{ClientConfig{Address: "unix:///tmp/consul.sock", UseTLS: true}, "is a unix socket"},
		{ClientConfig{CAFile: filepath.Join(dir, "missing-ca.pem")}, "missing-ca.pem"},
		{ClientConfig{CertFile: filepath.Join(dir, "missing-cert.pem"), KeyFile: filepath.Join(dir, "k.pem")}, "missing-cert.pem"},
	}
	for _, tc := range tests {
		if _, err := NewClient(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewClient(%+v) = %v, want an error saying %q", tc.cfg, err, tc.want)
		}
	}
}
