package lbserver

import (
	"context"
	"log/slog"
	"math"
	"time"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy"
)

// planner turns one service's discovery snapshots, backend load reports
// and client stats into plans. Each service has one, running in its own
// goroutine (run), which owns every field below; the registry starts it
// and waits for it.
type planner struct {
	svc    *service
	choose chooser
	log    *slog.Logger
	stats  *clientstats.Registry
	now    func() time.Time

	collector *loadreport.Collector // nil without load reports
	weigher   *loadweight.Weigher   // nil without load reports
	rateLimit float64               // calls/s; 0 for none
	maxDrop   float64               // bound on the rate-limit drop share
	window    time.Duration         // over which the offered call rate is measured
	tokenKey  lbtoken.Key           // derives the entries' lb-tokens

	snap     discovery.Snapshot
	have     bool // snap holds a first answer
	polName  string
	pol      policy.Policy
	lastBad  string
	res      loadweight.Result
	rate     []rateSample // ring of client stats samples, oldest first
	rateDrop float64      // published rate-limit drop share
	next     time.Time    // when the weigher wants to be asked again
}

type rateSample struct {
	at      time.Time
	started int64
}

// offer hands a new snapshot to the planner: a mailbox of one, where a
// newer snapshot replaces one not yet taken. Only the watcher calls it.
func offer(box chan discovery.Snapshot, snap discovery.Snapshot) {
	select {
	case <-box:
	default:
	}
	box <- snap
}

// run plans until ctx is done, then closes the collector and forgets the
// service's client stats totals (unless a stream still reports to it).
func (p *planner) run(ctx context.Context, box <-chan discovery.Snapshot) {
	defer p.stats.ForgetService(p.svc.name)
	if p.collector != nil {
		defer p.collector.Close()
	}
	var tick <-chan time.Time
	if p.weigher != nil || p.rateLimit > 0 {
		// Smoothing and rate measurement move on with time even when no
		// report differs from the last.
		t := time.NewTicker(time.Second)
		defer t.Stop()
		tick = t.C
	}
	next := time.NewTimer(time.Hour)
	defer next.Stop()
	for {
		var loadsChanged <-chan struct{}
		if p.collector != nil {
			loadsChanged = p.collector.Changed()
		}
		if !p.next.IsZero() {
			next.Reset(max(p.next.Sub(p.now()), 0))
		}
		select {
		case snap := <-box:
			p.snap, p.have = snap, true
			if p.collector != nil {
				p.collector.Update(snap)
			}
			p.choosePolicy()
			p.plan(true)
		case <-loadsChanged:
			p.plan(false)
		case <-tick:
			p.sampleRate()
			p.plan(false)
		case <-next.C:
			p.next = time.Time{}
			p.plan(false)
		case <-ctx.Done():
			return
		}
	}
}

func (p *planner) choosePolicy() {
	name, pol, bad := p.choose(p.snap)
	if bad != "" && bad != p.lastBad {
		p.log.Warn("ignoring unknown policy in Consul meta", "key", PolicyMetaKey, "policy", bad, "using", name)
	}
	if name != p.polName {
		p.log.Info("service policy", "policy", name)
	}
	p.lastBad, p.polName, p.pol = bad, name, pol
}

// plan publishes a new plan when the snapshot changed, or when the load
// weights or a drop share changed enough to be worth new lists.
func (p *planner) plan(snapChanged bool) {
	if !p.have {
		return
	}
	changed := snapChanged
	if p.weigher != nil {
		res, published := p.weigher.Update(p.now(), p.snap.Endpoints, p.collector.Loads().Reports)
		p.next = res.NextUpdate
		if published || snapChanged {
			p.res = res
			changed = true
		}
	}
	if share := loadweight.RateLimitShare(p.rateLimit, p.offeredRate(), p.maxDrop); math.Abs(share-p.rateDrop) > 0.01 || (share == 0) != (p.rateDrop == 0) {
		if share > 0 || p.rateDrop > 0 {
			p.log.Info("rate limit drop share", "share", share, "limit", p.rateLimit, "offered", p.offeredRate())
		}
		p.rateDrop = share
		changed = true
	}
	if !changed {
		return
	}
	np := newPlan(p.snap, p.polName, p.pol, p.tokenKey)
	if len(p.res.Weights) == len(p.snap.Endpoints) {
		np.loadWeights = p.res.Weights
	}
	// One token per list: the larger cause of drops names them.
	np.dropShare, np.dropToken = p.res.DropShare, policy.DropTokenOverload
	if p.rateDrop > np.dropShare {
		np.dropShare, np.dropToken = p.rateDrop, policy.DropTokenRateLimit
	}
	p.svc.publish(np)
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
