package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"

	"github.com/lookaside-lb/lookaside/discovery"
)

// Client is what a balancer stream knows about the client it serves.
type Client struct {
	// Addr is the client's IP as seen by the balancer (the stream's peer).
	// Behind NAT many clients share one. Zero when unknown.
	Addr netip.Addr
	// Name is the name the client sent in its initial request.
	Name string
	// Seed is a random number fixed for the lifetime of the stream, for
	// per-stream choices that must be reproducible in tests.
	Seed uint64
}

// Input is everything a policy may look at.
type Input struct {
	// Endpoints are the service's usable endpoints, sorted by ID, never empty.
	Endpoints []discovery.Endpoint
	// Client is the client the list is for.
	Client Client
	// Previous are the endpoint IDs of the list last sent to this stream, in
	// order, or nil for the first list. Policies use it to keep a stream's
	// choice sticky across endpoint changes.
	Previous []string
	// Assigned is aligned with Endpoints: Assigned[i] is the number of this
	// balancer's streams whose current first entry is Endpoints[i], not
	// counting the stream the list is for (least_connections reads it).
	// Nil when the balancer does not count; policies then treat every count
	// as zero, as they do for indexes past its end.
	Assigned []int
	// LoadWeights, when not nil, is aligned with Endpoints: LoadWeights[i]
	// is the weight of Endpoints[i] derived from the service's load reports
	// (the Result.Weights of a loadweight.Weigher), relative to the others.
	// least_load reads it; other policies ignore it. Nil when the balancer
	// has no load weights for the service; least_load then uses each
	// Endpoint.Weight, and it also does so when the length differs from
	// Endpoints or a value is not positive and finite.
	LoadWeights []float64
}

// PlanInput is what a policy prepares from, once per plan: everything in
// Input that is the same for every stream of a service at one moment.
type PlanInput struct {
	// Endpoints are the service's usable endpoints, sorted by ID (see
	// Input.Endpoints). They are retained by the Prepared value, which does
	// not modify them.
	Endpoints []discovery.Endpoint
	// LoadWeights is as in Input.LoadWeights.
	LoadWeights []float64
}

// StreamInput is what is left of Input once a policy has prepared: what
// one stream knows about its client, and the balancer's counts.
type StreamInput struct {
	// Client, Previous and Assigned are as in Input; Assigned is aligned
	// with the PlanInput.Endpoints the Prepared value was made from.
	Client   Client
	Previous []string
	Assigned []int
}

// Plan returns the part of in that a policy prepares from.
func (in Input) Plan() PlanInput {
	return PlanInput{Endpoints: in.Endpoints, LoadWeights: in.LoadWeights}
}

// Stream returns the per-stream part of in.
func (in Input) Stream() StreamInput {
	return StreamInput{Client: in.Client, Previous: in.Previous, Assigned: in.Assigned}
}

// Entry is one entry of a server list.
type Entry struct {
	// Index is the position in Input.Endpoints of the endpoint this entry
	// sends calls to; ignored for drop entries.
	Index int
	// Drop makes clients fail the calls that pick this entry locally.
	Drop bool
	// DropToken names the reason for a drop; clients count drops per token.
	DropToken string
}

// Policy computes server lists in two steps: Prepare, once per plan (a
// service's endpoints and load weights at one moment), does what is the
// same for every stream, such as building a weighted sequence; the
// Prepared value's List, once per stream and per plan, does only what
// depends on the client. Implementations must be safe for concurrent use
// and must not modify their inputs.
type Policy interface {
	// Prepare returns the policy's immutable state for in, which it may
	// retain (it does not modify it). It does not block, and takes the
	// time that building a list once takes.
	Prepare(in PlanInput) Prepared
	// List is Prepare(in.Plan()).List(in.Stream()): the ordered server
	// list for in.Client. It is non-empty for non-empty in.Endpoints and
	// does not block. It retains nothing of in.
	List(in Input) []Entry
}

// Prepared is a Policy's state for one plan. It is immutable and safe for
// concurrent use by every stream of the plan.
type Prepared interface {
	// List returns the ordered server list for in.Client, the same as
	// Policy.List for the Input that joins the PlanInput prepared from and
	// in. It is non-empty for non-empty endpoints, does not block, and
	// does not retain in. The list is the caller's.
	List(in StreamInput) []Entry
}

// Builder makes a Policy from its name's registration.
type Builder interface {
	// Name is the policy's name in configuration (for example
	// "round_robin").
	Name() string
	// Build returns a ready Policy. opts has passed Validate; a policy
	// ignores the fields that do not concern it.
	Build(opts Options) Policy
}

var (
	mu       sync.RWMutex
	builders = map[string]Builder{} // guarded by mu
)

// Register makes a policy available by name. It is meant to be called from
// init functions and panics if the name is taken.
func Register(b Builder) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := builders[b.Name()]; dup {
		panic("policy: Register called twice for " + b.Name())
	}
	builders[b.Name()] = b
}

// Build returns the policy registered under name, configured by opts. It
// fails if the name is unknown (the error names the known policies) or opts
// does not pass Validate. Safe for concurrent use.
func Build(name string, opts Options) (Policy, error) {
	mu.RLock()
	b, ok := builders[name]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("policy: unknown policy %q (known: %v)", name, Names())
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return b.Build(opts), nil
}

// Names returns the registered policy names, sorted.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	names := make([]string, 0, len(builders))
	for n := range builders {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// IndexOf returns the position of the endpoint with the given ID in eps
// (sorted by ID, as in Input.Endpoints), or -1.
func IndexOf(eps []discovery.Endpoint, id string) int {
	i, ok := slices.BinarySearchFunc(eps, id, func(e discovery.Endpoint, id string) int {
		switch {
		case e.ID < id:
			return -1
		case e.ID > id:
			return 1
		}
		return 0
	})
	if !ok {
		return -1
	}
	return i
}

// PreviousFirst returns the position in eps of the first entry of the list
// last sent to the stream (in.Previous[0]), or -1 if there was none or that
// endpoint left.
func (in StreamInput) PreviousFirst(eps []discovery.Endpoint) int {
	if len(in.Previous) == 0 {
		return -1
	}
	return IndexOf(eps, in.Previous[0])
}

// PreviousFirst returns the position in in.Endpoints of the first entry of
// the list last sent to the stream, or -1 if there was none or that endpoint
// left. Policies that keep a stream's first entry start from it.
func (in Input) PreviousFirst() int {
	if len(in.Previous) == 0 {
		return -1
	}
	return IndexOf(in.Endpoints, in.Previous[0])
}
