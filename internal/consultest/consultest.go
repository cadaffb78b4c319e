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
	// only shorten it.
	StartTimeout time.Duration
}

// Agent is a running Consul agent in development mode (a single server that
// is its own leader, in-memory state), listening on loopback only.
//
// Its methods are safe for concurrent use.
type Agent struct {
	// Read-only after Run returns.
	nodeName  string
	httpAddr  string
	dnsAddr   string
	dir       string
	removeDir bool
	logPath   string
	logFile   *os.File
	cmd       *exec.Cmd
	client    *api.Client
	exited    chan struct{} // closed when the process has been reaped
	waitErr   error         // written before exited is closed

	stopOnce sync.Once
	stopErr  error // written inside stopOnce
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
	bin, err := Binary()
	if err != nil {
		tb.Fatalf("%v", err)
	}
	a, err := Run(context.Background(), Options{Binary: bin, Dir: tb.TempDir()})
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
	confPath := filepath.Join(opts.Dir, fmt.Sprintf("agent-%d.hcl", attempt))
	if err := os.WriteFile(confPath, []byte(agentConfig(opts.NodeName, p)), 0o600); err != nil {
		return nil, fmt.Errorf("consultest: %w", err)
	}
	logPath := filepath.Join(opts.Dir, fmt.Sprintf("agent-%d.log", attempt))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("consultest: %w", err)
	}

	cmd := exec.Command(opts.Binary, "agent", "-dev", "-config-file="+confPath)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("consultest: starting %s: %w", opts.Binary, err)
	}

	a := &Agent{
		nodeName: opts.NodeName,
		httpAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p.http)),
		dnsAddr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(p.dns)),
		dir:      opts.Dir,
		logPath:  logPath,
		logFile:  logFile,
		cmd:      cmd,
		exited:   make(chan struct{}),
	}
	go func() {
		a.waitErr = cmd.Wait()
		close(a.exited)
	}()

	// The client keeps no idle connections, so that it leaves no
	// goroutines behind between calls, and ignores the TLS and address
	// settings of the environment.
	a.client, err = api.NewClient(&api.Config{
		Address:    a.httpAddr,
		Scheme:     "http",
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
		select {
		case <-a.exited:
			tail := a.LogTail(tailLines)
			err := fmt.Errorf("consultest: agent exited before it was ready (%v); end of its log:\n%s", a.waitErr, tail)
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
// whether the agent had to be killed or had exited on its own before.
func (a *Agent) Stop() error {
	a.stopOnce.Do(func() { a.stopErr = a.stop() })
	return a.stopErr
}

func (a *Agent) stop() error {
	var err error
	select {
	case <-a.exited:
		err = fmt.Errorf("consultest: agent %s had exited before Stop: %v", a.nodeName, a.waitErr)
	default:
		_ = a.cmd.Process.Signal(os.Interrupt)
		t := time.NewTimer(stopTimeout)
		select {
		case <-a.exited:
		case <-t.C:
			_ = a.cmd.Process.Kill()
			<-a.exited
			err = fmt.Errorf("consultest: agent %s did not stop within %v of SIGINT; killed it", a.nodeName, stopTimeout)
		}
		t.Stop()
	}
	a.logFile.Close()
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

// Client returns an API client for the agent. It holds no idle connections.
func (a *Agent) Client() *api.Client { return a.client }

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

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
