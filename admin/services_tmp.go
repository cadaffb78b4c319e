package admin

import "time"

// serviceStatus stands for lbserver.ServiceStatus until it is committed.
type serviceStatus struct {
	Name           string
	Policy         string
	PolicySource   string
	ChildPolicy    string
	Streams        int64
	Fallback       bool
	FallbackReason string
	OverloadDrop   float64
	RateLimitDrop  float64
	OfferedRate    float64
	RateLimit      float64
	SnapshotAt     time.Time
	Endpoints      []endpointStatus
	RoundRobin     []string
	PickFirst      string
}

type endpointStatus struct {
	Address     string
	ID          string
	Node        string
	Weight      int
	LoadWeight  float64
	Health      string
	Utilization float64
	QPS         float64
	ReportAge   time.Duration
	FreshReport bool
	Calls       int64
	First       int64
}
