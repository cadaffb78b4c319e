package backend

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lookaside-lb/lookaside/consulreg"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/loadreport"
)

// Consul's own lower bounds: it runs checks at most once a second and reaps
// critical services no sooner than a minute.
const (
	minCheckInterval           = time.Second
	minDeregisterCriticalAfter = time.Minute
)

// Config configures a Backend. Start from DefaultConfig; New fills zero
// fields with their defaults as well, except where a field says that zero
// means off.
type Config struct {
	// Service is the Consul service name to register under. Default
	// "user-srv".
	Service string
	// ID is the instance's Consul service ID, from which its lb-token is
	// derived (lbtoken.Key.ForID with LBTokenKey). Default: Service-host-port of the advertised
	// address, computed once the listener is bound. It may not contain
	// '/', '?', '#', '%' or white space.
	ID string
	// Listen is the address to listen on. Default "127.0.0.1:0": the system
	// picks a free port, and the listener New binds is the one served.
	Listen string
	// Advertise is the host:port registered in Consul and reported in
	// responses. Default: the listener's address. It must be set when Listen
	// has an unspecified host (":8080", "0.0.0.0:8080"), which is not an
	// address anyone can reach.
	Advertise string
	// Tags are the Consul service tags.
	Tags []string
	// Weight is the Consul weight while the instance is passing
	// (Weights.Passing). Default 1; negative is rejected.
	Weight int
	// Meta is the Consul service metadata.
	Meta map[string]string
	// Consul is the agent to register with. Nil means no registration: the
	// backend only serves.
	Consul *api.Client
	// CheckInterval is the interval of the Consul gRPC health check, which
	// asks the overall ("") status of the health service. Default 2 s;
	// values under 1 s are raised to 1 s, Consul's minimum.
	CheckInterval time.Duration
	// DeregisterCriticalAfter makes Consul remove the instance once its
	// check has been critical this long, so a crashed backend does not stay
	// listed forever. Default 1 min; shorter values are raised to 1 min,
	// Consul's minimum.
	DeregisterCriticalAfter time.Duration
	// DrainDelay is how long Serve keeps serving after it has deregistered,
	// so that balancers see the change and stop sending calls before the
	// server stops. Zero means no wait; negative is rejected.
	// DefaultConfig sets 2 s.
	DrainDelay time.Duration
	// ShutdownTimeout bounds the graceful stop that ends Serve; calls still
	// running then are cut. Default 10 s; negative is rejected.
	ShutdownTimeout time.Duration
	// RequireLBToken rejects calls that carry no lb-token. Calls with a
	// wrong token are always rejected, and health checks and ORCA load
	// report streams are never checked.
	RequireLBToken bool
	// LBTokenKey, when set, makes the backend expect keyed lb-tokens
	// (lbtoken.Key.ForID of its ID): the balancers must hold the same key
	// (lbserver -lb-token-key-file), and calls with an unkeyed or forged
	// token are rejected. Empty expects unkeyed tokens (lbtoken.ForID).
	LBTokenKey lbtoken.Key
	// AcceptUnkeyedLBToken, with LBTokenKey, accepts the unkeyed token as
	// well, while keys roll out: give the backends the key with this set,
	// then the balancers, then unset it.
	AcceptUnkeyedLBToken bool
	// ORCAMinInterval is the shortest interval at which the backend sends
	// ORCA load reports (loadreport.ReporterConfig.MinInterval): a balancer
	// that asks for less gets this. Default 1 s; values under 10 ms are
	// raised to 10 ms; negative is rejected.
	ORCAMinInterval time.Duration
	// LoadWindow is the span over which the reported QPS, errors per second
	// and CPU utilization are averaged (loadreport.RecorderConfig.Window).
	// Default 5 s; clamped to [100 ms, 1 min]; negative is rejected.
	LoadWindow time.Duration
	// Latency is added to every User call before it is answered, to
	// simulate a slow backend; a call whose deadline comes first ends with
	// DeadlineExceeded. Zero means none; negative is rejected. SetLatency
	// changes it while serving.
	Latency time.Duration
	// CallCPU is CPU time every User call spins for, after Latency and
	// before it is answered, to simulate a CPU-bound backend: unlike
	// Latency, its calls slow down as they contend for the cores, so the
	// latency depends on the load. On Linux the call spins until its
	// thread has used CallCPU of CPU time; elsewhere it spins for CallCPU
	// of wall time. A call whose deadline comes first stops spinning and
	// ends with DeadlineExceeded. Zero means none; negative is rejected.
	// SetCallCPU changes it while serving.
	CallCPU time.Duration
	// CPUBurn keeps this share of one CPU core busy while the backend
	// serves, from 0 to 1, to simulate a busy backend: a goroutine spins
	// for CPUBurn of every 10 ms, whatever the traffic. The reported
	// cpu_utilization rises by about CPUBurn/GOMAXPROCS (CPU is measured
	// for the whole process, so backends that share a process share it).
	// Zero means off; values outside [0, 1] are rejected. SetCPUBurn
	// changes it while serving.
	CPUBurn float64
	// Capacity, when positive, is how many calls at once the backend is
	// sized for: it then reports over ORCA an application utilization of
	// the mean calls in flight over the load window / Capacity (at most 1;
	// loadreport.Metrics.Concurrency), unless SetAppUtilization set one. A
	// slow backend holds more calls at once for the same rate, so it
	// reports itself busier. 0 (the default) reports none.
	Capacity int
	// TLS serves every service of the backend (User, health, ORCA) over
	// TLS with the certificate of TLS.CertFile and TLS.KeyFile; with
	// TLS.CAFile, clients must present a certificate signed by one of
	// its CAs (mutual TLS). The files are read again on ReloadTLS and
	// every TLS.PollInterval (default 10 s) while the backend serves; a
	// bad file keeps the certificate in force (see package tlsfiles).
	// Zero (no CertFile): plaintext. TLS.ServerName and
	// TLS.ClientCertOptional are set by New (see HealthWithoutClientCert)
	// and must be left empty.
	TLS tlsfiles.Config
	// HealthWithoutClientCert, with TLS.CAFile, lets health checks
	// (grpc.health.v1 Check and Watch) in without a client certificate,
	// so that a Consul agent that presents none (no
	// enable_agent_tls_for_checks) can check the backend; every other
	// call still needs a verified client certificate and is otherwise
	// refused with Unauthenticated. Default false: every connection needs
	// a client certificate.
	HealthWithoutClientCert bool
	// CheckTLSVerify makes Consul verify the backend's certificate in its
	// gRPC check (TLSSkipVerify false): the agent then needs the CA
	// (tls.defaults.ca_file with enable_agent_tls_for_checks). Default
	// false: with TLS the check skips verification, since it carries no
	// secret and agents seldom hold the backends' CA.
	CheckTLSVerify bool
	// CheckTLSServerName is the name Consul verifies the certificate
	// against with CheckTLSVerify (TLSServerName); empty: the advertised
	// host.
	CheckTLSServerName string
	// Logger receives the backend's logs. Default slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns a Config with every default set: service "user-srv"
// on a free loopback port, weight 1, no Consul, 2 s check interval, 1 min
// critical deregistration, 2 s drain delay, 10 s shutdown timeout, ORCA
// reports at most every 1 s averaged over 5 s, no added latency, per-call CPU
// or CPU burn.
func DefaultConfig() Config {
	return Config{
		Service:                 "user-srv",
		Listen:                  "127.0.0.1:0",
		Weight:                  1,
		CheckInterval:           2 * time.Second,
		DeregisterCriticalAfter: time.Minute,
		DrainDelay:              2 * time.Second,
		ShutdownTimeout:         10 * time.Second,
		ORCAMinInterval:         loadreport.DefaultMinInterval,
		LoadWindow:              loadreport.DefaultWindow,
		Logger:                  slog.Default(),
	}
}

// Validate reports the first invalid field of c, as New would, without
// binding anything. Zero fields are valid: New gives them their defaults.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

// withDefaults returns c with zero fields defaulted and values clamped, or
// an error naming the first invalid field. ID and Advertise are left for
// New, which knows the listener's address.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.Service == "" {
		c.Service = d.Service
	}
	if c.Listen == "" {
		c.Listen = d.Listen
	}
	switch {
	case c.Capacity < 0:
		return c, fmt.Errorf("backend: capacity %d is negative", c.Capacity)
	case c.Weight < 0:
		return c, fmt.Errorf("backend: weight %d is negative", c.Weight)
	case c.Weight == 0:
		c.Weight = d.Weight
	}
	switch {
	case c.CheckInterval == 0:
		c.CheckInterval = d.CheckInterval
	case c.CheckInterval < minCheckInterval:
		c.CheckInterval = minCheckInterval
	}
	if c.DeregisterCriticalAfter < minDeregisterCriticalAfter {
		c.DeregisterCriticalAfter = minDeregisterCriticalAfter
	}
	if c.DrainDelay < 0 {
		return c, fmt.Errorf("backend: drain delay %v is negative", c.DrainDelay)
	}
	switch {
	case c.ShutdownTimeout < 0:
		return c, fmt.Errorf("backend: shutdown timeout %v is negative", c.ShutdownTimeout)
	case c.ShutdownTimeout == 0:
		c.ShutdownTimeout = d.ShutdownTimeout
	}
	switch {
	case c.ORCAMinInterval < 0:
		return c, fmt.Errorf("backend: ORCA min interval %v is negative", c.ORCAMinInterval)
	case c.ORCAMinInterval == 0:
		c.ORCAMinInterval = d.ORCAMinInterval
	}
	c.ORCAMinInterval = max(c.ORCAMinInterval, loadreport.LowestMinInterval)
	switch {
	case c.LoadWindow < 0:
		return c, fmt.Errorf("backend: load window %v is negative", c.LoadWindow)
	case c.LoadWindow == 0:
		c.LoadWindow = d.LoadWindow
	}
	c.LoadWindow = min(max(c.LoadWindow, loadreport.MinWindow), loadreport.MaxWindow)
	if c.Latency < 0 {
		return c, fmt.Errorf("backend: latency %v is negative", c.Latency)
	}
	if c.CallCPU < 0 {
		return c, fmt.Errorf("backend: call CPU %v is negative", c.CallCPU)
	}
	if !(c.CPUBurn >= 0 && c.CPUBurn <= 1) { // also rejects NaN
		return c, fmt.Errorf("backend: CPU burn %v is outside [0, 1]", c.CPUBurn)
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.ID != "" {
		if err := validID(c.ID); err != nil {
			return c, err
		}
	}
	if c.Advertise != "" {
		if _, _, err := consulreg.SplitAddr(c.Advertise); err != nil {
			return c, fmt.Errorf("backend: advertise address: %w", err)
		}
	}
	if err := c.validateTLS(); err != nil {
		return c, err
	}
	return c, nil
}

func validID(id string) error {
	if i := strings.IndexAny(id, "/?#% \t\r\n"); i >= 0 {
		return fmt.Errorf("backend: ID %q contains %q", id, id[i])
	}
	return nil
}

// validateTLS checks the TLS fields against each other, without reading
// the files (New does).
func (c Config) validateTLS() error {
	t := c.TLS
	switch {
	case t.CertFile == "" && t.KeyFile == "" && t.CAFile == "":
		if c.HealthWithoutClientCert || c.CheckTLSVerify || c.CheckTLSServerName != "" {
			return errors.New("backend: HealthWithoutClientCert, CheckTLSVerify and CheckTLSServerName need TLS")
		}
		return nil
	case t.CertFile == "":
		return errors.New("backend: TLS needs a certificate and key file")
	case t.ServerName != "" || t.ClientCertOptional:
		return errors.New("backend: TLS.ServerName and TLS.ClientCertOptional are not for a server's Config")
	case c.HealthWithoutClientCert && t.CAFile == "":
		return errors.New("backend: HealthWithoutClientCert needs a TLS client CA file")
	case c.CheckTLSServerName != "" && !c.CheckTLSVerify:
		return errors.New("backend: CheckTLSServerName needs CheckTLSVerify")
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	return nil
}
