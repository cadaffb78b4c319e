package policy

import "math"

// Drop tokens name why a drop entry is in a list. Clients count their dropped
// calls per token in ClientStats (calls_finished_with_drop), so the balancer
// can tell the reasons apart. They are under grpclb's 50-byte limit and never
// collide with backend tokens, which start with "be-".
const (
	// DropTokenOverload marks drops that shed load because every endpoint
	// of the service is overloaded.
	DropTokenOverload = "drop-overload"
	// DropTokenRateLimit marks drops that keep a service under its rate
	// limit.
	DropTokenRateLimit = "drop-ratelimit"
)

const (
	// MaxDropShare is the largest share of calls AddDrops drops; larger
	// shares count as MaxDropShare.
	MaxDropShare = 0.99
	// DropShareTolerance is how close to the asked share AddDrops tries to
	// come by repeating a short list (see AddDrops).
	DropShareTolerance = 0.005
)

// AddDrops returns entries with drop entries (Drop true, DropToken token)
// added, so that clients fail about share of their calls locally; grpc-go's
// grpclb client walks the whole list, drops included, once per call, with
// either child policy. entries is a list as a Policy returns it: non-empty,
// without drops. Every endpoint in entries keeps at least one entry, and the
// first entry stays first (pick_first clients keep their backend). A share
// that is NaN or not above 0 adds nothing and returns entries itself;
// shares above MaxDropShare count as MaxDropShare.
//
// The rules, with s the share, n the entries and d the drops:
//
//   - Count: d = round(s·n/(1−s)), half up, so that d/(n+d) is within
//     1/(2(n+d)) of s. A share too small for the list (d rounds to 0) adds
//     no drop: forcing one into a short list would drop far more than
//     asked.
//   - Precision: a short list is repeated whole, r times (r·n entries keep
//     every endpoint's share and the first entry), for the smallest r that
//     brings d/(r·n+d) within DropShareTolerance of s, or, if none fits in
//     maxEntries, for the r that comes closest (the smallest on a tie). For
//     example three endpoints and s = 0.2 give 12 entries and 3 drops
//     rather than 3 and 1 (a quarter).
//   - Bound: the list holds at most maxEntries entries (clamped to
//     [1, MaxMaxEntries]). When n/(1−s) exceeds it, entries are thinned
//     first to m = ⌊maxEntries·(1−s)⌋: each endpoint's count is scaled as
//     EntryCounts scales weights (at least one each), keeping its
//     occurrences spread evenly through the list in their order, its first
//     one always, so the first entry stays first. When the endpoints alone
//     leave too little room, each keeps one entry and the drops are at most
//     max(maxEntries−n, n): the bound yields to never dropping an endpoint,
//     and beyond a share of one half such a list drops less than asked.
//   - Order: drops are spread evenly: after the k-th of the L non-drop
//     entries come as many drops as make round(k·d/L) in all, so no list
//     starts with a drop, every prefix holds its share of drops to within
//     one half, and for s ≤ 0.5 (d ≤ L) no two drops are adjacent.
//
// AddDrops is pure, safe for concurrent use, and allocates the list it
// returns (plus scratch counts when it thins).
func AddDrops(entries []Entry, share float64, token string, maxEntries int) []Entry {
	if len(entries) == 0 || !(share > 0) {
		return entries
	}
	s := min(share, MaxDropShare)
	maxEntries = min(max(maxEntries, 1), MaxMaxEntries)

	base := entries
	if float64(len(base)) > float64(maxEntries)*(1-s) {
		base = thin(entries, max(int(float64(maxEntries)*(1-s)), 1))
	}
	n := len(base)
	drops := func(l int) int { return int(math.Floor(s*float64(l)/(1-s) + 0.5)) }
	shareErr := func(l, d int) float64 { return math.Abs(float64(d)/float64(l+d) - s) }

	reps, d := 1, min(drops(n), max(maxEntries-n, n))
	bestErr := shareErr(n, d)
	for r := 2; bestErr > DropShareTolerance; r++ {
		l := r * n
		dr := drops(l)
		if l+dr > maxEntries {
			break
		}
		if e := shareErr(l, dr); e < bestErr {
			reps, d, bestErr = r, dr, e
		}
	}
	if d == 0 {
		return entries
	}

	l := reps * n
	out := make([]Entry, 0, l+d)
	added := 0
	for k := 1; k <= l; k++ {
		out = append(out, base[(k-1)%n])
		// round(k·d/l), half up, in integers.
		for want := (2*k*d + l) / (2 * l); added < want; added++ {
			out = append(out, Entry{Drop: true, DropToken: token})
		}
	}
	return out
}

// thin returns about m of entries, keeping each endpoint's share as
// WeightCounts scales it (at least one entry each) and the order of the
// entries kept: of an endpoint's c occurrences scaled to c', the k-th
// (from 0) is kept when ⌈(k+1)·c'/c⌉ > ⌈k·c'/c⌉, which keeps the first
// and spreads the others evenly.
func thin(entries []Entry, m int) []Entry {
	top := 0
	for _, e := range entries {
		top = max(top, e.Index)
	}
	have := make([]int, top+1) // occurrences per index
	for _, e := range entries {
		have[e.Index]++
	}
	var present, weights []int
	for i, c := range have {
		if c > 0 {
			present = append(present, i)
			weights = append(weights, c)
		}
	}
	scaled, total := WeightCounts(weights, m)
	keep := make([]int, top+1)
	for j, i := range present {
		keep[i] = scaled[j]
	}
	seen := make([]int, top+1)
	out := make([]Entry, 0, total)
	for _, e := range entries {
		c, cc, k := have[e.Index], keep[e.Index], seen[e.Index]
		seen[e.Index]++
		if ceilDiv((k+1)*cc, c) > ceilDiv(k*cc, c) {
			out = append(out, e)
		}
	}
	return out
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
