// Package consulreg registers a gRPC server as an instance of a Consul
// service, with a gRPC health check, and deregisters it. The example
// backend and the balancer's own replicas use it.
package consulreg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Timeout bounds each call to the Consul agent.
const Timeout = 10 * time.Second

// Instance describes one registration. Check intervals under 1 s and
// critical deregistration under 1 min are raised to those values, Consul's
// minimums.
type Instance struct {
	// ID is the instance's service ID; unique on its agent.
	ID string
	// Service is the service name.
	Service string
	// Addr is the host:port registered and health-checked; the host must
	// be an IP or a name other hosts resolve, never an unspecified address.
	Addr string
	// Tags, Meta and Weight (Weights.Passing; 0 means 1) are registered as
	// given.
	Tags   []string
	Meta   map[string]string
	Weight int
	// CheckInterval is how often Consul asks the instance's
	// grpc.health.v1 service for the overall ("") status.
	CheckInterval time.Duration
	// DeregisterCriticalAfter makes Consul drop an instance whose check
	// stayed critical this long (a crashed instance leaves by itself).
	DeregisterCriticalAfter time.Duration
	// CheckTLS makes the gRPC check speak TLS (Consul's GRPCUseTLS), for
	// instances that serve TLS. CheckTLSServerName is the name Consul
	// verifies the instance's certificate against (TLSServerName; empty:
	// the host of Addr), and CheckTLSSkipVerify makes Consul accept any
	// certificate (TLSSkipVerify): an agent verifies with its own CA
	// (tls.defaults.ca_file, with enable_agent_tls_for_checks), which
	// seldom holds the instances' CA. The agent presents its own
	// certificate only with enable_agent_tls_for_checks.
	CheckTLS           bool
	CheckTLSServerName string
	CheckTLSSkipVerify bool
}

// Validate checks the instance's fields.
func (in Instance) Validate() error {
	var errs []error
	if in.ID == "" || strings.ContainsAny(in.ID, "/?#% \t\n") {
		errs = append(errs, fmt.Errorf("consulreg: ID %q is empty or has '/', '?', '#', '%%' or white space", in.ID))
	}
	if in.Service == "" || strings.ContainsAny(in.Service, "/?#% \t\n") {
		errs = append(errs, fmt.Errorf("consulreg: service %q is empty or has '/', '?', '#', '%%' or white space", in.Service))
	}
	if _, _, err := SplitAddr(in.Addr); err != nil {
		errs = append(errs, err)
	}
	if in.Weight < 0 {
		errs = append(errs, fmt.Errorf("consulreg: weight %d is negative", in.Weight))
	}
	if !in.CheckTLS && (in.CheckTLSServerName != "" || in.CheckTLSSkipVerify) {
		errs = append(errs, errors.New("consulreg: CheckTLSServerName and CheckTLSSkipVerify need CheckTLS"))
	}
	return errors.Join(errs...)
}

// SplitAddr splits a host:port whose host is a concrete address.
func SplitAddr(addr string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("consulreg: address %q: %w", addr, err)
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("consulreg: address %q: port is not in 1-65535", addr)
	}
	if h == "" || h == "0.0.0.0" || h == "::" {
		return "", 0, fmt.Errorf("consulreg: address %q has no concrete host: set one that others can reach", addr)
	}
	return h, port, nil
}

// Register registers in with the agent behind c, replacing an earlier
// registration of the same ID. It blocks for at most Timeout.
func Register(ctx context.Context, c *api.Client, in Instance) error {
	if err := in.Validate(); err != nil {
		return err
	}
	host, port, _ := SplitAddr(in.Addr)
	weight := max(in.Weight, 1)
	interval := max(in.CheckInterval, time.Second)
	reg := &api.AgentServiceRegistration{
		ID:      in.ID,
		Name:    in.Service,
		Tags:    in.Tags,
		Address: host,
		Port:    port,
		Meta:    in.Meta,
		Weights: &api.AgentWeights{Passing: weight, Warning: 1},
		Check: &api.AgentServiceCheck{
			CheckID:                        in.ID + ":grpc-health",
			Name:                           "gRPC health",
			GRPC:                           in.Addr,
			GRPCUseTLS:                     in.CheckTLS,
			TLSServerName:                  in.CheckTLSServerName,
			TLSSkipVerify:                  in.CheckTLSSkipVerify,
			Interval:                       interval.String(),
			Timeout:                        min(interval, Timeout).String(),
			DeregisterCriticalServiceAfter: max(in.DeregisterCriticalAfter, time.Minute).String(),
		},
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := c.Agent().ServiceRegisterOpts(reg, opts); err != nil {
		return fmt.Errorf("consulreg: registering %s: %w", in.ID, err)
	}
	return nil
}

// Deregister removes the instance id from the agent behind c. It blocks
// for at most Timeout.
func Deregister(ctx context.Context, c *api.Client, id string) error {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	if err := c.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consulreg: deregistering %s: %w", id, err)
	}
	return nil
}
