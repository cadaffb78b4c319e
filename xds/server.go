package xds

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/lookaside-lb/lookaside/internal/logthrottle"
	"github.com/lookaside-lb/lookaside/internal/recvloop"
)

// ErrUnknown is what a Feed's Subscribe returns (wrapped) for a name no
// service answers to. The server then leaves the resource out of its
// responses, which a gRPC client reports as "resource not found".
var ErrUnknown = errors.New("xds: unknown service")

// Feed is the balancer the xDS face serves from: it maps the names clients
// ask for to services and follows their assignments. Implementations must
// be safe for concurrent use.
type Feed interface {
	// Subscribe starts following the service that answers to name (a
	// listener, route or cluster name). notify is called, without
	// blocking and from any goroutine, after every change of the
	// subscription's assignment until Close returns. It returns an error
	// wrapping ErrUnknown for a name no service answers to, and another
	// error when a limit refuses the subscription. It does not block.
	Subscribe(name string, notify func()) (Subscription, error)
}

// Appearer may be implemented by a Feed whose unknown names can come to
// exist (a service registered after a client asked for it): a stream that
// holds names Subscribe refused subscribes to them again whenever the
// channel of its last Appeared call is closed.
type Appearer interface {
	// Appeared returns a channel that is closed when a name Subscribe
	// refused since this call may be accepted now; nil for never. It
	// does not block.
	Appeared() <-chan struct{}
}

// Subscription follows one service for one stream.
type Subscription interface {
	// Assignment returns the service's current assignment, and false
	// while the balancer has none yet (before Consul's first answer).
	Assignment() (Assignment, bool)
	// Close ends the subscription; notify is not called after it returns.
	Close()
}

// StreamFeed may be implemented by a Feed that tells the streams apart,
// to count the streams that follow each service: the server then calls
// SubscribeStream instead of Subscribe, with the same stream ID for every
// subscription of one ADS stream and a different one for every stream of
// the Server.
type StreamFeed interface {
	// SubscribeStream is Subscribe for stream (at least 1). A stream's
	// subscriptions all have the same notify.
	SubscribeStream(stream uint64, name string, notify func()) (Subscription, error)
}

// Mover may be implemented by a Subscription whose name can come to
// answer to another service (the balancer's aliases reloaded). Before
// each look at a subscription's assignment the stream asks Moved; when it
// reports true the stream subscribes to the name again, closes this
// subscription, and sends its client the other service's resources under
// the names it asked for, with new versions (or leaves the name out of
// its responses if Subscribe refuses it now). The Feed calls notify when
// a subscription moves, so that its stream asks.
type Mover interface {
	// Moved reports whether the subscription's name answers to another
	// service now. It is called from the stream's goroutine and must not
	// block.
	Moved() bool
}

// Defaults and bounds of Options.
const (
	// DefaultMaxNames is the default Options.MaxNames.
	DefaultMaxNames = 100
	// nackLogInterval bounds the NACK log lines: one per resource type per
	// interval, whatever the clients give as reasons.
	nackLogInterval = time.Minute
)

// Options configure a Server.
type Options struct {
	// MaxNames bounds how many resource names of one type a stream may
	// subscribe to; a request naming more ends the stream with
	// ResourceExhausted. Default DefaultMaxNames.
	MaxNames int
	// LRS makes Clusters point clients at this server for their load
	// reports (lrs_server: self).
	LRS bool
	// Logger receives the server's logs (component=xds). Default
	// slog.Default().
	Logger *slog.Logger
	// OnNACK, when set, is called for every NACK a client sends: the
	// resource type and the client's reason. It must not block.
	OnNACK func(typeURL, reason string)
}

// Server is an Aggregated Discovery Service (State of the World) for
// gRPC's xDS clients: Listener → RouteConfiguration → Cluster →
// ClusterLoadAssignment for every service a client names, from a Feed.
// Register it on a grpc.Server with Register. Safe for concurrent use.
type Server struct {
	discoverypb.UnimplementedAggregatedDiscoveryServiceServer

	// Read-only after New.
	feed     Feed
	maxNames int
	log      *slog.Logger
	nackLog  *logthrottle.Logger
	onNACK   func(typeURL, reason string)
	cache    *cache // the resources made, shared by the streams

	streamSeq atomic.Uint64 // the last stream's ID
}

// New returns a Server that serves from feed.
func New(feed Feed, opts Options) *Server {
	if opts.MaxNames <= 0 {
		opts.MaxNames = DefaultMaxNames
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "xds")
	return &Server{
		feed:     feed,
		maxNames: opts.MaxNames,
		log:      log,
		nackLog:  logthrottle.New(log, nackLogInterval),
		onNACK:   opts.OnNACK,
		cache:    newCache(opts.LRS, log),
	}
}

// Register registers s as the ADS service of gs.
func (s *Server) Register(gs grpc.ServiceRegistrar) {
	discoverypb.RegisterAggregatedDiscoveryServiceServer(gs, s)
}

// typeOrder is the order in which a stream sends its pending types: a
// client follows Listener → Route → Cluster → Endpoints.
var typeOrder = [...]string{ListenerType, RouteType, ClusterType, EndpointType}

// StreamAggregatedResources serves one ADS stream until the client ends it
// or its context is done. It runs on the stream's goroutine, with one
// more goroutine receiving requests.
func (s *Server) StreamAggregatedResources(stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	st := &adsStream{
		srv:   s,
		id:    s.streamSeq.Add(1),
		send:  stream.Send,
		subs:  map[string]*subRef{},
		types: map[string]*typeState{},
		wake:  make(chan struct{}, 1),
	}
	defer st.closeAll()

	reqs, recvErr := recvloop.Start(ctx, stream.Recv)
	// appeared is taken before any Subscribe it covers, and again each
	// time it fires, so that no name that comes to exist is missed.
	ap, _ := s.feed.(Appearer)
	var appeared <-chan struct{}
	if ap != nil {
		appeared = ap.Appeared()
	}
	for {
		var retry <-chan struct{}
		if st.refused() {
			retry = appeared
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case err := <-recvErr:
			return recvEnd(err)
		case req := <-reqs:
			if err := st.handle(req); err != nil {
				return err
			}
		case <-st.wake:
			// flush finds what changed.
		case <-retry:
			appeared = ap.Appeared()
			st.resubscribe()
		}
		if err := st.flush(); err != nil {
			return err
		}
	}
}

// DeltaAggregatedResources is not served: gRPC clients use State of the
// World.
func (s *Server) DeltaAggregatedResources(discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return status.Error(codes.Unimplemented, "xds: delta xDS is not served; use state of the world")
}

// adsStream is one ADS stream's state, owned by its handler goroutine.
type adsStream struct {
	srv   *Server
	id    uint64 // for StreamFeed
	send  func(*discoverypb.DiscoveryResponse) error
	node  string
	subs  map[string]*subRef    // by name, over every type
	types map[string]*typeState // by type URL, once the client asked
	wake  chan struct{}         // a subscription changed
	nonce uint64                // the last nonce sent
}

// subRef is a subscription shared by the types that name it, with the
// resources last made for it.
type subRef struct {
	sub  Subscription // nil: unknown or refused (err)
	err  error
	refs int

	seen bool                       // b and res are set
	b    *clusterBuild              // of the assignment it had; nil: none yet
	res  [len(typeOrder)]*anypb.Any // by typeOrder; nil: none (shared with other streams)
}

// typeState is one resource type's state in a stream.
type typeState struct {
	url     string
	i       int          // in typeOrder
	names   []string     // subscribed, sorted, unique
	version uint64       // of the last response
	nonce   string       // of the last response; "" before the first
	sent    []*anypb.Any // in the last response (shared with other streams)
	stale   bool         // the resource of a name changed since the last flush
	asked   bool         // the client asked since the last response
}

// handle takes in one request: an ACK, a NACK, or a change of the names
// the client subscribes to.
func (st *adsStream) handle(req *discoverypb.DiscoveryRequest) error {
	url := req.GetTypeUrl()
	if !slices.Contains(typeOrder[:], url) {
		return status.Errorf(codes.InvalidArgument, "xds: resource type %s is not served", logthrottle.Quote(url))
	}
	if st.node == "" {
		st.node = req.GetNode().GetId()
	}
	t := st.types[url]
	if t == nil {
		t = &typeState{url: url, i: slices.Index(typeOrder[:], url)}
		st.types[url] = t
	}
	// A NACK counts even when it answers an older response: the client
	// rejected what it was sent.
	if d := req.GetErrorDetail(); d != nil && req.GetResponseNonce() != "" {
		reason := d.GetMessage()
		// Keyed by the type alone (one of four, checked above): the reason
		// and node are the client's, so keying by them would let a client
		// fill the throttle's table and the log with reasons of its own.
		st.srv.nackLog.LogKey(context.Background(), slog.LevelWarn, url, "xDS client rejected a resource",
			"node", logthrottle.Quote(st.node), "type", url, "version", logthrottle.Quote(req.GetVersionInfo()), "reason", logthrottle.Quote(reason))
		if st.srv.onNACK != nil {
			st.srv.onNACK(url, reason)
		}
	}
	if n := req.GetResponseNonce(); n != "" && n != t.nonce {
		return nil // answers an older response; the client will ask again
	}
	names := req.GetResourceNames() // sorted in place: the request is the handler's
	slices.Sort(names)
	names = slices.Compact(names)
	if len(names) > st.srv.maxNames {
		return status.Errorf(codes.ResourceExhausted, "xds: %d %s names in one request, at most %d", len(names), url, st.srv.maxNames)
	}
	if req.GetResponseNonce() == "" || !slices.Equal(names, t.names) {
		t.asked = true
	}
	for _, n := range names {
		if !slices.Contains(t.names, n) {
			st.acquire(n)
		}
	}
	for _, n := range t.names {
		if !slices.Contains(names, n) {
			st.release(n)
		}
	}
	if !slices.Equal(names, t.names) {
		t.names = names
	}
	return nil
}

// acquire adds a reference to name's subscription, subscribing on the
// first.
func (st *adsStream) acquire(name string) {
	if r := st.subs[name]; r != nil {
		r.refs++
		return
	}
	sub, err := st.subscribe(name)
	st.subs[name] = &subRef{sub: sub, err: err, refs: 1}
	if err != nil && !errors.Is(err, ErrUnknown) {
		st.srv.log.Debug("xDS subscription refused", "name", logthrottle.Quote(name), "err", err)
	}
}

// subscribe subscribes to name for the stream.
func (st *adsStream) subscribe(name string) (Subscription, error) {
	if sf, ok := st.srv.feed.(StreamFeed); ok {
		return sf.SubscribeStream(st.id, name, st.notify)
	}
	return st.srv.feed.Subscribe(name, st.notify)
}

// release drops a reference to name's subscription, closing it with the
// last.
func (st *adsStream) release(name string) {
	r := st.subs[name]
	if r == nil {
		return
	}
	if r.refs--; r.refs == 0 {
		if r.sub != nil {
			r.sub.Close()
		}
		delete(st.subs, name)
	}
}

// refused reports whether the stream holds a name Subscribe refused.
func (st *adsStream) refused() bool {
	for _, r := range st.subs {
		if r.sub == nil {
			return true
		}
	}
	return false
}

// resubscribe subscribes again to the names Subscribe refused; the next
// flush sends those accepted now.
func (st *adsStream) resubscribe() {
	for name, r := range st.subs {
		if r.sub == nil {
			r.sub, r.err = st.subscribe(name)
		}
	}
}

func (st *adsStream) closeAll() {
	for name, r := range st.subs {
		if r.sub != nil {
			r.sub.Close()
		}
		delete(st.subs, name)
	}
}

// notify is every subscription's change callback: it wakes the handler.
func (st *adsStream) notify() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// flush sends, in type order, a response for every type whose resources
// differ from what was last sent, or that the client asked for anew.
func (st *adsStream) flush() error {
	for name, r := range st.subs {
		if m, ok := r.sub.(Mover); ok && m.Moved() {
			st.move(name, r)
		}
		st.refresh(name, r)
	}
	for _, url := range typeOrder {
		t := st.types[url]
		if t == nil || (!t.asked && !t.stale) {
			continue
		}
		res, ready := st.resources(t)
		if !ready {
			continue // a subscribed cluster's first assignment is pending
		}
		t.stale = false
		if !t.asked && slices.EqualFunc(res, t.sent, sameAny) {
			continue
		}
		t.asked = false
		t.version++
		st.nonce++
		t.nonce = strconv.FormatUint(st.nonce, 10)
		t.sent = res
		if err := st.send(&discoverypb.DiscoveryResponse{
			VersionInfo: strconv.FormatUint(t.version, 10),
			TypeUrl:     url,
			Nonce:       t.nonce,
			Resources:   res,
		}); err != nil {
			return err
		}
	}
	return nil
}

// move subscribes to name again for r, whose subscription answers to
// another service now, and closes the old subscription. refresh then
// finds the new service's assignment and marks stale the types whose
// resource changed (the Route, Cluster and ClusterLoadAssignment). A name
// refused now is left out of the responses: the types naming it are
// marked stale, and it is subscribed to again when the Feed's Appeared
// fires.
func (st *adsStream) move(name string, r *subRef) {
	old := r.sub
	r.sub, r.err = st.subscribe(name)
	old.Close()
	if r.sub != nil {
		return
	}
	if !errors.Is(r.err, ErrUnknown) {
		st.srv.log.Debug("xDS subscription refused", "name", logthrottle.Quote(name), "err", r.err)
	}
	for _, url := range typeOrder {
		if t := st.types[url]; t != nil {
			if _, named := slices.BinarySearch(t.names, name); named {
				t.stale = true
			}
		}
	}
	r.seen, r.b, r.res = false, nil, [len(typeOrder)]*anypb.Any{}
}

// refresh looks at r's assignment and, when it is not the one r's
// resources were made from, takes the new ones from the server's cache
// and marks stale the types that name r and whose resource changed: an
// endpoint leaving changes the ClusterLoadAssignment alone. Costs a look
// at the assignment when nothing changed.
func (st *adsStream) refresh(name string, r *subRef) {
	if r.sub == nil {
		return
	}
	a, ok := r.sub.Assignment()
	// The Cluster and ClusterLoadAssignment are named after the name the
	// client asked for, not the service it maps to: when new settings map
	// the name to another service, the client sees new endpoints in the
	// cluster it has, rather than a route to a cluster it has yet to ask
	// for (grpc-go fails calls meanwhile).
	a.Cluster = name
	if r.seen && ok == (r.b != nil) && (!ok || sameAssignment(a, r.b.a)) {
		return
	}
	c := st.srv.cache
	var b *clusterBuild // held by r, which keeps it in the cache
	var res [len(typeOrder)]*anypb.Any
	res[0] = c.listener(name)
	if ok {
		if b = c.cluster(a); b.cla != nil {
			res[1], res[2], res[3] = c.route(name, name, a.Shape), b.cluster, b.cla
		}
	}
	for i, url := range typeOrder {
		// A Cluster response waits for every cluster's first assignment,
		// so one arriving counts as a change.
		changed := !sameAny(res[i], r.res[i]) || url == ClusterType && ok != (r.b != nil)
		if t := st.types[url]; changed && t != nil {
			if _, named := slices.BinarySearch(t.names, name); named {
				t.stale = true
			}
		}
	}
	r.seen, r.b, r.res = true, b, res
}

// resources returns the resources of t's subscribed names that exist, in
// name order, and whether they are ready to send. A Listener needs only
// its service to exist; the other types need the service's assignment.
// Listeners and Clusters wait until every existing subscribed service has
// its first assignment, since a client takes a name missing from their
// responses as a resource removed.
func (st *adsStream) resources(t *typeState) ([]*anypb.Any, bool) {
	var out []*anypb.Any
	for _, name := range t.names {
		r := st.subs[name]
		if r == nil || r.sub == nil {
			continue
		}
		if t.url == ClusterType && r.b == nil {
			return nil, false
		}
		if x := r.res[t.i]; x != nil {
			out = append(out, x)
		}
	}
	return out, true
}
