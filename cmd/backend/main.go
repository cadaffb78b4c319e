// Command backend runs one instance of the example User service and registers
// it in Consul, for the demo and the end-to-end tests.
//
// When it is ready it prints one line to stdout,
//
//	backend <id> listening on <host:port>
//
// and logs to stderr. SIGINT or SIGTERM make it drain (health NOT_SERVING,
// deregister, wait -drain-delay, graceful stop) and exit 0; a second signal
// kills it. Bad flags exit 2, other failures 1.
//
// With -lb-token-key-file it expects keyed lb-tokens made with the secret in
// that file, which the balancers must share (see package lbtoken).
//
// It reports its load to balancers with ORCA (at least every
// -orca-min-interval, averaged over -load-window). -latency delays every
// call, -call-cpu makes every call spin on the CPU (so that its latency
// grows with the load), and -cpu-burn keeps a share of a core busy, to make
// an instance slow or busy in tests and the demo.
//
// With -tls-cert and -tls-key it serves TLS (User, health and ORCA alike),
// and with -tls-client-ca mutual TLS. The files are read again on SIGHUP
// and when they change (checked every -tls-poll-interval); a bad file
// keeps the certificate in force and is logged. Its Consul check then
// speaks TLS without verifying the certificate (-consul-check-tls-verify
// to verify); under mTLS the agent must present a certificate signed by
// the client CA (enable_agent_tls_for_checks), or
// -tls-health-without-client-cert lets health checks in without one.
// -consul-ca-file, -consul-cert-file, -consul-key-file and
// -consul-tls-server-name reach a Consul agent over HTTPS (the CONSUL_*
// variables work as well; flags win).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hashicorp/consul/api"
	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/internal/logattr"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/lbtoken"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the backend until a signal and returns the exit code. Errors,
// all prefixed "backend:", go to stderr.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		if !errors.As(err, new(reportedError)) {
			fmt.Fprintln(stderr, err)
		}
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first signal, restore the default action so that a
		// second one ends a drain that takes too long.
		<-ctx.Done()
		stop()
	}()

	b, err := backend.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	hupDone := reloadOnSIGHUP(ctx, b, cfg.Logger)
	defer func() { <-hupDone }()
	errc := make(chan error, 1)
	go func() { errc <- b.Serve(ctx) }()
	select {
	case <-b.Ready():
		fmt.Fprintf(stdout, "backend %s listening on %s\n", b.ID(), b.Addr())
	case err := <-errc:
		errc <- err
	}
	if err := <-errc; err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// reloadOnSIGHUP reloads b's TLS files at each SIGHUP until ctx is done;
// the returned channel is closed when it has stopped.
func reloadOnSIGHUP(ctx context.Context, b *backend.Backend, log *slog.Logger) <-chan struct{} {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			switch {
			case b.TLS() == nil:
				log.Info("SIGHUP: no TLS files to reload")
			default:
				if err := b.ReloadTLS(); err != nil {
					log.Error("SIGHUP: TLS files not reloaded; keeping the certificate in force", "err", err)
				} else {
					log.Info("SIGHUP: TLS files read again")
				}
			}
		}
	}()
	return done
}

// parseFlags maps the command line onto a backend.Config. Usage and flag
// errors go to stderr; -h gives flag.ErrHelp.
func parseFlags(args []string, stderr io.Writer) (backend.Config, error) {
	cfg := backend.DefaultConfig()
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: backend [flags]\n\nRuns one instance of the example User service and registers it in Consul.\n\nFlags:\n")
		fs.PrintDefaults()
	}

	var (
		tags, meta, logLevel string
		tokenKeyFile         string
		noConsul             bool
		consulAddr           = api.DefaultConfig().Address
		consulTLS            consul.ClientConfig
	)
	fs.StringVar(&cfg.Service, "service", cfg.Service, "Consul service name")
	fs.StringVar(&cfg.ID, "id", "", "instance ID (Consul service ID); default service-host-port")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "address to listen on; port 0 picks a free port")
	fs.StringVar(&cfg.Advertise, "advertise", "", "host:port to register and report; default the listener's address")
	fs.StringVar(&tags, "tags", "", "comma-separated Consul tags")
	fs.IntVar(&cfg.Weight, "weight", cfg.Weight, "Consul weight while passing")
	fs.StringVar(&meta, "meta", "", "Consul service metadata, as k=v,k=v")
	fs.StringVar(&consulAddr, "consul", consulAddr, `Consul agent HTTP address (default from CONSUL_HTTP_ADDR); "" runs without registering`)
	fs.BoolVar(&noConsul, "no-consul", false, "run without registering in Consul")
	fs.DurationVar(&cfg.CheckInterval, "check-interval", cfg.CheckInterval, "interval of the Consul gRPC health check (at least 1s)")
	fs.DurationVar(&cfg.DrainDelay, "drain-delay", cfg.DrainDelay, "how long to keep serving after deregistering on shutdown")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "bound on the graceful stop")
	fs.BoolVar(&cfg.RequireLBToken, "require-lb-token", false, "reject calls without an lb-token")
	fs.BoolVar(&cfg.AcceptUnkeyedLBToken, "lb-token-accept-unkeyed", false, "with -lb-token-key-file, accept unkeyed lb-tokens too, while the balancers get the key")
	fs.StringVar(&tokenKeyFile, "lb-token-key-file", "", "`file` holding the secret shared with the balancers (lbserver -lb-token-key-file): expect keyed lb-tokens, which outsiders cannot compute, and reject unkeyed ones (16 to 4096 bytes; default: unkeyed tokens)")
	fs.DurationVar(&cfg.Latency, "latency", 0, "latency added to every User call, to simulate a slow backend")
	fs.DurationVar(&cfg.CallCPU, "call-cpu", 0, "CPU time every User call spins for, after -latency, to simulate a CPU-bound backend whose latency grows with its load")
	fs.IntVar(&cfg.Capacity, "capacity", 0, "calls at once the backend is sized for: report application utilization = mean calls in flight / capacity (0: none)")
	fs.Float64Var(&cfg.CPUBurn, "cpu-burn", 0, "share of one CPU core to keep busy (0 to 1), to simulate a busy backend")
	fs.DurationVar(&cfg.ORCAMinInterval, "orca-min-interval", cfg.ORCAMinInterval, "shortest interval of ORCA load reports granted to balancers (at least 10ms)")
	fs.DurationVar(&cfg.LoadWindow, "load-window", cfg.LoadWindow, "span over which reported QPS, errors and CPU are averaged (100ms to 1m)")
	fs.StringVar(&cfg.TLS.CertFile, "tls-cert", "", "certificate `file` (PEM, leaf first, then its chain): serve TLS; re-read on SIGHUP and when it changes")
	fs.StringVar(&cfg.TLS.KeyFile, "tls-key", "", "private key `file` (PEM) of -tls-cert")
	fs.StringVar(&cfg.TLS.CAFile, "tls-client-ca", "", "CA certificates `file` (PEM): clients (balancers' ORCA streams included) must present a certificate one of them signed (mTLS)")
	fs.DurationVar(&cfg.TLS.PollInterval, "tls-poll-interval", tlsfiles.DefaultPollInterval, "how often the TLS files are checked for changes")
	fs.BoolVar(&cfg.HealthWithoutClientCert, "tls-health-without-client-cert", false, "with -tls-client-ca: let health checks (Consul's) in without a client certificate; every other call still needs one")
	fs.BoolVar(&cfg.CheckTLSVerify, "consul-check-tls-verify", false, "with TLS: make Consul verify the certificate in its gRPC check (the agent needs the CA: enable_agent_tls_for_checks); default: the check skips verification")
	fs.StringVar(&cfg.CheckTLSServerName, "consul-check-tls-server-name", "", "with -consul-check-tls-verify: the `name` Consul expects in the certificate (default: the advertised host)")
	fs.StringVar(&consulTLS.CAFile, "consul-ca-file", "", "CA certificate `file` to verify Consul's HTTPS certificate (default $CONSUL_CACERT); implies HTTPS")
	fs.StringVar(&consulTLS.CertFile, "consul-cert-file", "", "client certificate `file` for Consul (default $CONSUL_CLIENT_CERT); implies HTTPS")
	fs.StringVar(&consulTLS.KeyFile, "consul-key-file", "", "client key `file` for Consul (default $CONSUL_CLIENT_KEY)")
	fs.StringVar(&consulTLS.ServerName, "consul-tls-server-name", "", "server `name` expected in Consul's certificate (default $CONSUL_TLS_SERVER_NAME, else the host of -consul); implies HTTPS")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")

	if err := fs.Parse(args); err != nil {
		return cfg, reportedError{err}
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("backend: unexpected arguments: %q", fs.Args())
	}

	for t := range strings.SplitSeq(tags, ",") {
		if t = strings.TrimSpace(t); t != "" {
			cfg.Tags = append(cfg.Tags, t)
		}
	}
	m, err := parseMeta(meta)
	if err != nil {
		return cfg, fmt.Errorf("backend: -meta: %w", err)
	}
	cfg.Meta = m

	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return cfg, fmt.Errorf("backend: -log-level: %w", err)
	}
	cfg.Logger = slog.New(logattr.Unique(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level, ReplaceAttr: logattr.ReplaceDuration})))
	if tokenKeyFile != "" {
		k, err := lbtoken.LoadKey(tokenKeyFile, cfg.Logger)
		if err != nil {
			return cfg, fmt.Errorf("backend: -lb-token-key-file: %w", err)
		}
		cfg.LBTokenKey = k
	}

	if !noConsul && consulAddr != "" {
		// NewClient takes the token and TLS settings from the
		// environment (CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...), with
		// the flags over them.
		cc := consulTLS
		cc.Address = consulAddr
		c, err := consul.NewClient(cc)
		if err != nil {
			return cfg, fmt.Errorf("backend: -consul: %w", err)
		}
		cfg.Consul = c
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// reportedError is an error that the flag package has already printed,
// with the usage.
type reportedError struct{ error }

func (e reportedError) Unwrap() error { return e.error }

// parseMeta parses "k=v,k=v"; an empty string gives nil.
func parseMeta(s string) (map[string]string, error) {
	var m map[string]string
	for kv := range strings.SplitSeq(s, ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		if m == nil {
			m = make(map[string]string)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("key %q given twice", k)
		}
		m[k] = strings.TrimSpace(v)
	}
	return m, nil
}
