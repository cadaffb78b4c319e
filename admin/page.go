package admin

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"
)

//go:embed status.html
var pageSource string

// page renders the status page (pageView).
var page = template.Must(template.New("status").Funcs(template.FuncMap{
	"join":        strings.Join,
	"healthClass": healthClass,
}).Parse(pageSource))

// Page layout constants.
const (
	// barWidth is the width of a share-of-calls bar, in pixels.
	barWidth = 100
	// maxListShown bounds the round_robin list entries the page prints.
	maxListShown = 24
)

// pageView is what the template renders: Status with every number
// formatted and every share computed.
type pageView struct {
	Nonce          string
	RefreshMillis  int64
	RefreshSeconds int64
	Title          string
	Status         Status
	Health         badge
	Revision       string
	Uptime         string
	NowISO         string
	NowText        string
	Consul         *consulView
	Services       []serviceView
	BarWidth       int
}

type badge struct{ Text, Class string }

type consulView struct {
	Address     string
	Reachable   bool
	LastContact string
	LastError   string
	LastErrorAt string
}

type serviceView struct {
	Name           string
	Policy         string
	PolicySource   string
	ChildPolicy    string
	Clients        int64
	XDSClients     int64
	Fallback       bool
	FallbackReason string
	Drops          []dropView
	Offered        string
	RateLimit      string
	SnapshotAge    string
	TotalCalls     int64
	Endpoints      []endpointView
	RoundRobin     []string
	RoundRobinMore int
	RoundRobinLen  int
	PickFirst      string
	LoadReports    bool
	// Outliers: latency outliers are detected ("on"), with Ejected
	// endpoints ejected now, against MedianLatency.
	Outliers      bool
	Ejected       int
	MedianLatency string
	// HasNode: an endpoint has a node name (two nodes register the same
	// ID); the node column is shown only then.
	HasNode bool
}

type dropView struct{ Kind, Share string }

type endpointView struct {
	Address     string
	ID          string
	InstanceID  string
	Node        string
	Health      string
	HealthClass string
	Weight      string
	LoadWeight  string
	Utilization string
	QPS         string
	ReportAge   string
	Latency     string
	Outlier     bool
	First       int64
	Calls       int64
	CallPct     string
	TargetPct   string
	HasTarget   bool
	BarW        float64
	TargetX     float64
}

func (h *Handler) serveStatusPage(w http.ResponseWriter, r *http.Request) {
	st := h.status()
	v := viewOf(st)
	v.Nonce = newNonce()
	if h.opts.Refresh > 0 {
		v.RefreshMillis = h.opts.Refresh.Milliseconds()
		v.RefreshSeconds = int64(math.Ceil(h.opts.Refresh.Seconds()))
	}
	var b bytes.Buffer
	b.Grow(64 << 10)
	if err := page.Execute(&b, v); err != nil {
		h.log.Error("rendering the status page", "err", err)
		http.Error(w, "rendering the status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy", fmt.Sprintf("default-src 'none'; style-src 'nonce-%[1]s'; script-src 'nonce-%[1]s'; "+
		"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'", v.Nonce))
	w.Write(b.Bytes())
}

// viewOf formats st for the page.
func viewOf(st Status) pageView {
	v := pageView{Status: st, BarWidth: barWidth, Title: "Lookaside status"}
	if st.Listen != "" {
		v.Title = "Lookaside " + st.Listen
	}
	switch {
	case st.Draining:
		v.Health = badge{"draining", "warn"}
	case st.Ready:
		v.Health = badge{"ready", "ok"}
	default:
		v.Health = badge{"not ready", "bad"}
	}
	if r := st.Build.Revision; r != "" {
		v.Revision = r[:min(len(r), 12)]
		if st.Build.Modified {
			v.Revision += "+dirty"
		}
	}
	now := st.Now
	if !st.Started.IsZero() {
		v.Uptime = formatDuration(now.Sub(st.Started))
	}
	v.NowISO = now.UTC().Format(time.RFC3339)
	v.NowText = now.UTC().Format("15:04:05 UTC")
	if c := st.Consul; c != nil {
		v.Consul = &consulView{
			Address:     c.Address,
			Reachable:   c.Reachable,
			LastContact: ago(now, c.LastContact),
			LastError:   c.LastError,
			LastErrorAt: ago(now, c.LastErrorAt),
		}
	}
	for _, s := range st.Services {
		v.Services = append(v.Services, serviceViewOf(s, now))
	}
	slices.SortFunc(v.Services, func(a, b serviceView) int { return strings.Compare(a.Name, b.Name) })
	return v
}

// shareViews fills the call shares and targets of eps: calls[i] calls,
// target weights targets[i] (nil: no target).
func shareViews(eps []endpointView, targets []float64) {
	var calls int64
	var wsum float64
	for _, e := range eps {
		calls += e.Calls
	}
	for _, t := range targets {
		wsum += t
	}
	for i := range eps {
		e := &eps[i]
		share := 0.0
		if calls > 0 {
			share = float64(e.Calls) / float64(calls)
			e.CallPct = formatPct(share)
		} else {
			e.CallPct = "–"
		}
		e.BarW = round1(share * barWidth)
		e.TargetPct = "–"
		if wsum > 0 && i < len(targets) {
			t := targets[i] / wsum
			e.HasTarget = true
			e.TargetPct = formatPct(t)
			e.TargetX = round1(math.Min(t*barWidth, barWidth-2))
		}
	}
}

// healthClass is the badge class of a Consul health status.
func healthClass(h string) string {
	switch strings.ToLower(h) {
	case "passing", "healthy", "serving":
		return "ok"
	case "warning":
		return "warn"
	case "":
		return ""
	default:
		return "bad"
	}
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }

// formatPct formats a share in [0, 1] as a percentage.
func formatPct(f float64) string {
	switch {
	case f <= 0:
		return "0%"
	case f < 0.001:
		return "<0.1%"
	}
	return fmt.Sprintf("%.1f%%", f*100)
}

// formatRate formats calls per second.
func formatRate(f float64) string {
	switch {
	case f >= 100:
		return fmt.Sprintf("%.0f/s", f)
	case f >= 10:
		return fmt.Sprintf("%.1f/s", f)
	}
	return fmt.Sprintf("%.2f/s", f)
}

// formatNum formats a weight or rate without needless digits.
func formatNum(f float64) string {
	switch {
	case f == math.Trunc(f) && math.Abs(f) < 1e9:
		return fmt.Sprintf("%.0f", f)
	case math.Abs(f) >= 100:
		return fmt.Sprintf("%.0f", f)
	case math.Abs(f) >= 10:
		return fmt.Sprintf("%.1f", f)
	}
	return fmt.Sprintf("%.2f", f)
}

// formatDuration formats d for a person: 850ms, 12.3s, 4m05s, 3h12m, 2d4h.
func formatDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
}

// formatLatency formats a latency with three significant digits or so:
// 850µs, 5.23ms, 20.1ms; "–" for 0 (unknown).
func formatLatency(d time.Duration) string {
	switch {
	case d <= 0:
		return "–"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < 10*time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	}
	return formatDuration(d)
}

// ago formats how long before now t was; "never" for the zero time.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return formatDuration(now.Sub(t)) + " ago"
}
