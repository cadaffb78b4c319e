package e2e

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// denyingProxy forwards to the test agent, but while deny is set it
// answers every read of the catalog and health endpoints with 403, as a
// Consul whose ACLs deny this token reads would; the agent endpoints
// (registration) keep working.
type denyingProxy struct {
	addr string
	deny atomic.Bool
}

func startDenyingProxy(t *testing.T) *denyingProxy {
	t.Helper()
	target, err := url.Parse("http://" + agent.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	p := &denyingProxy{}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0) // long polls cut by the test's end
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.deny.Load() && !strings.HasPrefix(r.URL.Path, "/v1/agent/") {
			http.Error(w, "Permission denied", http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// replicaStatus is what Consul and the replica itself say about it.
type replicaStatus struct {
	health  healthpb.HealthCheckResponse_ServingStatus
	passing int // passing instances of the replicas' service, as SRV answers list them
}

func statusOf(t *testing.T, hc healthpb.HealthClient, lbService string) replicaStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var st replicaStatus
	r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health check: %v", err)
	}
	st.health = r.GetStatus()
	entries, _, err := agent.Client().Health().Service(lbService, "", true, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatalf("passing instances of %s: %v", lbService, err)
	}
	st.passing = len(entries)
	return st
}

// TestReadinessBinaryACLDenied runs the lbserver binary with -register
// against a Consul that denies its reads (403): it reports NOT_SERVING, so
// its Consul check fails and it is not among the passing replicas that SRV
// answers list, and it logs at ERROR. Once reads are allowed it turns
// SERVING and passing; when they are denied again (an outage of its view
// of Consul) it keeps serving the data it holds.
func TestReadinessBinaryACLDenied(t *testing.T) {
	lbBin, _ := buildCmds(t)
	lbService := serviceName(t) + "-lb"
	proxy := startDenyingProxy(t)
	proxy.deny.Store(true)
	p := startProcessEnv(t, noRaceExitSleep(), lbBin, "-listen", "127.0.0.1:0", "-consul", proxy.addr,
		"-register", "-register-service", lbService, "-check-interval", "1s", "-shutdown-timeout", "2s")
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)

	// Several check intervals while every read is denied.
	waitFor(t, 10*time.Second, lbService+" registered", func() bool {
		entries, _, err := agent.Client().Health().Service(lbService, "", false, nil)
		return err == nil && len(entries) == 1
	})
	time.Sleep(4 * time.Second)
	if st := statusOf(t, hc, lbService); st.health != healthpb.HealthCheckResponse_NOT_SERVING || st.passing != 0 {
		t.Fatalf("reads denied: health %v, %d passing replicas; want NOT_SERVING and 0\n%s", st.health, st.passing, p.logs())
	}

	allowed := time.Now()
	proxy.deny.Store(false)
	waitFor(t, 20*time.Second, "the replica SERVING and passing once reads are allowed", func() bool {
		st := statusOf(t, hc, lbService)
		return st.health == healthpb.HealthCheckResponse_SERVING && st.passing == 1
	})
	t.Logf("SERVING and passing %v after reads were allowed", time.Since(allowed).Round(10*time.Millisecond))

	proxy.deny.Store(true)
	for range 4 {
		time.Sleep(time.Second)
		if st := statusOf(t, hc, lbService); st.health != healthpb.HealthCheckResponse_SERVING || st.passing != 1 {
			t.Fatalf("reads denied again after a good read: health %v, %d passing; want SERVING and 1", st.health, st.passing)
		}
	}
	if !strings.Contains(p.logs(), "level=ERROR") {
		t.Errorf("nothing logged at ERROR while reads were denied:\n%s", p.logs())
	}
}
