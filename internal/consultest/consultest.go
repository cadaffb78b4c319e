package consultest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Version is the Consul release that scripts/consul.sh builds and that the
// tests run.
const Version = "v1.13.9"

// EnvBinary names the environment variable that, when set, gives the path of
// the consul binary to run.
const EnvBinary = "LOOKASIDE_CONSUL"

// EnvCache names the environment variable that moves the build cache of
// scripts/consul.sh away from $HOME/.cache/lookaside.
const EnvCache = "LOOKASIDE_CACHE"

const (
	// defaultStartTimeout bounds the wait for a leader and for the node's
	// catalog entry.
	defaultStartTimeout = 60 * time.Second
	// stopTimeout is how long Stop waits after SIGINT before it kills.
	stopTimeout = 10 * time.Second
	// startAttempts bounds the retries when a port picked as free was
	// taken before the agent bound it.
	startAttempts = 3
	// pollInterval paces the readiness checks.
	pollInterval = 100 * time.Millisecond
	// tailLines is how much of the agent's log an error message carries.
	tailLines = 40
)

// Binary returns the path of the consul binary to run: $LOOKASIDE_CONSUL if
// set, else the binary scripts/consul.sh leaves in its cache, else consul on
// PATH. It does not check the binary's version.
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("consultest: $%s: %w", EnvBinary, err)
		}
		return p, nil
	}
	if p, err := cachePath(); err == nil {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("consultest: no consul binary (not in $%s, the cache of scripts/consul.sh, or PATH): run scripts/consul.sh (or make consul)", EnvBinary)
}

// cachePath mirrors the cache location of scripts/consul.sh.
func cachePath() (string, error) {
	dir := os.Getenv(EnvCache)
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(home, ".cache", "lookaside")
	}
	return filepath.Join(dir, "consul-"+Version, "consul"), nil
}

// Options configures Run. The zero value is ready to use.
type Options struct {
	// Binary is the consul executable; "" means the result of Binary().
	Binary string
	// NodeName names the agent's node; "" picks a unique name.
	NodeName string
	// Dir receives the agent's configuration file and log. "" means a new
	// temporary directory, which Stop removes.
	Dir string
	// StartTimeout bounds the wait until the agent has a leader and its
	// node is in the catalog; 0 means 60 s. The context given to Run can
	// only shorten it. Restart uses it too.
	StartTimeout time.Duration
	// Persistent runs a single server that keeps its state on disk
	// (-server -bootstrap-expect 1, data in Dir/data) instead of a dev
	// agent, so that registrations and ACL tokens survive Kill and
	// Restart. Its Raft timing is the fastest Consul allows
	// (raft_multiplier 1), so a restarted server leads again in about a
	// second. Default: false (a dev agent, state in memory).
	Persistent bool
	// ACL turns ACLs on with default_policy "deny". The agent gets a
	// management token (ManagementToken), which Client uses and which the
	// agent also uses for its own node; every other request needs a token
	// (NewToken). Default: false (no ACLs).
	ACL bool
}

// Agent is a running Consul agent listening on loopback only: by default in
// development mode (a single server that is its own leader, in-memory
// state), or as a persistent single server (Options.Persistent) that can be
// killed and restarted on the same ports and data.
//
// Its methods are safe for concurrent use.
type Agent struct {
	// Read-only after Run returns.
	nodeName   string
	httpAddr   string
	dnsAddr    string
	dir        string
	removeDir  bool
	logPath    string
	binary     string
	confPath   string
	persistent bool
	token      string // management token; "" without ACLs
	timeout    time.Duration
	client     *api.Client

	mu   sync.Mutex
	proc *proc // guarded by mu: the process running now, or the last one
	// stopped is set (under mu) by Stop, after which Restart fails.
	stopped bool

	stopOnce sync.Once
	stopErr  error // written inside stopOnce
}

// proc is one run of the agent's process.
type proc struct {
	cmd     *exec.Cmd
	logFile *os.File
	exited  chan struct{} // closed when the process has been reaped
	waitErr error         // written before exited is closed
	killed  bool          // guarded by Agent.mu: Kill ended it
}

// ports are the agent's listening ports, all on 127.0.0.1.
type ports struct {
	http, dns, grpc, serfLAN, serfWAN, server int
}

// Start runs an agent for the test and stops it when the test and its
// subtests have finished. It fails the test (it does not skip it) when no
// consul binary is found or the agent does not come up in 60 s; the error
// carries the end of the agent's log. When the test has failed, the end of
// the log is logged at cleanup as well.
//
// Tests that check for leaked goroutines with a deferred call must stop the
// agent first (Stop may be called twice), since cleanups run after deferred
// calls; goleak.VerifyTestMain needs no care.
func Start(tb testing.TB) *Agent {
	tb.Helper()
	return StartWith(tb, Options{})
}

// StartWith is Start with options: opts.Binary "" means Binary(), opts.Dir
// "" means a directory of tb.TempDir().
func StartWith(tb testing.TB, opts Options) *Agent {
	tb.Helper()
	if opts.Binary == "" {
		bin, err := Binary()
		if err != nil {
			tb.Fatalf("%v", err)
		}
		opts.Binary = bin
	}
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	a, err := Run(context.Background(), opts)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("consultest: end of the log of agent %s:\n%s", a.nodeName, a.LogTail(tailLines))
		}
		if err := a.Stop(); err != nil {
			tb.Logf("%v", err)
		}
	})
	return a
}

// Run starts an agent and blocks until it has elected itself leader and
// registered its node in the catalog, or until ctx is done or
// opts.StartTimeout has passed. ctx bounds the start only: the agent then
// runs until Stop, which the caller must call. On error nothing is left
// running.
func Run(ctx context.Context, opts Options) (*Agent, error) {
	if opts.Binary == "" {
		bin, err := Binary()
		if err != nil {
			return nil, err
		}
		opts.Binary = bin
	}
	if opts.NodeName == "" {
		opts.NodeName = "lookaside-" + randomHex(4)
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = defaultStartTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()

	removeDir := false
	if opts.Dir == "" {
		dir, err := os.MkdirTemp("", "consultest-")
		if err != nil {
			return nil, fmt.Errorf("consultest: %w", err)
		}
		opts.Dir, removeDir = dir, true
	}

	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		a, err := start(ctx, opts, attempt)
		if err == nil {
			a.removeDir = removeDir
			return a, nil
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) || ctx.Err() != nil {
			break
		}
	}
	if removeDir {
		os.RemoveAll(opts.Dir)
	}
	return nil, lastErr
}

// errPortTaken marks a start that failed because a port picked as free was
// taken by someone else before the agent bound it.
var errPortTaken = errors.New("port taken")

// start makes one attempt at starting the agent.
func start(ctx context.Context, opts Options, attempt int) (*Agent, error) {
	p, err := pickPorts()
	if err != nil {
		return nil, fmt.Errorf("consultest: picking ports: %w", err)
	}
	a := &Agent{
		nodeName:   opts.NodeName,
		httpAddr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(p.http)),
		dnsAddr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(p.dns)),
		dir:        opts.Dir,
		logPath:    filepath.Join(opts.Dir, fmt.Sprintf("agent-%d.log", attempt)),
		binary:     opts.Binary,
		confPath:   filepath.Join(opts.Dir, fmt.Sprintf("agent-%d.hcl", attempt)),
		persistent: opts.Persistent,
		timeout:    opts.StartTimeout,
	}
	if opts.ACL {
		a.token = newUUID()
	}
	conf := agentConfig(opts.NodeName, p)
	if opts.Persistent {
		conf += persistentConfig(filepath.Join(opts.Dir, fmt.Sprintf("data-%d", attempt)))
	}
	if opts.ACL {
		conf += aclConfig(a.token)
	}
	if err := os.WriteFile(a.confPath, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("consultest: %w", err)
	}
	if err := a.spawn(); err != nil {
		return nil, err
	}

	// The client keeps no idle connections, so that it leaves no
	// goroutines behind between calls, and ignores the TLS, token and
	// address settings of the environment.
	a.client, err = api.NewClient(&api.Config{
		Address:    a.httpAddr,
		Scheme:     "http",
		Token:      a.token,
		HttpClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
	})
	if err == nil {
		err = a.waitReady(ctx)
	}
	if err != nil {
		a.Stop()
		return nil, err
	}
	return a, nil
}

// spawn starts the agent's process with its configuration file, appending
// to its log, and makes it the current process. It does not wait for the
// agent to be ready.
func (a *Agent) spawn() error {
	logFile, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("consultest: %w", err)
	}
	args := []string{"agent", "-config-file=" + a.confPath}
	if !a.persistent {
		args = []string{"agent", "-dev", "-config-file=" + a.confPath}
	}
	cmd := exec.Command(a.binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("consultest: starting %s: %w", a.binary, err)
	}
	p := &proc{cmd: cmd, logFile: logFile, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	a.mu.Lock()
	a.proc = p
	a.mu.Unlock()
	return nil
}

// current returns the process running now, or the last one.
func (a *Agent) current() *proc {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.proc
}

// Kill ends the agent's process with SIGKILL, as a crash would, and blocks
// until it is gone. A persistent agent keeps its data for Restart. It fails
// if the process is not running (killed or stopped before, or exited on its
// own). Safe for concurrent use with the other methods.
func (a *Agent) Kill() error {
	a.mu.Lock()
	p := a.proc
	if a.stopped {
		a.mu.Unlock()
		return fmt.Errorf("consultest: Kill of agent %s after Stop", a.nodeName)
	}
	select {
	case <-p.exited:
		a.mu.Unlock()
		return fmt.Errorf("consultest: Kill of agent %s, which is not running (%v)", a.nodeName, p.waitErr)
	default:
	}
	p.killed = true
	a.mu.Unlock()
	if err := p.cmd.Process.Kill(); err != nil {
		return fmt.Errorf("consultest: killing agent %s: %w", a.nodeName, err)
	}
	<-p.exited
	p.logFile.Close()
	return nil
}

// Restart starts a persistent agent again, after Kill or after it exited on
// its own, on the same ports, node name and data, and blocks until it has a
// leader and its node is in the catalog, ctx is done, or
// Options.StartTimeout has passed. The registrations made before are kept
// (but the agent's own checks restart as critical until they first run).
// It fails for a dev agent, after Stop, and while the process still runs.
// Safe for concurrent use with the other methods, but not with itself.
func (a *Agent) Restart(ctx context.Context) error {
	if !a.persistent {
		return fmt.Errorf("consultest: Restart of agent %s, which is not persistent", a.nodeName)
	}
	a.mu.Lock()
	p, stopped := a.proc, a.stopped
	a.mu.Unlock()
	if stopped {
		return fmt.Errorf("consultest: Restart of agent %s after Stop", a.nodeName)
	}
	select {
	case <-p.exited:
	default:
		return fmt.Errorf("consultest: Restart of agent %s, which is still running", a.nodeName)
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	if err := a.spawn(); err != nil {
		return err
	}
	return a.waitReady(ctx)
}

// Running reports whether the agent's process is running now.
func (a *Agent) Running() bool {
	select {
	case <-a.current().exited:
		return false
	default:
		return true
	}
}

// waitReady blocks until the agent has a leader and its node is in the
// catalog, the process exits, or ctx is done.
func (a *Agent) waitReady(ctx context.Context) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last error
	for {
		if last = a.ready(ctx); last == nil {
			return nil
		}
		p := a.current()
		select {
		case <-p.exited:
			tail := a.LogTail(tailLines)
			err := fmt.Errorf("consultest: agent exited before it was ready (%v); end of its log:\n%s", p.waitErr, tail)
			if strings.Contains(tail, "address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		case <-ctx.Done():
			return fmt.Errorf("consultest: agent not ready: %w (last check: %v); end of its log:\n%s", ctx.Err(), last, a.LogTail(tailLines))
		case <-tick.C:
		}
	}
}

// ready reports whether the agent has a leader and its node in the catalog.
func (a *Agent) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	leader, err := a.client.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	node, _, err := a.client.Catalog().Node(a.nodeName, q)
	if err != nil {
		return err
	}
	if node == nil || node.Node == nil {
		return fmt.Errorf("node %s not in the catalog yet", a.nodeName)
	}
	return nil
}

// Stop interrupts the agent, waits up to 10 s for it to exit, then kills it,
// closes its log and removes the directory Run created. It blocks until the
// process is gone. It is safe to call more than once and from several
// goroutines; later calls return the first call's result. The error says
// whether the agent had to be killed or had exited on its own before (an
// agent ended by Kill and not restarted is no error).
func (a *Agent) Stop() error {
	a.stopOnce.Do(func() { a.stopErr = a.stop() })
	return a.stopErr
}

func (a *Agent) stop() error {
	a.mu.Lock()
	a.stopped = true
	p, killed := a.proc, a.proc.killed
	a.mu.Unlock()
	var err error
	select {
	case <-p.exited:
		if !killed {
			err = fmt.Errorf("consultest: agent %s had exited before Stop: %v", a.nodeName, p.waitErr)
		}
	default:
		_ = p.cmd.Process.Signal(os.Interrupt)
		t := time.NewTimer(stopTimeout)
		select {
		case <-p.exited:
		case <-t.C:
			_ = p.cmd.Process.Kill()
			<-p.exited
			err = fmt.Errorf("consultest: agent %s did not stop within %v of SIGINT; killed it", a.nodeName, stopTimeout)
		}
		t.Stop()
	}
	p.logFile.Close()
	if a.removeDir {
		os.RemoveAll(a.dir)
	}
	return err
}

// HTTPAddr returns the host:port of the agent's HTTP API, "127.0.0.1:port".
func (a *Agent) HTTPAddr() string { return a.httpAddr }

// DNSAddr returns the host:port of the agent's DNS interface (UDP and TCP).
func (a *Agent) DNSAddr() string { return a.dnsAddr }

// NodeName returns the name of the agent's node.
func (a *Agent) NodeName() string { return a.nodeName }

// Client returns an API client for the agent. It holds no idle connections
// and, with ACLs on, carries the management token.
func (a *Agent) Client() *api.Client { return a.client }

// ManagementToken returns the ACL management token, or "" when ACLs are off.
// Never log it outside tests.
func (a *Agent) ManagementToken() string { return a.token }

// NewToken creates an ACL token for rules (Consul's ACL rule language, for
// example `service_prefix "" { policy = "read" }`), through a new policy
// holding them, and returns the token's secret. Empty rules give a token
// with no policy, which only has what the default policy allows. It blocks
// for one or two requests to the agent, bounded by ctx. It fails when ACLs
// are off.
func (a *Agent) NewToken(ctx context.Context, rules string) (string, error) {
	if a.token == "" {
		return "", fmt.Errorf("consultest: NewToken on agent %s, which has no ACLs", a.nodeName)
	}
	q := (&api.WriteOptions{}).WithContext(ctx)
	// The token goes through Raw: the api module is newer than the agent
	// and sends token fields that Consul 1.13 rejects.
	tok := map[string]any{"Description": "consultest"}
	if rules != "" {
		pol, _, err := a.client.ACL().PolicyCreate(&api.ACLPolicy{
			Name:  "consultest-" + randomHex(6),
			Rules: rules,
		}, q)
		if err != nil {
			return "", fmt.Errorf("consultest: creating a policy: %w", err)
		}
		tok["Policies"] = []map[string]string{{"ID": pol.ID}}
	}
	var created struct{ SecretID string }
	if _, err := a.client.Raw().Write("/v1/acl/token", tok, &created, q); err != nil {
		return "", fmt.Errorf("consultest: creating a token: %w", err)
	}
	if created.SecretID == "" {
		return "", errors.New("consultest: creating a token: no SecretID in the answer")
	}
	return created.SecretID, nil
}

// LogTail returns up to the last n lines of the agent's log. It does not
// block on the agent.
func (a *Agent) LogTail(n int) string {
	f, err := os.Open(a.logPath)
	if err != nil {
		return fmt.Sprintf("(log unavailable: %v)", err)
	}
	defer f.Close()
	const maxTail = 64 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > maxTail {
		if _, err := f.Seek(-maxTail, io.SeekEnd); err != nil {
			return fmt.Sprintf("(log unavailable: %v)", err)
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(log unavailable: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// agentConfig returns the HCL configuration of an agent.
func agentConfig(node string, p ports) string {
	return fmt.Sprintf(`node_name = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
advertise_addr_wan = "127.0.0.1"
disable_update_check = true
log_level = "info"
ports {
  http = %d
  https = -1
  dns = %d
  grpc = %d
  serf_lan = %d
  serf_wan = %d
  server = %d
}
`, node, p.http, p.dns, p.grpc, p.serfLAN, p.serfWAN, p.server)
}

// pickPorts returns distinct ports that are free on 127.0.0.1 for TCP and,
// for the ports the agent also uses over UDP (DNS, Serf), for UDP too. The
// ports are released before it returns, so another process may take one
// before the agent binds it; Run then tries again.
func pickPorts() (ports, error) {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	pick := func(udp bool) (int, error) {
		for range 20 {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return 0, err
			}
			closers = append(closers, l)
			port := l.Addr().(*net.TCPAddr).Port
			if !udp {
				return port, nil
			}
			u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				continue
			}
			closers = append(closers, u)
			return port, nil
		}
		return 0, errors.New("no port free for both TCP and UDP")
	}
	var p ports
	var err error
	for _, f := range []struct {
		dst *int
		udp bool
	}{
		{&p.http, false}, {&p.dns, true}, {&p.grpc, false},
		{&p.serfLAN, true}, {&p.serfWAN, true}, {&p.server, false},
	} {
		if *f.dst, err = pick(f.udp); err != nil {
			return ports{}, err
		}
	}
	return p, nil
}

// persistentConfig is the part of the configuration that makes a single
// server keep its state in dataDir.
func persistentConfig(dataDir string) string {
	return fmt.Sprintf(`server = true
bootstrap_expect = 1
data_dir = %q
performance {
  raft_multiplier = 1
}
`, dataDir)
}

// aclConfig turns ACLs on with default deny and token as both the initial
// management token and the agent's own token.
func aclConfig(token string) string {
	return fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  down_policy = "extend-cache"
  tokens {
    initial_management = %q
    agent = %q
  }
}
`, token, token)
}

// newUUID returns a random UUID, the form Consul wants for token secrets.
func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
