package loadweight

import (
	"cmp"
	"math"
	"slices"
	"time"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/policy"
)

// Weight returns the gRFC A58 weight of a report: qps / (utilization +
// eps/qps × errorPenalty), where utilization is r.AppUtil when it is above
// 0, else r.CPU. It returns 0 when the report has no calls (QPS 0) or no
// utilization: such a report carries no weight. Reports whose values are
// NaN, negative or infinite count as those without (the Collector
// sanitizes them already).
func Weight(r loadreport.Report, errorPenalty float64) float64 {
	w, _, ok := sample(r, errorPenalty)
	if !ok {
		return 0
	}
	return w
}

// sample returns the weight and utilization of r, and whether it carries a
// weight.
func sample(r loadreport.Report, errorPenalty float64) (weight, util float64, ok bool) {
	util = r.AppUtil
	if !(util > 0) {
		util = r.CPU
	}
	qps, eps := r.QPS, r.EPS
	if !(util > 0) || !(qps > 0) || math.IsInf(util, 0) || math.IsInf(qps, 0) {
		return 0, 0, false
	}
	if !(eps > 0) || math.IsInf(eps, 0) {
		eps = 0
	}
	weight = qps / (util + eps/qps*errorPenalty)
	if !(weight > 0) || math.IsInf(weight, 0) {
		return 0, 0, false
	}
	return weight, util, true
}

// Result is what a Weigher publishes for a service. Its fields describe the
// endpoints as of its publication, except NextUpdate, which Update sets
// afresh on every call.
type Result struct {
	// Weights is aligned with the endpoints given to Update: the load
	// weight of each, normalized to a mean of 1, for policy.Input.LoadWeights.
	// Nil when there are no endpoints. Shared: it must not be modified.
	Weights []float64
	// Known is how many endpoints have known load (reported continuously
	// for the blackout period, and not expired).
	Known int
	// Utilization is the mean smoothed utilization of the endpoints with
	// known load; 0 when there are none.
	Utilization float64
	// DropShare is the share of calls to drop for overload, in
	// [0, Config.MaxDropShare]; see policy.AddDrops and
	// policy.DropTokenOverload.
	DropShare float64
	// Latencies is aligned with the endpoints: each one's smoothed mean
	// latency (Report.Concurrency / Report.QPS), 0 when unknown (the
	// endpoint does not send ConcurrencyMetric, or had no calls). Nil when
	// there are no endpoints. Shared: it must not be modified.
	Latencies []time.Duration
	// Outliers is aligned with the endpoints: true for those ejected as
	// latency outliers, which get Config.Outliers.ProbeShare of the calls
	// instead of their load weight. Nil when there are no endpoints.
	// Shared: it must not be modified.
	Outliers []bool
	// Ejected is how many endpoints are outliers.
	Ejected int
	// MedianLatency is the median of the known latencies, 0 when fewer
	// than Config.Outliers.MinEndpoints are known (nobody is ejected then).
	MedianLatency time.Duration
	// Ejections counts the ejections this Weigher has made since New, a
	// running total (the caller counts its increase).
	Ejections uint64
	// NextUpdate is the earliest time at which Update may publish without
	// new reports or endpoints: when a change held back by
	// Config.MinUpdateInterval may go out, when an endpoint's blackout
	// ends or its load expires, or when an ejection time ends. Zero when there is no such time. The
	// caller should call Update then (with a timer), as well as whenever
	// endpoints or loads change.
	NextUpdate time.Time
}

// Weigher computes the load weights of one service's endpoints from their
// load reports, smooths them, and decides when they changed enough to
// publish. It is deterministic: time comes only from Update's now.
//
// A Weigher is not safe for concurrent use: keep one per service and call
// it from one goroutine (or under the caller's lock).
type Weigher struct {
	// Read-only after construction.
	cfg Config

	states map[string]*endpoint // by endpoint ID
	gen    uint64               // the number of Update calls, to forget endpoints that left

	published    Result
	hasPublished bool
	pubAt        time.Time
	pubIDs       []string // the endpoints of published, in order
	pubConsul    []int    // and their Consul weights

	ejections uint64  // running total of ejections
	median    float64 // the median latency at the last Update (seconds)
	lastN     int     // the endpoints of the last Update; lats[:lastN] are theirs

	scratch []float64 // candidate weights, reused between Updates
	lats    []float64 // latencies (seconds; 0 unknown), reused
	sorted  []float64 // known latencies, sorted, reused
	outs    []bool    // outlier flags, reused
	order   []int     // endpoint indexes by latency, reused
}

// endpoint is the state of one endpoint's run of reports.
type endpoint struct {
	gen    uint64    // the last Update that saw the endpoint
	since  time.Time // when the run started (its first report's At); zero: no run
	lastAt time.Time // the At of the run's last report with a weight
	weight float64   // smoothed A58 weight
	util   float64   // smoothed utilization

	lat   float64   // smoothed latency in seconds; 0: unknown
	latAt time.Time // the At of the last report with a latency

	out ejection // kept when the run ends
}

// ejection is an endpoint's outlier state.
type ejection struct {
	ejected   bool
	above     time.Time     // since when its latency has been above the ejection line; zero: not above
	at        time.Time     // when last ejected
	length    time.Duration // how long the current (or last) ejection lasts at least
	readmitAt time.Time     // when last readmitted; zero: never
}

// New validates cfg and returns a Weigher that has published nothing.
func New(cfg Config) (*Weigher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Weigher{cfg: cfg, states: map[string]*endpoint{}}, nil
}

// Config returns the Weigher's configuration.
func (w *Weigher) Config() Config { return w.cfg }

// Published returns the last published Result (zero before the first
// Update), with NextUpdate as of that publication.
func (w *Weigher) Published() Result { return w.published }

// Update takes the service's endpoints (sorted by ID, as in a discovery
// Snapshot) and their current load reports by endpoint ID (a
// loadreport.Loads's Reports; nil when there are none) at time now, and
// returns the weights in force and whether they are new, that is whether
// the caller should rebuild its lists with them. When it returns false the
// Result is the last published one, with a fresh NextUpdate.
//
// Each report is taken into the moving averages once: reports are told
// apart by their At, so calling Update again with the same reports changes
// nothing but what time does (blackout ends, expiry). Call it whenever the
// endpoints or the loads change, and at Result.NextUpdate. The Collector
// refreshes At for reports that repeat the same values without signalling a
// change; to take those in as well, call Update about once per report
// interval while the service is active.
//
// Update does not block and does not retain eps or reports. It allocates
// only when it publishes, or when an endpoint is new.
func (w *Weigher) Update(now time.Time, eps []discovery.Endpoint, reports map[string]loadreport.Report) (Result, bool) {
	cfg := w.cfg
	w.gen++
	n := len(eps)
	if cap(w.scratch) < n {
		w.scratch = make([]float64, n)
		w.lats = make([]float64, n)
		w.outs = make([]bool, n)
	}
	cand, lats, outs := w.scratch[:n], w.lats[:n], w.outs[:n]
	w.lastN = n

	var next time.Time
	soonest := func(t time.Time) {
		if t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	known, overloaded := 0, n > 0
	var sumUtil float64
	for i, e := range eps {
		st := w.states[e.ID]
		if st == nil {
			st = &endpoint{}
			w.states[e.ID] = st
		}
		st.gen = w.gen
		r, ok := reports[e.ID]
		st.observe(now, r, ok, cfg)
		lats[i] = st.lat
		if st.lat > 0 {
			soonest(st.latAt.Add(cfg.Expiry))
		}
		cand[i] = 0 // unknown
		if st.since.IsZero() {
			overloaded = false
			continue
		}
		soonest(st.lastAt.Add(cfg.Expiry))
		if now.Sub(st.since) < cfg.BlackoutPeriod {
			soonest(st.since.Add(cfg.BlackoutPeriod))
			overloaded = false
			continue
		}
		cand[i] = st.weight
		known++
		sumUtil += st.util
		if !(st.util > cfg.OverloadThreshold) {
			overloaded = false
		}
	}
	for id, st := range w.states {
		if st.gen != w.gen {
			delete(w.states, id)
		}
	}
	median := w.detectOutliers(now, eps, lats, outs, soonest)
	w.median = median

	// Fill in unknown endpoints and the floor among the endpoints that are
	// not outliers, then give each outlier its probe share, then
	// normalize.
	ejected, knownIn := 0, 0
	var sumKnown, sumKnownConsul float64
	for i, e := range eps {
		switch {
		case outs[i]:
			ejected++
		case cand[i] > 0:
			knownIn++
			sumKnown += cand[i]
			sumKnownConsul += float64(policy.ClampWeight(e.Weight))
		}
	}
	var sum float64
	if knownIn == 0 {
		for i, e := range eps {
			if !outs[i] {
				cand[i] = float64(policy.ClampWeight(e.Weight))
				sum += cand[i]
			}
		}
	} else {
		perConsul := sumKnown / sumKnownConsul
		floor := cfg.MinWeightFraction * sumKnown / float64(knownIn)
		for i, e := range eps {
			switch {
			case outs[i]:
			case cand[i] == 0:
				cand[i] = float64(policy.ClampWeight(e.Weight)) * perConsul
				sum += cand[i]
			default:
				cand[i] = max(cand[i], floor)
				sum += cand[i]
			}
		}
	}
	if ejected > 0 {
		// Each outlier gets share of the total: w = share·(sum + k·w).
		// detectOutliers leaves at least one endpoint in, so sum > 0, and
		// k·share ≤ 0.1.
		share := min(cfg.Outliers.ProbeShare, 0.1/float64(n))
		probe := share * sum / (1 - float64(ejected)*share)
		for i := range cand {
			if outs[i] {
				cand[i] = probe
			}
		}
		sum += float64(ejected) * probe
	}
	for i := range cand {
		cand[i] *= float64(n) / sum
	}
	var util, drop float64
	if known > 0 {
		util = sumUtil / float64(known)
	}
	if overloaded {
		drop = min(1-cfg.OverloadThreshold/util, cfg.MaxDropShare)
	}

	endpointsChanged := !w.hasPublished || !w.sameEndpoints(eps)
	if !endpointsChanged && !w.changedEnough(cand, drop) && slices.Equal(outs, w.published.Outliers) {
		res := w.published
		res.NextUpdate = next
		return res, false
	}
	if hold := w.pubAt.Add(cfg.MinUpdateInterval); !endpointsChanged && now.Before(hold) {
		res := w.published
		res.NextUpdate = hold
		if !next.IsZero() && next.Before(hold) {
			res.NextUpdate = next
		}
		return res, false
	}

	w.published = Result{
		Known: known, Utilization: util, DropShare: drop, Ejected: ejected,
		MedianLatency: seconds(median), Ejections: w.ejections,
	}
	if n > 0 {
		w.published.Weights = slices.Clone(cand)
		w.published.Outliers = slices.Clone(outs)
		w.published.Latencies = make([]time.Duration, n)
		for i, l := range lats {
			w.published.Latencies[i] = seconds(l)
		}
	}
	w.hasPublished = true
	w.pubAt = now
	w.pubIDs = w.pubIDs[:0]
	w.pubConsul = w.pubConsul[:0]
	for _, e := range eps {
		w.pubIDs = append(w.pubIDs, e.ID)
		w.pubConsul = append(w.pubConsul, e.Weight)
	}
	res := w.published
	res.NextUpdate = next
	w.published.NextUpdate = next
	return res, true
}

// Latencies appends to dst the smoothed latency of each endpoint given to
// the last Update (aligned with them; 0 when unknown) and returns it with
// the median latency then (0 when too few are known). Unlike
// Result.Latencies, which are as of the last publication, these are as of
// the last Update, published or not: for display. It does not block;
// not safe for concurrent use (a Weigher is owned by one goroutine).
func (w *Weigher) Latencies(dst []time.Duration) ([]time.Duration, time.Duration) {
	for _, l := range w.lats[:min(len(w.lats), w.lastN)] {
		dst = append(dst, seconds(l))
	}
	return dst, seconds(w.median)
}

// seconds converts a latency in seconds to a Duration.
func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// observe takes the endpoint's current report r (ok false when it has
// none) into its run at now.
func (st *endpoint) observe(now time.Time, r loadreport.Report, ok bool, cfg Config) {
	if !ok {
		*st = endpoint{gen: st.gen, out: st.out} // the run ends
		return
	}
	if lat, usable := latency(r); usable && r.At.After(st.latAt) {
		if st.lat == 0 || r.At.Sub(st.latAt) >= cfg.Expiry {
			st.lat = lat
		} else {
			st.lat = cfg.Smoothing*lat + (1-cfg.Smoothing)*st.lat
		}
		st.latAt = r.At
	}
	if st.lat > 0 && now.Sub(st.latAt) >= cfg.Expiry {
		st.lat, st.latAt = 0, time.Time{}
	}
	if weight, util, usable := sample(r, cfg.ErrorPenalty); usable && r.At.After(st.lastAt) {
		if st.since.IsZero() || r.At.Sub(st.lastAt) >= cfg.Expiry {
			st.since, st.weight, st.util = r.At, weight, util
		} else {
			a := cfg.Smoothing
			st.weight = a*weight + (1-a)*st.weight
			st.util = a*util + (1-a)*st.util
		}
		st.lastAt = r.At
	}
	if !st.since.IsZero() && now.Sub(st.lastAt) >= cfg.Expiry {
		*st = endpoint{gen: st.gen, lat: st.lat, latAt: st.latAt, out: st.out} // expired
	}
}

// latency returns the mean latency of r in seconds by Little's law,
// Concurrency / QPS, and whether r carries one (both above 0 and finite).
func latency(r loadreport.Report) (float64, bool) {
	c, q := r.Concurrency, r.QPS
	if !(c > 0) || !(q > 0) || math.IsInf(c, 0) || math.IsInf(q, 0) {
		return 0, false
	}
	l := c / q
	return l, l > 0 && !math.IsInf(l, 0)
}

// detectOutliers readmits and ejects latency outliers among eps, whose
// smoothed latencies are lats (seconds, 0 unknown), at now; it sets outs
// (aligned with eps) and returns the median latency, 0 when too few are
// known. It tells soonest when an ejection ends.
func (w *Weigher) detectOutliers(now time.Time, eps []discovery.Endpoint, lats []float64, outs []bool, soonest func(time.Time)) (median float64) {
	oc := w.cfg.Outliers
	n := len(eps)
	w.sorted = w.sorted[:0]
	for _, l := range lats {
		if l > 0 {
			w.sorted = append(w.sorted, l)
		}
	}
	if len(w.sorted) >= oc.MinEndpoints {
		slices.Sort(w.sorted)
		m := len(w.sorted) / 2
		median = w.sorted[m]
		if len(w.sorted)%2 == 0 {
			median = (w.sorted[m-1] + median) / 2
		}
	}
	minExcess := oc.MinExcess.Seconds()
	// above reports whether latency l is over factor × the median, and by
	// at least the minimum excess.
	above := func(l, factor float64) bool {
		return median > 0 && l > 0 && l > factor*median && l-median >= minExcess
	}
	limit := 0
	if oc.Enabled && n > 1 {
		limit = min(max(int(oc.MaxEjectedFraction*float64(n)), 1), n-1)
	}

	// Readmissions: the ejection time is over and the latency is no
	// longer over the readmission line (or cannot be judged), or
	// detection is off.
	ejected := 0
	for i, e := range eps {
		out := &w.states[e.ID].out
		if out.ejected {
			end := out.at.Add(out.length)
			if limit == 0 || (!now.Before(end) && !above(lats[i], oc.ReadmitFactor)) {
				out.ejected, out.readmitAt = false, now
			} else {
				soonest(end)
				ejected++
			}
		}
		outs[i] = out.ejected
	}

	// Ejections, the slowest first, up to the limit; if endpoints left and
	// too many are ejected, the fastest of them are readmitted.
	// An endpoint is a candidate once it has been above the line for
	// EjectAfter.
	w.order = w.order[:0]
	for i, e := range eps {
		out := &w.states[e.ID].out
		switch {
		case outs[i]:
			out.above = time.Time{}
			w.order = append(w.order, i)
		case !above(lats[i], oc.Factor):
			out.above = time.Time{}
		case out.above.IsZero() && oc.EjectAfter > 0:
			out.above = now
			soonest(now.Add(oc.EjectAfter))
		case now.Sub(out.above) >= oc.EjectAfter:
			w.order = append(w.order, i)
		default:
			soonest(out.above.Add(oc.EjectAfter))
		}
	}
	// The ejected keep their places; then the slowest first.
	slices.SortStableFunc(w.order, func(a, b int) int {
		if outs[a] != outs[b] {
			if outs[a] {
				return -1
			}
			return 1
		}
		return cmp.Compare(lats[b], lats[a])
	})
	for rank, i := range w.order {
		out := &w.states[eps[i].ID].out
		switch {
		case rank >= limit && out.ejected:
			out.ejected, out.readmitAt, outs[i] = false, now, false
		case rank < limit && !out.ejected:
			// Ejected again soon after its readmission: twice as long
			// as the last time.
			if !out.readmitAt.IsZero() && now.Sub(out.readmitAt) < oc.MaxEjectionTime {
				out.length = min(2*out.length, oc.MaxEjectionTime)
			} else {
				out.length = oc.BaseEjectionTime
			}
			out.ejected, out.at, outs[i] = true, now, true
			w.ejections++
			soonest(now.Add(out.length))
		}
	}
	return median
}

// sameEndpoints reports whether eps has the IDs and Consul weights of the
// published endpoints.
func (w *Weigher) sameEndpoints(eps []discovery.Endpoint) bool {
	if len(eps) != len(w.pubIDs) {
		return false
	}
	for i, e := range eps {
		if e.ID != w.pubIDs[i] || e.Weight != w.pubConsul[i] {
			return false
		}
	}
	return true
}

// changedEnough reports whether some weight or the drop share moved by more
// than the change threshold from the published ones. The endpoints are the
// published ones.
func (w *Weigher) changedEnough(cand []float64, drop float64) bool {
	t := w.cfg.ChangeThreshold
	for i, c := range cand {
		if p := w.published.Weights[i]; math.Abs(c-p) > t*p {
			return true
		}
	}
	p := w.published.DropShare
	return (p == 0) != (drop == 0) || math.Abs(drop-p) > t*p
}

// RateLimitShare returns the share of calls to drop so that a service
// offered observedQPS calls per second passes about limitQPS:
// 1 − limitQPS/observedQPS, at most maxShare, and 0 when the service is
// within its limit, when limitQPS is not positive (no limit) or when an
// argument is NaN. observedQPS should count the calls clients started,
// dropped ones included (as ClientStats num_calls_started does), so that
// the share does not feed back on itself. Use the result with
// policy.AddDrops and policy.DropTokenRateLimit.
func RateLimitShare(limitQPS, observedQPS, maxShare float64) float64 {
	if !(limitQPS > 0) || !(observedQPS > limitQPS) || !(maxShare > 0) {
		return 0
	}
	return min(1-limitQPS/observedQPS, maxShare, 1)
}

// SetConfig validates cfg and makes it the Weigher's from the next Update,
// or returns the error and changes nothing. The endpoints' smoothed state
// is kept. Not safe for concurrent use (a Weigher is owned by one
// goroutine).
func (w *Weigher) SetConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	w.cfg = cfg
	return nil
}
