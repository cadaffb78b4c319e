package policy

import (
	"errors"
	"fmt"
)

// Defaults and limits of Options.
const (
	// DefaultMaxEntries is the default Options.MaxEntries.
	DefaultMaxEntries = 512
	// MaxMaxEntries is the largest Options.MaxEntries accepted. A grpclb
	// entry takes about 60 bytes on the wire, so the longest list stays
	// near 1 MiB, well under the 4 MiB message limit of gRPC clients.
	MaxMaxEntries = 16384
	// DefaultHashSubset is the default Options.HashSubset.
	DefaultHashSubset = 1
)

// Options configures the policies made by Build. Start from DefaultOptions;
// Build rejects values out of range (it never clamps them), so that a typo in
// configuration fails at startup instead of balancing differently. Each
// policy reads only the fields that concern it.
type Options struct {
	// MaxEntries bounds the length of the lists of the weighted policies
	// (weighted_round_robin, weighted_random), which repeat an endpoint once
	// per unit of weight; see EntryCounts for how weights are reduced to fit.
	// When a service has more endpoints than MaxEntries, every endpoint
	// still gets its one entry: the bound yields to never dropping an
	// endpoint. Default 512; must be in [1, MaxMaxEntries].
	MaxEntries int
	// HashSubset is how many endpoints source_hash gives each client (k):
	// the k with the highest scores for the client's address. A client with
	// the round_robin child spreads its calls over all k; a client with
	// pick_first uses the first, and fails over along the others. Services
	// with fewer endpoints give all of theirs. Default 1; must be in
	// [1, MaxEntries].
	HashSubset int
}

// DefaultOptions returns Options with every field set to its default.
func DefaultOptions() Options {
	return Options{
		MaxEntries: DefaultMaxEntries,
		HashSubset: DefaultHashSubset,
	}
}

// Validate reports every field of o that is out of range, or nil.
func (o Options) Validate() error {
	var errs []error
	if o.MaxEntries < 1 || o.MaxEntries > MaxMaxEntries {
		errs = append(errs, fmt.Errorf("max entries %d is not in [1, %d]", o.MaxEntries, MaxMaxEntries))
	}
	if o.HashSubset < 1 || o.HashSubset > max(o.MaxEntries, 1) {
		errs = append(errs, fmt.Errorf("hash subset %d is not in [1, max entries %d]", o.HashSubset, o.MaxEntries))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("policy: invalid options: %w", err)
	}
	return nil
}
