package e2e

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/lbtoken"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
)

// TestTokensDuplicateIDs registers the same service ID on two nodes: one
// backend on the test agent's node, another through the catalog API on an
// external node. Both backends require an lb-token and check it for their
// own ID, so every balanced call succeeds only if the balancer derives
// tokens from the service ID, as the backends do; with keyed tokens only if
// the balancer and the backends share the key. A call with the unkeyed
// token then fails, which shows the verifier is on.
func TestTokensDuplicateIDs(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  lbtoken.Key
	}{
		{"unkeyed", nil},
		{"keyed", lbtoken.Key("e2e-shared-lb-token-key-0123456789")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			svc := serviceName(t)
			id := "dup-" + tc.name // unique on the test agent, which the subtests share
			tweak := func(c *backend.Config) {
				c.ID = id
				c.RequireLBToken = true
				c.LBTokenKey = tc.key
			}
			local := startBackend(t, svc, tweak)
			// The external node's instance: same service ID, registered in
			// the catalog by hand (as an ESM or a second agent would).
			ext := startBackend(t, svc, func(c *backend.Config) { tweak(c); c.Consul = nil })
			registerExternal(t, "ext-"+svc, svc, id, ext.Addr())
			waitPassing(t, svc, 2)

			l := startLB(t, func(c *lbserver.Config) { c.LBTokenKey = tc.key })
			c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
			seen := map[string]int{}
			waitFor(t, 20*time.Second, "calls to reach both instances of "+id, func() bool {
				if r, err := call(t.Context(), c); err == nil {
					seen[r.BackendAddr]++
				}
				return seen[local.Addr()] > 0 && seen[ext.Addr()] > 0
			})
			counts := map[string]int{}
			for i := range 200 {
				r, err := call(t.Context(), c)
				if err != nil {
					t.Fatalf("balanced call %d: %v", i, err)
				}
				if r.LbToken != tc.key.ForID(id) {
					t.Fatalf("call %d reached %s with token %q, want %q", i, r.BackendAddr, r.LbToken, tc.key.ForID(id))
				}
				counts[r.BackendAddr]++
			}
			t.Logf("200 balanced calls, none failed: %v", counts)
			if counts[local.Addr()] == 0 || counts[ext.Addr()] == 0 {
				t.Errorf("calls did not reach both instances of %s: %v", id, counts)
			}

			// The verifier is on: the wrong kind of token is refused.
			wrong := lbtoken.ForID(id)
			if tc.key == nil {
				wrong = lbtoken.Key("not-the-shared-key-0123456").ForID(id)
			}
			if err := directCall(t, ext.Addr(), wrong); status.Code(err) != codes.PermissionDenied {
				t.Errorf("direct call with a wrong token: %v, want PermissionDenied", err)
			}
		})
	}
}

// registerExternal registers an instance of service with the given ID on
// another node, with a passing check, through /v1/catalog/register, and
// removes the node when the test ends.
func registerExternal(t *testing.T, node, service, id, addr string) {
	t.Helper()
	host, portStr, err := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	cat := agent.Client().Catalog()
	reg := &api.CatalogRegistration{
		Node:    node,
		Address: host,
		Service: &api.AgentService{ID: id, Service: service, Address: host, Port: port},
		Check: &api.AgentCheck{Node: node, CheckID: "ext-" + id, Name: "external", Status: api.HealthPassing,
			ServiceID: id},
	}
	if _, err := cat.Register(reg, nil); err != nil {
		t.Fatalf("catalog register on node %s: %v", node, err)
	}
	t.Cleanup(func() {
		if _, err := cat.Deregister(&api.CatalogDeregistration{Node: node}, nil); err != nil {
			t.Errorf("catalog deregister of node %s: %v", node, err)
		}
	})
}

// directCall calls the backend at addr without a balancer, sending token.
func directCall(t *testing.T, addr, token string) error {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(t.Context(), lbtoken.MetadataKey, token), 5*time.Second)
	defer cancel()
	_, err = userpb.NewUserClient(cc).GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 1})
	return err
}
