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

// Defaults of OutlierConfig.
const (
	DefaultOutlierFactor       = 2.0
	DefaultReadmitFactor       = 1.5
	DefaultMinExcess           = time.Millisecond
	DefaultEjectAfter          = 2 * time.Second
	DefaultMinOutlierEndpoints = 3
	DefaultMaxEjectedFraction  = 0.5
	DefaultBaseEjectionTime    = 5 * time.Second
	DefaultMaxEjectionTime     = 5 * time.Minute
	DefaultProbeShare          = 0.005
)

// Bounds of OutlierConfig's fields.
const (
	MaxOutlierFactor    = 1000.0
	MinOutlierEndpoints = 3
	MaxProbeShare       = 0.1
)

// OutlierConfig configures latency outlier detection (see the package
// doc): an endpoint much slower than its peers gets a probe share of the
// calls instead of its load weight. The names follow Envoy's outlier
// detection where they mean the same.
type OutlierConfig struct {
	// Enabled turns detection on. DefaultConfig sets it: the weights are
	// least_load's, which has it on by default.
	Enabled bool
	// Factor: an endpoint is ejected when its latency is above Factor ×
	// the median latency of the service's endpoints with known latency.
	// Default 2; must be in (1, 1000].
	Factor float64
	// ReadmitFactor: an ejected endpoint is readmitted, once its ejection
	// time is over, when its latency is at most ReadmitFactor × the
	// median. Below Factor, so that an endpoint near the line does not
	// flap. Default 1.5; must be in (1, Factor].
	ReadmitFactor float64
	// MinExcess: an endpoint is ejected only when its latency is also at
	// least MinExcess above the median (and readmitted when it is less),
	// so that services answering in microseconds do not eject on noise.
	// Default 1 ms; must not be negative.
	MinExcess time.Duration
	// EjectAfter is how long an endpoint's latency must stay above the
	// ejection line, from one Update to the next, before it is ejected,
	// so that a blip (a pause, a burst of slow calls in a short load
	// window) does not eject a backend that is not slow. Default 2 s; 0
	// ejects at the first Update above the line; must not be negative.
	EjectAfter time.Duration
	// MinEndpoints is how many endpoints must have a known latency for
	// any to be ejected (Envoy's success_rate_minimum_hosts). Default 3;
	// at least 3, so that the median is a peer's.
	MinEndpoints int
	// MaxEjectedFraction bounds the endpoints ejected at once, as a
	// fraction of the service's endpoints, rounded down but at least one
	// (Envoy's max_ejection_percent, and its one ejection past it); the
	// slowest are ejected first. Default 0.5; must be in (0, 1].
	MaxEjectedFraction float64
	// BaseEjectionTime is the least time an ejected endpoint stays
	// ejected (Envoy's base_ejection_time). An endpoint ejected again
	// within MaxEjectionTime of its readmission stays twice as long as the
	// last time, at most MaxEjectionTime, to damp oscillation. Default
	// 5 s; must be positive.
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps the ejection time (Envoy's max_ejection_time).
	// Default 5 min; must be at least BaseEjectionTime.
	MaxEjectionTime time.Duration
	// ProbeShare is the share of the service's calls each ejected
	// endpoint gets, so that it keeps reporting its latency on real calls
	// and is readmitted when it recovers; at most a tenth of an even
	// share (0.1 / endpoints). Default 0.005 (0.5 %); must be in
	// (0, 0.1]. least_load gives every endpoint at least one entry of its
	// list (at most 512 by default), so the share a client sees is at
	// least 1/entries.
	ProbeShare float64
}

// DefaultOutlierConfig returns an OutlierConfig with every default set,
// enabled: eject above 2× the median latency (and 1 ms over it) for 2 s,
// among at least 3 endpoints, readmit under 1.5×, at most half ejected, for 5 s at
// first and up to 5 min, with a 0.5 % probe share.
func DefaultOutlierConfig() OutlierConfig {
	return OutlierConfig{
		Enabled:            true,
		Factor:             DefaultOutlierFactor,
		ReadmitFactor:      DefaultReadmitFactor,
		MinExcess:          DefaultMinExcess,
		EjectAfter:         DefaultEjectAfter,
		MinEndpoints:       DefaultMinOutlierEndpoints,
		MaxEjectedFraction: DefaultMaxEjectedFraction,
		BaseEjectionTime:   DefaultBaseEjectionTime,
		MaxEjectionTime:    DefaultMaxEjectionTime,
		ProbeShare:         DefaultProbeShare,
	}
}

// validate returns the out-of-range fields of c, whether or not it is
// enabled (a disabled config may be enabled by a reload).
func (c OutlierConfig) validate() []error {
	var errs []error
	if !(c.Factor > 1 && c.Factor <= MaxOutlierFactor) {
		errs = append(errs, fmt.Errorf("outlier factor %v is not in (1, %v]", c.Factor, MaxOutlierFactor))
	}
	if !(c.ReadmitFactor > 1 && c.ReadmitFactor <= c.Factor) {
		errs = append(errs, fmt.Errorf("outlier readmit factor %v is not in (1, factor %v]", c.ReadmitFactor, c.Factor))
	}
	if c.MinExcess < 0 {
		errs = append(errs, fmt.Errorf("outlier min excess %v is negative", c.MinExcess))
	}
	if c.EjectAfter < 0 {
		errs = append(errs, fmt.Errorf("outlier eject-after %v is negative", c.EjectAfter))
	}
	if c.MinEndpoints < MinOutlierEndpoints {
		errs = append(errs, fmt.Errorf("outlier min endpoints %d is under %d", c.MinEndpoints, MinOutlierEndpoints))
	}
	if !(c.MaxEjectedFraction > 0 && c.MaxEjectedFraction <= 1) {
		errs = append(errs, fmt.Errorf("outlier max ejected fraction %v is not in (0, 1]", c.MaxEjectedFraction))
	}
	if c.BaseEjectionTime <= 0 {
		errs = append(errs, fmt.Errorf("outlier base ejection time %v is not positive", c.BaseEjectionTime))
	}
	if c.MaxEjectionTime < c.BaseEjectionTime {
		errs = append(errs, fmt.Errorf("outlier max ejection time %v is under the base ejection time %v", c.MaxEjectionTime, c.BaseEjectionTime))
	}
	if !(c.ProbeShare > 0 && c.ProbeShare <= MaxProbeShare) {
		errs = append(errs, fmt.Errorf("outlier probe share %v is not in (0, %v]", c.ProbeShare, MaxProbeShare))
	}
	return errs
}

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
	// Outliers configures latency outlier detection. Default
	// DefaultOutlierConfig(), enabled.
	Outliers OutlierConfig
}

// DefaultConfig returns a Config with every field set to its default:
// blackout 10 s, expiry 3 min, error penalty 1, smoothing 0.3, minimum
// weight 0.1 of the mean, change threshold 10 %, at most one publication a
// second, overload above utilization 0.9, at most half the calls dropped,
// latency outliers detected (DefaultOutlierConfig).
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
		Outliers:          DefaultOutlierConfig(),
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
	errs = append(errs, c.Outliers.validate()...)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("loadweight: invalid config: %w", err)
	}
	return nil
}
