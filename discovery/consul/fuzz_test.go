package consul

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/discovery"
)

// FuzzSnapshot converts two fuzzed instances, the second possibly on the
// same node or with the same ID, and checks the invariants of every
// snapshot: endpoints sorted and unique by ID, IPs unmapped and without a
// zone, ports 1-65535, weights 1-MaxWeight, clashing IDs carrying their
// service ID as Instance, and only passing (or warning) instances.
func FuzzSnapshot(f *testing.F) {
	f.Add("n1", "10.0.0.1", "a", "", 8080, 1, 1, "passing", "n2", "b", "::ffff:10.0.0.2", 81, "lb-weight", "5", true)
	f.Add("n1", "10.0.0.1", "dup", "fe80::1%eth0", 1, 0, 0, "warning", "n2", "dup", "host.example", 65535, "zone", "a", false)
	f.Add("", "", "", "[::1]", 0, -5, 99999, "critical", "n1", "x", "", 70000, "lb-weight", "0", true)
	f.Add("n1", "bad host", "a", "unresolvable.example", 80, 3, 2, "maintenance", "n1", "a", "10.0.0.3", 80, "lb-weight", "10001", false)
	resolver := &fakeResolver{hosts: map[string][]netip.Addr{
		"host.example": {netip.MustParseAddr("::ffff:192.0.2.1")},
	}}
	f.Fuzz(func(t *testing.T, node1, nodeAddr1, id1, addr1 string, port1, wPass, wWarn int, status1, node2, id2, addr2 string, port2 int, metaKey, metaVal string, includeWarning bool) {
		mk := func(node, nodeAddr, id, addr string, port int, status string) *api.ServiceEntry {
			return &api.ServiceEntry{
				Node: &api.Node{Node: node, Address: nodeAddr},
				Service: &api.AgentService{
					ID: id, Service: "svc", Address: addr, Port: port,
					Weights: api.AgentWeights{Passing: wPass, Warning: wWarn},
					Meta:    map[string]string{metaKey: metaVal},
				},
				Checks: api.HealthChecks{{Node: node, CheckID: "c", Status: status, ServiceID: id}},
			}
		}
		entries := []*api.ServiceEntry{
			mk(node1, nodeAddr1, id1, addr1, port1, status1),
			mk(node2, nodeAddr1, id2, addr2, port2, api.HealthPassing),
			nil,
		}
		c := &converter{
			service: "svc", includeWarning: includeWarning, resolver: resolver,
			timeout: DefaultConfig().ResolveTimeout, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
		// Twice: the second time with the first's addresses as last good.
		for range 2 {
			snap, _, err := c.snapshot(context.Background(), entries, 7)
			if err != nil {
				t.Fatalf("snapshot: %v", err)
			}
			checkSnapshot(t, snap, entries, includeWarning)
		}
	})
}

func checkSnapshot(t *testing.T, snap discovery.Snapshot, entries []*api.ServiceEntry, includeWarning bool) {
	t.Helper()
	if snap.Service != "svc" || snap.Index != 7 {
		t.Fatalf("snapshot %q index %d", snap.Service, snap.Index)
	}
	for i, e := range snap.Endpoints {
		if i > 0 && strings.Compare(snap.Endpoints[i-1].ID, e.ID) >= 0 {
			t.Fatalf("endpoints not sorted and unique: %q then %q", snap.Endpoints[i-1].ID, e.ID)
		}
		a := e.Addr.Addr()
		if !a.IsValid() || a.Is4In6() || a.Zone() != "" || e.Addr.Port() == 0 {
			t.Fatalf("endpoint %q: address %v", e.ID, e.Addr)
		}
		if e.Weight < 1 || e.Weight > MaxWeight {
			t.Fatalf("endpoint %q: weight %d", e.ID, e.Weight)
		}
		if e.ID == "" {
			t.Fatal("empty endpoint ID")
		}
		if e.Instance != "" && !strings.HasSuffix(e.ID, "/"+e.Instance) {
			t.Fatalf("endpoint %q: Instance %q is not its service ID", e.ID, e.Instance)
		}
		found := false
		for _, se := range entries {
			if se == nil || se.Service == nil {
				continue
			}
			if se.Service.ID == e.TokenID() {
				found = true
				st := se.Checks.AggregatedStatus()
				if st != api.HealthPassing && !(includeWarning && st == api.HealthWarning) && e.Instance == "" && e.ID == se.Service.ID {
					// Only a unique ID pins the entry; clashing ones may
					// come from the other instance.
					if countID(entries, se.Service.ID) == 1 {
						t.Fatalf("endpoint %q published with health %q", e.ID, st)
					}
				}
			}
		}
		if !found {
			t.Fatalf("endpoint %q (token ID %q) matches no instance", e.ID, e.TokenID())
		}
	}
}

func countID(entries []*api.ServiceEntry, id string) int {
	n := 0
	for _, e := range entries {
		if e != nil && e.Service != nil && e.Service.ID == id {
			n++
		}
	}
	return n
}

// FuzzDigest checks that the health-state digest does not depend on the
// order of the checks, tells a changed status apart, and sorts node checks
// from service checks.
func FuzzDigest(f *testing.F) {
	f.Add("n1", "web", "web-1", "c1", "passing", "n2", "", "", "serfHealth", "critical")
	f.Add("n1", "Web", "web-1", "c1", "warning", "n1", "WEB", "web-2", "c1", "passing")
	f.Add("", "", "", "", "", "", "", "", "", "")
	f.Fuzz(func(t *testing.T, node1, svc1, sid1, cid1, st1, node2, svc2, sid2, cid2, st2 string) {
		c1 := &api.HealthCheck{Node: node1, ServiceName: svc1, ServiceID: sid1, CheckID: cid1, Status: st1}
		c2 := &api.HealthCheck{Node: node2, ServiceName: svc2, ServiceID: sid2, CheckID: cid2, Status: st2}
		s1, n1, o1 := Digest(api.HealthChecks{c1, nil, c2})
		s2, n2, _ := Digest(api.HealthChecks{c2, c1})
		if !mapsEqual(s1, s2) || !mapsEqual(n1, n2) {
			t.Fatalf("digest depends on order: %v %v / %v %v", s1, n1, s2, n2)
		}
		for _, svcs := range o1 {
			for _, s := range svcs {
				if s != strings.ToLower(s) {
					t.Fatalf("service %q not lower case", s)
				}
			}
		}
		if len(s1)+len(n1) == 0 {
			t.Fatal("two checks, no digest")
		}
		// A different status of the first check changes its digest.
		c1b := *c1
		c1b.Status = st1 + "x"
		s3, n3, _ := Digest(api.HealthChecks{&c1b, c2})
		if mapsEqual(s1, s3) && mapsEqual(n1, n3) {
			t.Fatalf("status change of %+v not seen", c1)
		}
	})
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
