package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// describeStatus sends the descriptions of the metrics read from the
// balancer's Status.
func describeStatus(ch chan<- *prometheus.Desc) {}

// statusMetrics reads the balancer's Status: per-service and per-endpoint
// gauges. The services it reports are marked in watched.
func (m *Metrics) statusMetrics(src *Sources, now time.Time, watched map[string]bool) []prometheus.Metric {
	return nil
}
