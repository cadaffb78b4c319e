package lbserver

import (
	"context"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/leastload"
)

// planner turns one service's discovery snapshots, backend load reports
// and client stats into plans. Each service has one, running in its own
// goroutine (run), which owns every field below; the registry starts it
// and waits for it.
type planner struct {
	svc      *service
	settings func() *live // the settings in force
	log      *slog.Logger
	ops      *serviceLog
	stats    *clientstats.Registry
	now      func() time.Time

	// loadConfig configures the load collector; nil when the server
	// collects no load reports.
	loadConfig *loadreport.Config
	collector  *loadreport.Collector // nil while no decision uses load (syncLoads)
	weigher    *loadweight.Weigher   // nil with collector
	rateLimit  float64               // calls/s; 0 for none
	maxDrop    float64               // bound on the rate-limit drop share
	window     time.Duration         // over which the offered call rate is measured
	tokenKey   lbtoken.Key           // derives the entries' lb-tokens

	snap      discovery.Snapshot
	arrived   time.Time // when snap arrived from the watcher
	have      bool      // snap holds a first answer
	polName   string
	polSource string
	pol       policy.Policy
	maxList   int // the policy's MaxEntries
	lastBad   string
	res       loadweight.Result
	ejections uint64          // latency outlier ejections since the service was watched
	seenEj    uint64          // the weigher's running total of ejections already counted
	outliers  map[string]bool // IDs of the endpoints ejected in res
	lat       []time.Duration // the endpoints' latencies shown (Weigher.Latencies)
	median    time.Duration   // and their median
	latBuf    []time.Duration // scratch for Weigher.Latencies
	rate      []rateSample    // ring of client stats samples, oldest first
	rateDrop  float64         // published rate-limit drop share
	next      time.Time       // when the weigher wants to be asked again
}

type rateSample struct {
	at      time.Time
	started int64
}

// arrival is a snapshot and when the watcher received it.
type arrival struct {
	snap discovery.Snapshot
	at   time.Time
}

// offer hands a new snapshot to the planner: a mailbox of one, where a
// newer snapshot replaces one not yet taken. Only the watcher calls it.
func offer(box chan arrival, snap discovery.Snapshot) {
	select {
	case <-box:
	default:
	}
	box <- arrival{snap: snap, at: time.Now()}
}

// run plans until ctx is done, then closes the collector and forgets the
// service's client stats totals (unless a stream still reports to it).
func (p *planner) run(ctx context.Context, box <-chan arrival) {
	defer p.stats.ForgetService(p.svc.name)
	defer loadViews.Delete(p.svc)
	defer p.stopLoads()
	p.applySettings()
	p.syncLoads()
	// Smoothing and rate measurement move on with time even when no
	// report differs from the last: a tick while there are load weights
	// or a rate limit (which a reconfiguration may add or remove).
	var ticker *time.Ticker
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	next := time.NewTimer(time.Hour)
	defer next.Stop()
	for {
		var tick <-chan time.Time
		switch ticking := p.weigher != nil || p.rateLimit > 0; {
		case ticking && ticker == nil:
			ticker = time.NewTicker(time.Second)
		case !ticking && ticker != nil:
			ticker.Stop()
			ticker = nil
			p.rate = p.rate[:0]
		}
		if ticker != nil {
			tick = ticker.C
		}
		var loadsChanged <-chan struct{}
		if p.collector != nil {
			loadsChanged = p.collector.Changed()
		}
		if !p.next.IsZero() {
			next.Reset(max(p.next.Sub(p.now()), 0))
		}
		select {
		case a := <-box:
			p.snap, p.arrived, p.have = a.snap, a.at, true
			if p.collector != nil {
				p.collector.Update(a.snap)
			}
			p.choosePolicy()
			p.syncLoads()
			p.plan(true, false)
		case <-p.svc.reconf:
			p.applySettings()
			p.syncLoads()
			p.plan(false, true)
		case <-loadsChanged:
			p.plan(false, false)
		case <-tick:
			p.sampleRate()
			p.plan(false, false)
		case <-next.C:
			p.next = time.Time{}
			p.plan(false, false)
		case <-ctx.Done():
			return
		}
	}
}

// usesLoads reports whether a decision of the service uses its endpoints'
// load reports: its policy is least_load (load weights), or it sets its own
// overload drop bound (services.<name>.max_drop_share). Only then does the
// planner collect them: a service under another policy collects nothing
// and drops no call for overload. Before the first snapshot no policy is
// known and nothing is collected.
func (p *planner) usesLoads() bool {
	if p.loadConfig == nil || !p.have {
		return false
	}
	return p.polName == leastload.Name || p.settings().service(p.svc.name).MaxDropShare > 0
}

// syncLoads starts the load collector and weigher when usesLoads, and
// stops them (forgetting load weights and overload drops) when not. Called
// after each policy choice; a stop blocks until the streams have ended.
func (p *planner) syncLoads() {
	switch want := p.usesLoads(); {
	case want && p.collector == nil:
		c, err := loadreport.NewCollector(*p.loadConfig)
		if err != nil {
			// validate built one with the same config.
			p.log.Error("no load reports for this service", "err", err)
			return
		}
		w, err := loadweight.New(p.settings().weightConfig(p.svc.name, p.polName))
		if err != nil {
			c.Close()
			p.log.Error("no load reports for this service", "err", err)
			return
		}
		c.Update(p.snap)
		p.collector, p.weigher, p.seenEj = c, w, 0
		p.svc.collector.Store(c)
		p.log.Info("collecting load reports", "policy", p.polName, "endpoints", len(p.snap.Endpoints))
	case !want && p.collector != nil:
		p.stopLoads()
		p.log.Info("no longer collecting load reports", "policy", p.polName)
	}
}

// stopLoads closes the load collector, if any, and forgets the load
// weights and overload drops. It blocks until the streams have ended.
func (p *planner) stopLoads() {
	if p.collector == nil {
		return
	}
	p.svc.collector.Store(nil)
	p.collector.Close()
	p.collector, p.weigher = nil, nil
	p.res, p.next, p.outliers, p.lat, p.median = loadweight.Result{}, time.Time{}, nil, nil, 0
	p.storeView()
}

// applySettings takes the service's settings in force: rate limit, drop
// bounds, load-weight config, policy.
func (p *planner) applySettings() {
	l := p.settings()
	if limit := l.rateLimit(p.svc.name); limit != p.rateLimit {
		if p.rateLimit > 0 || limit > 0 {
			p.log.Info("rate limit", "limit", limit, "was", p.rateLimit)
		}
		p.rateLimit = limit
	}
	p.maxDrop = l.maxRateLimitDrop(p.svc.name)
	if p.have {
		p.choosePolicy() // and the weigher's config
	}
}

func (p *planner) choosePolicy() {
	l := p.settings()
	name, source, pol, bad := l.choosePolicy(p.snap)
	if bad != "" && bad != p.lastBad {
		p.log.Warn("ignoring unknown policy in Consul meta", "key", PolicyMetaKey, "policy", bad, "using", name)
	}
	if name != p.polName {
		p.log.Info("service policy", "policy", name, "source", source)
	}
	p.lastBad, p.polName, p.polSource, p.pol = bad, name, source, pol
	p.maxList = l.service(p.svc.name).options(l.PolicyOptions).MaxEntries
	if p.weigher != nil {
		// The settings or the policy may have changed: outliers are
		// detected under least_load only.
		if err := p.weigher.SetConfig(l.weightConfig(p.svc.name, name)); err != nil {
			// Reconfigure validated it.
			p.log.Error("load-weight settings refused; keeping the previous ones", "err", err)
		}
		p.storeView()
	}
}

// plan publishes a new plan when the snapshot changed (snapChanged), the
// settings changed (force), or the load weights or a drop share changed
// enough to be worth new lists.
func (p *planner) plan(snapChanged, force bool) {
	if !p.have {
		return
	}
	changed := snapChanged || force
	if p.weigher != nil {
		res, published := p.weigher.Update(p.now(), p.snap.Endpoints, p.collector.Loads().Reports)
		p.next = res.NextUpdate
		lat, median := p.weigher.Latencies(p.latBuf[:0])
		p.latBuf = lat
		view := p.latenciesMoved(lat, median)
		if published || snapChanged || force {
			if published {
				p.logOutliers(res)
			}
			p.res = res
			changed = true
			view = true
		}
		if view {
			p.storeView()
		}
	}
	offered := p.offeredRate()
	p.svc.offered.Store(math.Float64bits(offered))
	if share := loadweight.RateLimitShare(p.rateLimit, offered, p.maxDrop); math.Abs(share-p.rateDrop) > 0.01 || (share == 0) != (p.rateDrop == 0) {
		if share > 0 || p.rateDrop > 0 {
			p.log.Info("rate limit drop share", "share", share, "limit", p.rateLimit, "offered", offered)
		}
		p.rateDrop = share
		changed = true
	}
	if !changed {
		return
	}
	np := newPlan(p.snap, p.polName, p.pol, p.tokenKey)
	np.policySource, np.maxEntries = p.polSource, p.maxList
	np.arrived, np.fromSnap = p.arrived, snapChanged
	np.rateLimit = p.rateLimit
	if len(p.res.Weights) == len(p.snap.Endpoints) {
		np.loadWeights, np.load = p.res.Weights, p.res
	}
	// The policy's work shared by every stream is done here, once per
	// plan (with the service's policy options); streams only do what
	// depends on their client.
	if np.policy != nil {
		np.prepared = np.policy.Prepare(policy.PlanInput{Endpoints: np.snap.Endpoints, LoadWeights: np.loadWeights})
	}
	np.overloadDrop, np.rateDrop = p.res.DropShare, p.rateDrop
	// One token per list: the larger cause of drops names them.
	np.dropShare, np.dropToken = p.res.DropShare, policy.DropTokenOverload
	if p.rateDrop > np.dropShare {
		np.dropShare, np.dropToken = p.rateDrop, policy.DropTokenRateLimit
	}
	if snapChanged && len(p.snap.Endpoints) == 0 {
		p.ops.info(p.svc.name, "no passing instance: clients get fallback", "service", quote(p.svc.name), "index", p.snap.Index)
	}
	p.svc.publish(np)
}

// loadViews holds, for Status, what each running planner knows of its
// service's latencies beyond its plan (*service → *loadView): the plan
// carries the outlier decisions its weights came from (plan.load), but
// latencies move with every report, and a plan is made only when weights
// change enough. Each planner stores its own entry and deletes it when it
// stops.
var loadViews sync.Map

// loadView is what Status shows of a service's latencies. Immutable.
type loadView struct {
	res       loadweight.Result // the Result in force (its Outliers are the plan's)
	ejections uint64            // since the service was watched
	enabled   bool              // outliers are detected
	lat       []time.Duration   // latencies of the planner's endpoints, as of its last Update
	median    time.Duration
}

// loadViewOf returns the latest loadView of svc, nil when none.
func loadViewOf(svc *service) *loadView {
	v, _ := loadViews.Load(svc)
	lv, _ := v.(*loadView)
	return lv
}

// storeView publishes p.res and the ejection count for Status.
func (p *planner) storeView() {
	v := &loadView{res: p.res, ejections: p.ejections, lat: p.lat, median: p.median}
	if p.weigher != nil {
		v.enabled = p.weigher.Config().Outliers.Enabled
	}
	loadViews.Store(p.svc, v)
}

// latenciesMoved takes lat and median as the latencies shown when they
// differ from those by more than 1 % (or in number), and reports whether
// they did.
func (p *planner) latenciesMoved(lat []time.Duration, median time.Duration) bool {
	moved := len(lat) != len(p.lat) || far(median, p.median)
	for i := 0; !moved && i < len(lat); i++ {
		moved = far(lat[i], p.lat[i])
	}
	if moved {
		p.lat, p.median = slices.Clone(lat), median
	}
	return moved
}

// far reports whether a and b differ by more than 1 % of b.
func far(a, b time.Duration) bool { return (a-b).Abs()*100 > b }

// logOutliers counts and logs the ejections and readmissions of res, a
// new publication, against the endpoints ejected before.
func (p *planner) logOutliers(res loadweight.Result) {
	if res.Ejections > p.seenEj {
		p.ejections += res.Ejections - p.seenEj
		p.seenEj = res.Ejections
	}
	now := map[string]bool{}
	for i, e := range p.snap.Endpoints {
		if i >= len(res.Outliers) || !res.Outliers[i] {
			continue
		}
		now[e.ID] = true
		if !p.outliers[e.ID] {
			p.log.Info("latency outlier ejected", "endpoint", e.ID, "latency", res.Latencies[i], "median", res.MedianLatency, "ejected", res.Ejected)
		}
	}
	for i, e := range p.snap.Endpoints {
		if p.outliers[e.ID] && !now[e.ID] && i < len(res.Latencies) {
			p.log.Info("latency outlier readmitted", "endpoint", e.ID, "latency", res.Latencies[i], "median", res.MedianLatency)
		}
	}
	p.outliers = now
}

// sampleRate records the calls clients reported starting (each stream's
// share capped: clientstats.Counters.Offered), for the rate limit.
func (p *planner) sampleRate() {
	if p.rateLimit <= 0 {
		return
	}
	now := p.now()
	offered := p.stats.Service(p.svc.name).Offered
	if n := len(p.rate); n > 0 && offered < p.rate[n-1].started {
		// The totals were forgotten and started again: measure afresh.
		p.rate = p.rate[:0]
	}
	p.rate = append(p.rate, rateSample{at: now, started: offered})
	for len(p.rate) > 2 && now.Sub(p.rate[1].at) >= p.window {
		p.rate = p.rate[1:]
	}
}

// offeredRate is the rate of calls clients started, drops included, over
// the last window; 0 until the window has two samples. Until the samples
// span a whole window, the calls are divided by the window all the same
// (a young service's rate is underestimated, never overestimated), so
// that the bound of Config.MaxClientRateShare holds from the start.
func (p *planner) offeredRate() float64 {
	if len(p.rate) < 2 {
		return 0
	}
	first, last := p.rate[0], p.rate[len(p.rate)-1]
	d := max(last.at.Sub(first.at), p.window).Seconds()
	if d <= 0 {
		return 0
	}
	return float64(last.started-first.started) / d
}
