// Package loadgen runs closed-loop load against a gRPC service and
// summarizes it: calls per backend, failures by code, latency percentiles
// and distribution. The end-to-end tests and the bench command
// (tools/bench) share it, so that both measure the same way.
package loadgen

import (
	"context"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Call makes one call and returns the ID of the backend that served it.
// It must be safe for concurrent use.
type Call func(ctx context.Context) (backend string, err error)

// Result is what a load did. Its methods only read it.
type Result struct {
	// Calls counts the successful calls per backend ID.
	Calls map[string]int
	// Failures counts the failed calls per gRPC status code.
	Failures map[codes.Code]int
	// Latencies holds the latency of every successful call, in the order
	// the calls ended.
	Latencies []time.Duration
	// Elapsed is the time from the start of the load until its last call
	// ended.
	Elapsed time.Duration
}

// ClosedLoop runs workers goroutines that each call back to back, one call
// at a time, until d has passed, ctx ends or the worker has made
// maxPerWorker calls (≤ 0: no bound on the count). It blocks until every
// worker has stopped and returns what happened.
func ClosedLoop(ctx context.Context, workers int, d time.Duration, maxPerWorker int, call Call) Result {
	res := Result{Calls: map[string]int{}, Failures: map[codes.Code]int{}}
	var mu sync.Mutex // guards res while the workers run
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range workers {
		wg.Go(func() {
			for i := 0; (maxPerWorker <= 0 || i < maxPerWorker) && ctx.Err() == nil; i++ {
				begin := time.Now()
				if !begin.Before(deadline) {
					return
				}
				id, err := call(ctx)
				took := time.Since(begin)
				mu.Lock()
				if err != nil {
					res.Failures[status.Code(err)]++
				} else {
					res.Calls[id]++
					res.Latencies = append(res.Latencies, took)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

// Add adds the calls of o to r, as if they had been made in one load:
// counts and latencies are added, and so are the elapsed times. A zero r
// is ready to add to.
func (r *Result) Add(o Result) {
	if r.Calls == nil {
		r.Calls = map[string]int{}
	}
	if r.Failures == nil {
		r.Failures = map[codes.Code]int{}
	}
	for id, n := range o.Calls {
		r.Calls[id] += n
	}
	for c, n := range o.Failures {
		r.Failures[c] += n
	}
	r.Latencies = append(r.Latencies, o.Latencies...)
	r.Elapsed += o.Elapsed
}

// Total returns the number of successful calls.
func (r Result) Total() int {
	n := 0
	for _, c := range r.Calls {
		n += c
	}
	return n
}

// Share returns backend id's share of the successful calls (0 with none).
func (r Result) Share(id string) float64 {
	total := r.Total()
	if total == 0 {
		return 0
	}
	return float64(r.Calls[id]) / float64(total)
}

// Rate returns the successful calls per second over Elapsed (0 if none).
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Total()) / r.Elapsed.Seconds()
}

// Percentile returns the latency that a share p (0 to 1) of the successful
// calls did not exceed: the value at rank ⌊p·n⌋ of the sorted latencies
// (the largest for p = 1); 0 without calls.
func (r Result) Percentile(p float64) time.Duration {
	return percentile(r.sorted(), p)
}

// Mean returns the mean latency of the successful calls; 0 without calls.
func (r Result) Mean() time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range r.Latencies {
		sum += d
	}
	return sum / time.Duration(len(r.Latencies))
}

// CDF returns at most points points of the latency distribution: for each,
// a latency and the share of the successful calls that took at most that
// long, both increasing, the last share 1. The points are spaced evenly in
// share, and the slowest call is always included.
func (r Result) CDF(points int) (latency []time.Duration, share []float64) {
	s := r.sorted()
	n := len(s)
	if n == 0 || points <= 0 {
		return nil, nil
	}
	step := max(1, n/points)
	for i := step - 1; i < n; i += step {
		latency = append(latency, s[i])
		share = append(share, float64(i+1)/float64(n))
	}
	if share[len(share)-1] != 1 {
		latency = append(latency, s[n-1])
		share = append(share, 1)
	}
	return latency, share
}

func (r Result) sorted() []time.Duration {
	s := slices.Clone(r.Latencies)
	slices.Sort(s)
	return s
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[max(0, min(len(sorted)-1, int(p*float64(len(sorted)))))]
}
