package admin

import (
	"runtime"
	"runtime/debug"
	"time"

	"github.com/lookaside-lb/lookaside/lbserver"
)

// Status is what the status page and /status.json show: one replica's view
// of itself, Consul and the services it balances. The integrator builds it
// (Options.Status) from lbserver.Server.Status and Stats, the Consul
// source's health and the replicas registered in Consul.
type Status struct {
	// Build says which binary this is; see ReadBuild.
	Build BuildInfo `json:"build"`
	// Started is when the process started.
	Started time.Time `json:"started,omitzero"`
	// Now is when this status was taken; the handler sets it when zero.
	Now time.Time `json:"now,omitzero"`
	// Listen is the balancer's (grpclb) address, for the page's title.
	Listen string `json:"listen,omitempty"`
	// Ready: the replica has read its source once and reports SERVING
	// (lbserver.Server.Ready), unless Draining.
	Ready bool `json:"ready"`
	// Draining: the replica is shutting down (health NOT_SERVING,
	// deregistered); its clients move to other replicas.
	Draining bool `json:"draining"`
	// Consul is the health of the connection to Consul; nil when the
	// balancer does not use Consul (static endpoints).
	Consul *ConsulStatus `json:"consul,omitempty"`
	// Replicas are the balancer replicas registered in Consul, this one
	// included (Self), as clients find them.
	Replicas []Replica `json:"replicas"`
	// Totals are the replica's counters; see TotalsOf.
	Totals Totals `json:"totals"`
	// Services are the watched services, each with its endpoints, as
	// lbserver.Server.Status returns them. The page sorts them by name.
	Services []lbserver.ServiceStatus `json:"services"`
}

// BuildInfo identifies the binary.
type BuildInfo struct {
	// Version is the main module's version ("(devel)" for a local build).
	Version string `json:"version,omitempty"`
	// Revision is the VCS revision it was built from, Modified whether the
	// tree had uncommitted changes, Time the revision's commit time.
	Revision string `json:"revision,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	Time     string `json:"time,omitempty"`
	// GoVersion is the Go release that built it.
	GoVersion string `json:"go_version"`
}

// ReadBuild returns the running binary's BuildInfo from the information
// the Go toolchain embeds (runtime/debug.ReadBuildInfo). Safe for
// concurrent use.
func ReadBuild() BuildInfo {
	b := BuildInfo{GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.Version = bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// ConsulStatus is the health of the balancer's connection to Consul.
type ConsulStatus struct {
	// Address is the Consul agent's address.
	Address string `json:"address,omitempty"`
	// Reachable: the last request to Consul was answered.
	Reachable bool `json:"reachable"`
	// LastContact is when Consul last answered; zero if never.
	LastContact time.Time `json:"last_contact,omitzero"`
	// LastError is the last failure, LastErrorAt when it happened (both
	// kept after Consul answers again, so an operator sees what happened).
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Replica is one balancer replica registered in Consul.
type Replica struct {
	// Address is where clients reach it (host:port).
	Address string `json:"address"`
	// ID is its Consul service ID.
	ID string `json:"id,omitempty"`
	// Node is the Consul node it is registered on.
	Node string `json:"node,omitempty"`
	// Health is its aggregated Consul check status: "passing", "warning",
	// "critical".
	Health string `json:"health,omitempty"`
	// Self marks the replica serving this page.
	Self bool `json:"self,omitempty"`
}

// Totals are a replica's counters, over every service.
type Totals struct {
	// Streams are the BalanceLoad streams open now (the clients connected
	// to this replica), StreamsStarted those started since the start.
	Streams        int64 `json:"streams"`
	StreamsStarted int64 `json:"streams_started"`
	// Connections are the client connections open now.
	Connections int64 `json:"connections"`
	// Services are the services watched now.
	Services int64 `json:"services"`
	// ListsSent and FallbacksSent count the server lists and fallback
	// answers sent.
	ListsSent     int64 `json:"lists_sent"`
	FallbacksSent int64 `json:"fallbacks_sent"`
	// UnknownServices counts streams that named a service Consul does not
	// know.
	UnknownServices int64 `json:"unknown_services"`
	// Refused counts streams and connections refused by any limit.
	Refused int64 `json:"refused"`
	// XDSNACKs counts the responses xDS clients rejected, of every
	// resource type (lbserver.Stats.XDSNACKs).
	XDSNACKs int64 `json:"xds_nacks"`
}

// TotalsOf returns the Totals in a server's Stats.
func TotalsOf(st lbserver.Stats) Totals {
	r := st.Refused
	return Totals{
		Streams:         st.StreamsActive,
		StreamsStarted:  st.StreamsStarted,
		Connections:     st.ConnsOpen,
		Services:        st.ServicesWatched,
		ListsSent:       st.ListsSent,
		FallbacksSent:   st.FallbacksSent,
		UnknownServices: st.UnknownServices,
		Refused:         r.Streams + r.StreamsPerIP + r.StreamsPerConn + r.Conns + r.ConnsPerIP + r.StreamRatePerIP,
		XDSNACKs:        sum(st.XDSNACKs),
	}
}

// sum adds up counts.
func sum(counts map[string]int64) int64 {
	var n int64
	for _, c := range counts {
		n += c
	}
	return n
}
