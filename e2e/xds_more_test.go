package e2e

import (
	"context"
	"log/slog"
	"math"
	"net"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/hashicorp/consul/api"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/internal/syncbuf"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/metrics"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"github.com/lookaside-lb/lookaside/xds"
	"github.com/lookaside-lb/lookaside/xds/xdstest"
)

// TLS modes of startTLSLB.
const (
	serverTLSOnly        = iota // TLS, no client certificate asked
	serverMTLS                  // a client certificate signed by the CA required in the handshake
	serverMTLSHealthOpen        // the handshake lets clients without one through; only the health service answers them (a replica registered in Consul)
)

// startTLSLB starts a balancer serving TLS with files' certificate, the
// client CA (files' CA) and interceptors set for mode as the replica
// package sets them.
func startTLSLB(t *testing.T, files tlstest.Files, mode int) *lb {
	t.Helper()
	cfg := tlsfiles.Config{CertFile: files.Cert, KeyFile: files.Key, Logger: quietLogger()}
	if mode != serverTLSOnly {
		cfg.CAFile = files.CA
		cfg.ClientCertOptional = mode == serverMTLSHealthOpen
	}
	store, err := tlsfiles.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := store.ServerCredentials()
	if err != nil {
		t.Fatal(err)
	}
	o := lbserver.ServeOptions{Creds: creds}
	if mode == serverMTLSHealthOpen {
		exempt := []string{healthpb.Health_Check_FullMethodName, healthpb.Health_Watch_FullMethodName}
		u, st := tlsfiles.RequireVerifiedClient(exempt...)
		o.GRPC = []grpc.ServerOption{grpc.ChainUnaryInterceptor(u), grpc.ChainStreamInterceptor(st)}
		o.Authorize = tlsfiles.Verifier(exempt...)
	}
	return startLBWith(t, nil, o)
}

// TestXDSOverTLS: xDS clients whose bootstrap (xds.Bootstrap with a CA,
// and a certificate for mTLS) names a balancer serving TLS get their
// configuration and make calls; under mTLS a client without a certificate
// gets nothing and its calls fail.
func TestXDSOverTLS(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 2)
	pki := newTestPKI(t)
	lbFiles := pki.files(t, "balancer", balancerName, "127.0.0.1")
	clientFiles := pki.files(t, "client", "client")

	t.Run("TLS", func(t *testing.T) {
		l := startTLSLB(t, lbFiles, serverTLSOnly)
		c := xdsClientWith(t, xds.BootstrapOptions{Server: l.addr, CAFile: lbFiles.CA}, svc)
		waitSeen(t, c, bs...)
		checkShares(t, "calls", bs, []int{1, 1}, spread(t, c, 100), 0.01)
		// A plaintext bootstrap gets nothing from a TLS balancer.
		pc := xdsClientWith(t, xds.BootstrapOptions{Server: l.addr, NodeID: t.Name() + "-plaintext"}, svc)
		callsFail(t, pc, "a plaintext client")
	})
	for _, mode := range []struct {
		name string
		mode int
	}{{"mTLS", serverMTLS}, {"mTLS with open health", serverMTLSHealthOpen}} {
		t.Run(mode.name, func(t *testing.T) {
			l := startTLSLB(t, lbFiles, mode.mode)
			c := xdsClientWith(t, xds.BootstrapOptions{Server: l.addr, CAFile: clientFiles.CA, CertFile: clientFiles.Cert, KeyFile: clientFiles.Key}, svc)
			waitSeen(t, c, bs...)
			checkShares(t, "calls", bs, []int{1, 1}, spread(t, c, 100), 0.01)

			// Without a certificate: refused in the handshake, or (open
			// health) its ADS stream refused; no configuration, every
			// call fails.
			nc := xdsClientWith(t, xds.BootstrapOptions{Server: l.addr, CAFile: clientFiles.CA, NodeID: t.Name() + "-nocert"}, svc)
			callsFail(t, nc, "a client without a certificate")
			// The client with a certificate still works.
			spread(t, c, 10)
		})
	}
}

// callsFail makes 3 calls with c, each within 3 s, and fails the test
// unless every one fails with Unavailable or DeadlineExceeded.
func callsFail(t *testing.T, c userpb.UserClient, who string) {
	t.Helper()
	for i := range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		start := time.Now()
		r, err := call(ctx, c)
		cancel()
		if err == nil {
			t.Fatalf("call %d of %s was served by %s", i, who, r.BackendId)
		}
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			t.Errorf("call %d of %s: %v, want Unavailable or DeadlineExceeded", i, who, err)
		}
		t.Logf("call %d of %s: %v after %v", i, who, err, time.Since(start).Round(time.Millisecond))
	}
}

// waitAvoided calls c until 4 calls in a row are served by backends other
// than id (under round robin over 3 backends at most 2 in a row are while
// id is in the client's list), for at most timeout and 100,000 calls. It
// returns when the first of those calls started. Failed calls are counted
// in *failed and do not end the run.
func waitAvoided(t *testing.T, c userpb.UserClient, id string, timeout time.Duration, failed *int) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var run int
	var runStart time.Time
	for range 100000 {
		if time.Now().After(deadline) {
			break
		}
		start := time.Now()
		r, err := call(t.Context(), c)
		switch {
		case err != nil:
			*failed++
			run = 0
		case r.BackendId == id:
			run = 0
		default:
			if run == 0 {
				runStart = start
			}
			if run++; run == 4 {
				return runStart
			}
		}
	}
	t.Fatalf("calls still reach %s %v after the change", id, timeout)
	return time.Time{}
}

// waitReached calls c until a call is served by id, for at most timeout
// and 100,000 calls, and returns when that call started. Failed calls
// are counted in *failed.
func waitReached(t *testing.T, c userpb.UserClient, id string, timeout time.Duration, failed *int) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for range 100000 {
		if time.Now().After(deadline) {
			break
		}
		start := time.Now()
		r, err := call(t.Context(), c)
		if err != nil {
			*failed++
		} else if r.BackendId == id {
			return start
		}
	}
	t.Fatalf("no call reached %s %v after the change", id, timeout)
	return time.Time{}
}

// TestXDSNACKThroughTheBalancer: a client that rejects a Cluster is
// logged with its reason and node and counted (Stats.XDSNACKs and
// lookaside_xds_nacks_total), and later Consul changes to the
// same service still reach the xDS clients.
func TestXDSNACKThroughTheBalancer(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	var logs syncbuf.Buffer
	l := startLB(t, func(c *lbserver.Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	c := xdsClient(t, l.addr, svc)
	waitSeen(t, c, bs...)

	s := xdstest.RawADS(t, l.addr)
	node := &corepb.Node{Id: "e2e-nacking-client"}
	if err := s.Send(&discoverypb.DiscoveryRequest{Node: node, TypeUrl: xds.ClusterType, ResourceNames: []string{svc}}); err != nil {
		t.Fatal(err)
	}
	r1, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var cl clusterpb.Cluster
	if len(r1.Resources) != 1 || r1.Resources[0].UnmarshalTo(&cl) != nil || cl.Name != svc {
		t.Fatalf("Cluster response for %s: %v", svc, r1)
	}
	const reason = "e2e: lb_policy not accepted by this client"
	if err := s.Send(&discoverypb.DiscoveryRequest{Node: node, TypeUrl: xds.ClusterType, ResourceNames: []string{svc},
		ResponseNonce: r1.Nonce, ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: reason}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the NACK counted", func() bool { return l.server().Stats().XDSNACKs["cluster"] > 0 })
	if got := l.server().Stats().XDSNACKs; got["cluster"] != 1 || got["listener"]+got["route"]+got["endpoint"] != 0 {
		t.Errorf("NACKs counted %v, want cluster: 1 and no other", got)
	}
	ms := httptest.NewServer(metrics.New(metrics.Sources{Balancer: l.server()}).Handler())
	defer ms.Close()
	if got := scrape(t, ms.URL)[series("lookaside_xds_nacks_total", "type", "cluster")]; got != 1 {
		t.Errorf("lookaside_xds_nacks_total{type=\"cluster\"} = %v, want 1", got)
	}
	waitFor(t, 5*time.Second, "the NACK logged", func() bool {
		lg := logs.String()
		return strings.Contains(lg, "xDS client rejected a resource") && strings.Contains(lg, reason) && strings.Contains(lg, node.Id)
	})

	// A backend leaving Consul (it keeps serving) still reaches the real
	// client on the same service, and the NACKing stream gets the new
	// endpoints too if it asks for them.
	gone := bs[0]
	changed := time.Now()
	if err := gone.Deregister(); err != nil {
		t.Fatal(err)
	}
	var failed int
	at := waitAvoided(t, c, gone.ID(), 10*time.Second, &failed)
	t.Logf("after the NACK, a backend leaving Consul reached the xDS client in %v", at.Sub(changed).Round(time.Millisecond))
	if failed > 0 {
		t.Errorf("%d failed calls while the backend left", failed)
	}
	eds := cl.GetEdsClusterConfig().GetServiceName()
	if eds == "" {
		eds = cl.Name
	}
	if err := s.Send(&discoverypb.DiscoveryRequest{Node: node, TypeUrl: xds.EndpointType, ResourceNames: []string{eds}}); err != nil {
		t.Fatal(err)
	}
	r2, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var cla endpointpb.ClusterLoadAssignment
	if len(r2.Resources) != 1 || r2.Resources[0].UnmarshalTo(&cla) != nil || len(cla.Endpoints) == 0 {
		t.Fatalf("EDS response after the NACK: %v", r2)
	}
	n := 0
	for _, loc := range cla.Endpoints {
		n += len(loc.LbEndpoints)
	}
	if n != 2 {
		t.Errorf("EDS response after the NACK has %d endpoints, want 2: %v", n, &cla)
	}
}

// TestXDSPropagation: 20 Consul changes to a service of 3 backends (one
// backend's registration removed and added again, alternately, through
// the agent API; the backend keeps serving) each reach a real xDS client
// within 5 s; it logs the distribution of the time from the Consul change
// to the client's first call that reflects it, and the part of it spent
// before the balancer had its new snapshot (Consul and discovery).
func TestXDSPropagation(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	l := startLB(t, nil)
	c := xdsClient(t, l.addr, svc)
	waitSeen(t, c, bs...)

	moving := bs[0].ID()
	as, _, err := agent.Client().Agent().Service(moving, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Registered again as the backend registers itself (consulreg), but
	// with its gRPC check passing from the start, so that the time
	// measured is Consul's, the balancer's and the client's, not the
	// check interval's.
	reg := &api.AgentServiceRegistration{ID: as.ID, Name: as.Service, Address: as.Address, Port: as.Port,
		Tags: as.Tags, Meta: as.Meta, Weights: &api.AgentWeights{Passing: as.Weights.Passing, Warning: as.Weights.Warning},
		Check: &api.AgentServiceCheck{CheckID: moving + ":grpc-health", Name: "gRPC health", Status: api.HealthPassing,
			GRPC: net.JoinHostPort(as.Address, strconv.Itoa(as.Port)), Interval: "1s", Timeout: "1s", DeregisterCriticalServiceAfter: "1m"}}
	const changes = 20
	const bound = 5 * time.Second
	var leave, join []time.Duration
	var toLB []time.Duration // from the change to the balancer's new snapshot: Consul and discovery
	failed := 0
	for i := range changes {
		start := time.Now()
		if i%2 == 0 {
			if err := agent.Client().Agent().ServiceDeregister(moving); err != nil {
				t.Fatal(err)
			}
			leave = append(leave, waitAvoided(t, c, moving, bound, &failed).Sub(start))
		} else {
			if err := agent.Client().Agent().ServiceRegister(reg); err != nil {
				t.Fatal(err)
			}
			join = append(join, waitReached(t, c, moving, bound, &failed).Sub(start))
		}
		for _, st := range l.server().Status() {
			if st.Service == svc {
				toLB = append(toLB, st.SnapshotArrived.Sub(start))
			}
		}
		time.Sleep(100 * time.Millisecond) // the client ACKs; the next change is a new one
	}
	all := append(slices.Clone(leave), join...)
	for _, d := range []struct {
		what string
		ds   []time.Duration
	}{{"leave", leave}, {"join", join}, {"all", all}, {"of which up to the balancer's new snapshot", toLB}} {
		p50, p99, mx := percentiles(d.ds)
		t.Logf("%s (%d changes): p50 %v, p99 %v, max %v", d.what, len(d.ds), p50, p99, mx)
	}
	for _, d := range all {
		if d > bound {
			t.Errorf("a change reached the client after %v, want within %v", d, bound)
		}
	}
	if failed > 0 {
		t.Errorf("%d failed calls during the changes", failed)
	}
}

// percentiles returns the nearest-rank p50 and p99 and the maximum of ds,
// rounded to 0.1 ms.
func percentiles(ds []time.Duration) (p50, p99, mx time.Duration) {
	s := slices.Sorted(slices.Values(ds))
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(i, 0)].Round(100 * time.Microsecond)
	}
	return rank(0.50), rank(0.99), s[len(s)-1].Round(100 * time.Microsecond)
}
