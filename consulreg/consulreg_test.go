package consulreg

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/lookaside-lb/lookaside/internal/consultest"
)

func TestValidate(t *testing.T) {
	good := Instance{ID: "lb-1", Service: "lookaside", Addr: "127.0.0.1:7000"}
	if err := good.Validate(); err != nil {
		t.Fatalf("good instance: %v", err)
	}
	tests := []struct {
		mod  func(*Instance)
		want string
	}{
		{func(i *Instance) { i.ID = "" }, "ID"},
		{func(i *Instance) { i.ID = "a/b" }, "ID"},
		{func(i *Instance) { i.Service = "a b" }, "service"},
		{func(i *Instance) { i.Addr = "127.0.0.1" }, "address"},
		{func(i *Instance) { i.Addr = ":7000" }, "no concrete host"},
		{func(i *Instance) { i.Addr = "0.0.0.0:7000" }, "no concrete host"},
		{func(i *Instance) { i.Addr = "[::]:7000" }, "no concrete host"},
		{func(i *Instance) { i.Addr = "127.0.0.1:0" }, "port"},
		{func(i *Instance) { i.Weight = -1 }, "weight"},
	}
	for _, tc := range tests {
		in := good
		tc.mod(&in)
		if err := in.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error about %s", in, err, tc.want)
		}
	}
}

// TestRegisterPassesAndDeregisters registers a real gRPC server with a real
// Consul agent: its check turns passing, and Deregister removes it.
func TestRegisterPassesAndDeregisters(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Consul agent")
	}
	agent := consultest.Start(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(lis)
	defer gs.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in := Instance{ID: "lb-test-" + strconv.Itoa(lis.Addr().(*net.TCPAddr).Port), Service: "lookaside-test",
		Addr: lis.Addr().String(), Weight: 3, CheckInterval: time.Second}
	if err := Register(ctx, agent.Client(), in); err != nil {
		t.Fatal(err)
	}
	passing := func() int {
		es, _, err := agent.Client().Health().Service(in.Service, "", true, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Service.Weights.Passing != 3 {
				t.Errorf("weight %d, want 3", e.Service.Weights.Passing)
			}
		}
		return len(es)
	}
	for passing() != 1 {
		if ctx.Err() != nil {
			t.Fatal("instance never passed its gRPC health check")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := Deregister(ctx, agent.Client(), in.ID); err != nil {
		t.Fatal(err)
	}
	if n := passing(); n != 0 {
		t.Fatalf("%d instances after Deregister, want 0", n)
	}
}
