package loadweight

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/lookaside-lb/lookaside/policy"
)

// Defaults of Config.
const (
	DefaultBlackoutPeriod    = 10 * time.Second
	DefaultExpiry            = 3 * time.Minute
	DefaultErrorPenalty      = 1.0
	DefaultSmoothing         = 0.3
	DefaultMinWeightFraction = 0.1
	DefaultChangeThreshold   = 0.1
	DefaultMinUpdateInterval = time.Second
	DefaultOverloadThreshold = 0.9
	DefaultMaxDropShare      = 0.5
)

// Config configures a Weigher. Start from DefaultConfig; New rejects values
// out of range (it never clamps them), so that a typo in configuration
// fails at startup instead of balancing differently.
type Config struct {
	// BlackoutPeriod is how long an endpoint must report continuously
	// before its load counts: until then it is weighted as an endpoint
	// without load reports. It keeps a backend that just started (cold
	// caches, a JIT warming up, a QPS averaged over a few calls) from
	// drawing traffic on its first optimistic reports. Default 10 s, as in
	// gRFC A58; 0 disables it; must not be negative.
	BlackoutPeriod time.Duration
	// Expiry is how old an endpoint's last report with a weight may get
	// before its load counts as unknown, and how far apart two reports may
	// be within one run (see the package doc). The Collector already drops
	// reports after its much shorter TTL; this is a guard for reports
	// without calls, which keep the last weight (as in A58). Default
	// 3 min; must be positive.
	Expiry time.Duration
	// ErrorPenalty weighs errors in the A58 weight: qps / (utilization +
	// eps/qps × ErrorPenalty). At 1, an endpoint failing every call counts
	// as one more unit of utilization busier. Default 1; must be finite and
	// not negative.
	ErrorPenalty float64
	// Smoothing is the weight α of each new report in the moving averages
	// of an endpoint's weight and utilization: avg ← α·new + (1−α)·avg.
	// At the Collector's default 1 s report interval, 0.3 follows a step
	// change 90 % of the way in about 6.5 s. Default 0.3; must be in
	// (0, 1], where 1 turns smoothing off.
	Smoothing float64
	// MinWeightFraction is the least weight of an endpoint with known load,
	// as a fraction of the mean of the known weights, so that no endpoint
	// starves and every one keeps reporting on real traffic. Default 0.1;
	// must be in [0, 1].
	MinWeightFraction float64
	// ChangeThreshold is how much an endpoint's normalized weight, or the
	// drop share, must change relative to its published value before new
	// weights are published: 0.1 means by more than 10 %. Default 0.1;
	// must be finite and not negative (0 publishes every change).
	ChangeThreshold float64
	// MinUpdateInterval is the least time between two publications, except
	// that changes of the endpoints themselves are published at once.
	// Default 1 s; must not be negative.
	MinUpdateInterval time.Duration
	// OverloadThreshold is the utilization above which an endpoint is
	// overloaded; calls are dropped when every endpoint is. Default 0.9;
	// must be positive and finite.
	OverloadThreshold float64
	// MaxDropShare bounds Result.DropShare, so that an overloaded service
	// still serves most calls and keeps reporting. Default 0.5; must be in
	// [0, policy.MaxDropShare]; 0 turns overload drops off.
	MaxDropShare float64
}

// DefaultConfig returns a Config with every field set to its default:
// blackout 10 s, expiry 3 min, error penalty 1, smoothing 0.3, minimum
// weight 0.1 of the mean, change threshold 10 %, at most one publication a
// second, overload above utilization 0.9, at most half the calls dropped.
func DefaultConfig() Config {
	return Config{
		BlackoutPeriod:    DefaultBlackoutPeriod,
		Expiry:            DefaultExpiry,
		ErrorPenalty:      DefaultErrorPenalty,
		Smoothing:         DefaultSmoothing,
		MinWeightFraction: DefaultMinWeightFraction,
		ChangeThreshold:   DefaultChangeThreshold,
		MinUpdateInterval: DefaultMinUpdateInterval,
		OverloadThreshold: DefaultOverloadThreshold,
		MaxDropShare:      DefaultMaxDropShare,
	}
}

// Validate reports every field of c that is out of range, or nil.
func (c Config) Validate() error {
	var errs []error
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	if c.BlackoutPeriod < 0 {
		errs = append(errs, fmt.Errorf("blackout period %v is negative", c.BlackoutPeriod))
	}
	if c.Expiry <= 0 {
		errs = append(errs, fmt.Errorf("expiry %v is not positive", c.Expiry))
	}
	if !finite(c.ErrorPenalty) || c.ErrorPenalty < 0 {
		errs = append(errs, fmt.Errorf("error penalty %v is not finite and non-negative", c.ErrorPenalty))
	}
	if !(c.Smoothing > 0 && c.Smoothing <= 1) {
		errs = append(errs, fmt.Errorf("smoothing %v is not in (0, 1]", c.Smoothing))
	}
	if !(c.MinWeightFraction >= 0 && c.MinWeightFraction <= 1) {
		errs = append(errs, fmt.Errorf("min weight fraction %v is not in [0, 1]", c.MinWeightFraction))
	}
	if !finite(c.ChangeThreshold) || c.ChangeThreshold < 0 {
		errs = append(errs, fmt.Errorf("change threshold %v is not finite and non-negative", c.ChangeThreshold))
	}
	if c.MinUpdateInterval < 0 {
		errs = append(errs, fmt.Errorf("min update interval %v is negative", c.MinUpdateInterval))
	}
	if !finite(c.OverloadThreshold) || c.OverloadThreshold <= 0 {
		errs = append(errs, fmt.Errorf("overload threshold %v is not finite and positive", c.OverloadThreshold))
	}
	if !(c.MaxDropShare >= 0 && c.MaxDropShare <= policy.MaxDropShare) {
		errs = append(errs, fmt.Errorf("max drop share %v is not in [0, %v]", c.MaxDropShare, policy.MaxDropShare))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("loadweight: invalid config: %w", err)
	}
	return nil
}
