package replica

import (
	"context"
	"net/http"

	"github.com/lookaside-lb/lookaside/admin"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/metrics"
)

// status is what the admin listener's status page shows. Safe for
// concurrent use.
func (r *Replica) status() admin.Status {
	st := admin.Status{
		Build:    admin.ReadBuild(),
		Started:  r.started,
		Ready:    r.srv.Ready() && !r.draining.Load(),
		Draining: r.draining.Load(),
		Totals:   admin.TotalsOf(r.srv.Stats()),
		Services: r.srv.Status(),
	}
	if a := r.addr.Load(); a != nil {
		st.Listen = *a
	}
	if cs, ok := r.src.(*consul.Source); ok {
		h := cs.Health()
		st.Consul = &admin.ConsulStatus{
			Address:     r.consulAddr,
			Reachable:   h.Reachable,
			LastContact: h.LastContact,
			LastError:   h.LastError,
			LastErrorAt: h.LastErrorAt,
		}
	}
	if snap := r.replicas.Load(); snap != nil {
		self := r.regID.Load()
		for _, e := range snap.Endpoints {
			rep := admin.Replica{Address: e.Addr.String(), ID: e.TokenID(), Health: "passing"}
			rep.Self = self != nil && *self == e.TokenID()
			st.Replicas = append(st.Replicas, rep)
		}
	}
	return st
}

// watchReplicas keeps the balancer replicas registered in Consul as
// service (only passing ones: what clients find) for the status page,
// until ctx ends. It shares the balancer's Consul source.
func (r *Replica) watchReplicas(ctx context.Context, service string) {
	err := r.src.Watch(ctx, service, func(s discovery.Snapshot) { r.replicas.Store(&s) })
	if err != nil && ctx.Err() == nil {
		r.log.Warn("status page: cannot watch the balancer replicas", "service", service, "err", err)
	}
}

// metricsHandler serves /metrics.
func (r *Replica) metricsHandler() http.Handler { return r.metrics.Handler() }

// Metrics are the replica's Prometheus metrics.
func (r *Replica) Metrics() *metrics.Metrics { return r.metrics }
