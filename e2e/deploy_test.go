package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/internal/consultest"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
)

// deployDir holds the deployment examples that docs/deploy.md describes.
const deployDir = "../examples/deploy"

// TestDeployACLPolicy checks the deployment examples against a real Consul
// that denies by default: a backend registered from
// examples/deploy/backend-service.json (its address, port and ID replaced
// by a running backend's, with `consul services register`, the command the
// docs show) passes its gRPC check; the lbserver binary, given a token of
// the policy in examples/deploy/lookaside-acl.hcl and nothing else, and
// run as the systemd unit runs it (-validate, then -config), becomes
// ready, serves lists that a grpclb client calls the backend with (the
// backend requires lb-tokens, so the ID in the definition must be the
// backend's), registers itself as "lookaside", and deregisters on
// SIGTERM, with no ERROR logged. A token without the policy's node read sees no
// instance, which is why the policy has it.
func TestDeployACLPolicy(t *testing.T) {
	t.Parallel()
	ca := consultest.StartWith(t, consultest.Options{ACL: true})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	svc := serviceName(t)

	// The backend, registered from the example service definition.
	b := startBackend(t, svc, func(c *backend.Config) {
		c.Consul = nil
		c.RequireLBToken = true
	})
	def := deployServiceDefinition(t, svc, b)
	bin, err := consultest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	reg := exec.CommandContext(ctx, bin, "services", "register", "-http-addr="+ca.HTTPAddr(), def)
	reg.Env = append(withoutConsulEnv(), "CONSUL_HTTP_TOKEN="+ca.ManagementToken())
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("consul services register %s: %v\n%s", def, err, out)
	}
	waitFor(t, 20*time.Second, b.ID()+" passing its gRPC check", func() bool {
		entries, _, err := ca.Client().Health().Service(svc, "", true, nil)
		return err == nil && len(entries) == 1 && entries[0].Service.ID == b.ID()
	})

	// The policy, from the file, and a token for it.
	rules, err := os.ReadFile(filepath.Join(deployDir, "lookaside-acl.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	token, err := ca.NewToken(ctx, string(rules))
	if err != nil {
		t.Fatalf("creating the policy of lookaside-acl.hcl: %v", err)
	}
	tokenFile := filepath.Join(t.TempDir(), "consul-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Why node read: a token with service read only sees no instance.
	serviceOnly, err := ca.NewToken(ctx, `service_prefix "" { policy = "read" }`)
	if err != nil {
		t.Fatal(err)
	}
	if n := passingWithToken(t, ca, serviceOnly, svc); n != 0 {
		t.Errorf("a token with service read only sees %d passing instances of %s, want 0 (the policy would not need node read)", n, svc)
	}
	if n := passingWithToken(t, ca, token, svc); n != 1 {
		t.Errorf("a token of lookaside-acl.hcl sees %d passing instances of %s, want 1", n, svc)
	}

	// The replica as the unit runs it: a config file, checked first.
	lbBin, _ := buildCmdsWith(t) // without -race: this checks permissions, not timing
	conf := filepath.Join(t.TempDir(), "lookaside.yaml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`listen: 127.0.0.1:0
shutdown_timeout: 5s
consul:
  address: %s
  token_file: %s
register:
  enabled: true
  check_interval: 1s
  drain_delay: 100ms
balancer:
  client_stats_interval: 1s
`, ca.HTTPAddr(), tokenFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, lbBin, "-validate", "-config", conf).CombinedOutput(); err != nil {
		t.Fatalf("lbserver -validate -config: %v\n%s", err, out)
	}
	p := startProcessEnv(t, withoutConsulEnv(), lbBin, "-config", conf)

	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{p.addr}})
	waitSeen(t, c, b)
	waitFor(t, 20*time.Second, "the replica registered as lookaside and passing", func() bool {
		entries, _, err := ca.Client().Health().Service("lookaside", "", true, nil)
		return err == nil && len(entries) == 1
	})

	p.terminate(t, 10*time.Second)
	entries, _, err := ca.Client().Health().Service("lookaside", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("%d lookaside instances in Consul after SIGTERM, want 0: deregistration failed\n%s", len(entries), p.logs())
	}
	if logs := p.logs(); strings.Contains(logs, "level=ERROR") {
		t.Errorf("ERROR logged with the token of lookaside-acl.hcl:\n%s", logs)
	}
}

// deployServiceDefinition writes a copy of examples/deploy/backend-service.json
// that registers b as an instance of service, and returns its path. Only the
// name, the ID and the addresses change; every other field (meta, weights,
// the check's settings) is the example's.
func deployServiceDefinition(t *testing.T, service string, b *runningBackend) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(deployDir, "backend-service.json"))
	if err != nil {
		t.Fatal(err)
	}
	var def struct {
		Service map[string]any `json:"service"`
	}
	if err := json.Unmarshal(data, &def); err != nil {
		t.Fatalf("backend-service.json: %v", err)
	}
	check, ok := def.Service["check"].(map[string]any)
	if !ok {
		t.Fatalf("backend-service.json has no check: %s", data)
	}
	host, port, err := net.SplitHostPort(b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	def.Service["name"] = service
	def.Service["id"] = b.ID()
	def.Service["address"] = host
	def.Service["port"] = n
	check["id"] = b.ID() + ":grpc-health"
	check["grpc"] = b.Addr()
	out, err := json.Marshal(def)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "backend-service.json")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// passingWithToken returns how many passing instances of service a client
// with token sees.
func passingWithToken(t *testing.T, ca *consultest.Agent, token, service string) int {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = ca.HTTPAddr()
	cfg.Token = token
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	entries, _, err := c.Health().Service(service, "", true, (&api.QueryOptions{}).WithContext(t.Context()))
	if err != nil {
		t.Fatalf("health of %s with a token: %v", service, err)
	}
	return len(entries)
}

// TestDeployAlertMetrics checks that every metric the alert rules of
// examples/deploy/lookaside-alerts.yml name is served at /metrics by a
// replica run from a config file, after the traffic each one counts: a
// grpclb client calling two backends (the second joins while it streams),
// a stream for a service Consul does not list, and DNS questions. A rule
// naming a metric that does not exist would never fire, and promtool
// cannot tell.
func TestDeployAlertMetrics(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	rules, err := os.ReadFile(filepath.Join(deployDir, "lookaside-alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range regexp.MustCompile(`\b(?:lookaside|process)_[a-z_]+`).FindAllString(string(rules), -1) {
		n = strings.TrimSuffix(n, "_bucket")
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if len(names) < 10 {
		t.Fatalf("found only %d metric names in lookaside-alerts.yml: %q", len(names), names)
	}

	first := startBackend(t, svc, nil)
	waitPassing(t, svc, 1)
	lbBin, _ := buildCmdsWith(t)                        // without -race: this checks names, not timing
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // not printed: chosen here
	conf := filepath.Join(t.TempDir(), "lookaside.yaml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`listen: 127.0.0.1:0
shutdown_timeout: 5s
consul:
  address: %s
admin:
  listen: 127.0.0.1:0
dns:
  listen: %s
  balancers: [127.0.0.1:7000]
balancer:
  client_stats_interval: 1s
`, agent.HTTPAddr(), dnsAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProcessEnv(t, withoutConsulEnv(), lbBin, "-config", conf)
	admin := strings.TrimSuffix(p.waitLine(t, "lbserver admin on ", 10*time.Second), "/") // http://host:port

	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{p.addr}})
	waitSeen(t, c, first)
	second := startBackend(t, svc, nil)
	waitSeen(t, c, first, second)
	if got := firstAnswerKind(t, p.addr, "no-such-"+svc); got != "fallback" {
		t.Errorf("first answer for a service Consul does not list: %s, want fallback", got)
	}
	for _, q := range []string{svc + ".lb.internal.", "_grpclb._tcp." + svc + ".lb.internal."} {
		m := new(dns.Msg)
		m.SetQuestion(q, dns.TypeA)
		if _, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, dnsAddr); err != nil {
			t.Errorf("DNS %s: %v", q, err)
		}
	}

	// ClientStats arrive every second; the rest is there at once.
	var missing []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, err := call(t.Context(), c); err != nil {
			t.Fatalf("call through the balancer: %v", err)
		}
		body := scrapeText(t, admin+"/metrics")
		missing = missing[:0]
		for _, n := range names {
			if !regexp.MustCompile(`(?m)^` + n + `(_bucket)?[{ ]`).MatchString(body) {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(missing) > 0 {
		t.Errorf("metrics named in lookaside-alerts.yml but not served at /metrics: %q", missing)
	} else {
		t.Logf("the %d metrics the alert rules name are served: %q", len(names), names)
	}
}

// scrapeText returns the body of a GET of url, failing the test on an
// error or a status other than 200.
func scrapeText(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v\n%.500s", url, resp.Status, err, body)
	}
	return string(body)
}
