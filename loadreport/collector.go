package loadreport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	orcasvc "github.com/cncf/xds/go/xds/service/orca/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/clock"
)

// Defaults and bounds of Config.
const (
	DefaultInterval           = time.Second
	MinCollectInterval        = 10 * time.Millisecond
	MaxCollectInterval        = time.Minute
	MinDefaultTTL             = 3 * time.Second
	DefaultBackoffBase        = 250 * time.Millisecond
	DefaultBackoffMax         = 30 * time.Second
	DefaultUnimplementedRetry = 5 * time.Minute
	// MaxStretchedTTL bounds how far the TTL stretches for endpoints that
	// report less often than asked (see Config.TTL).
	MaxStretchedTTL = 2 * time.Minute
)

// keepaliveTime is how often a grpc.ClientConn stream's connection (see
// Config.DialOptions) is pinged to find a dead peer. Five minutes is the
// least interval gRPC servers accept by default.
const keepaliveTime = 5 * time.Minute

// Config configures a Collector. Start from DefaultConfig; NewCollector
// also gives zero fields their defaults. Negative durations are rejected.
type Config struct {
	// Interval is the report_interval each stream asks for, from
	// MinCollectInterval to MaxCollectInterval (10 ms to 1 min); values
	// outside are rejected. Default 1 s. Reporters may grant a longer one
	// (the Reporter's floor defaults to 1 s, grpc-go's orca service's is
	// 30 s).
	Interval time.Duration
	// TTL is how long a report stays fresh after it arrived. Default
	// 3×Interval, at least 3 s; values under 2×Interval are raised to
	// 2×Interval. For an endpoint that sends reports further apart than
	// asked, a report stays fresh for 3× the last gap seen between two of
	// its reports when that is longer, up to MaxStretchedTTL (2 min), so
	// that such endpoints do not flap between reported and absent.
	TTL time.Duration
	// BackoffBase and BackoffMax bound the wait before a failed stream is
	// retried: BackoffBase doubled after each consecutive failure up to
	// BackoffMax, times a random factor in [0.8, 1.2). A stream that
	// delivered a report resets the sequence. Defaults 250 ms and 30 s;
	// BackoffMax is raised to BackoffBase when lower.
	BackoffBase, BackoffMax time.Duration
	// UnimplementedRetry is how long to wait before asking again an
	// endpoint that answered Unimplemented (it serves no ORCA). Default
	// 5 min. An endpoint whose address changes is asked at once.
	UnimplementedRetry time.Duration
	// Credentials secure each stream's connection, for backends that
	// serve ORCA over TLS: for example tlsfiles.Store.ClientCredentials,
	// which verifies each backend (dialed by IP address) against the
	// store's CA bundle and server name and offers its client certificate,
	// reloading them as their files change; or credentials.NewTLS.
	// Nil means plaintext (insecure credentials), the default.
	Credentials credentials.TransportCredentials
	// DialOptions, when set, make each stream a call on a grpc.ClientConn
	// of its own with these options added after the defaults
	// (Credentials, keepalive every 5 min, small buffers). Without them,
	// the default, each stream is the collector's own HTTP/2 call on the
	// stream's goroutine (about 20 KiB per endpoint instead of 80: see
	// docs/RELIABILITY.md), which dials again a stream silent for
	// max(MaxStretchedTTL, 3×Interval) instead of pinging.
	DialOptions []grpc.DialOption
	// Logger receives the collector's logs (component=loadreport). Default
	// slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns a Config with every default set: 1 s interval, 3 s
// TTL, backoff 250 ms to 30 s, Unimplemented endpoints asked again after
// 5 min, logs to slog.Default().
func DefaultConfig() Config {
	return Config{
		Interval:           DefaultInterval,
		TTL:                MinDefaultTTL,
		BackoffBase:        DefaultBackoffBase,
		BackoffMax:         DefaultBackoffMax,
		UnimplementedRetry: DefaultUnimplementedRetry,
		Logger:             slog.Default(),
	}
}

// Validate reports whether NewCollector would accept c: nil, or an error
// naming the first invalid field.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

// withDefaults returns c with zero fields defaulted and TTL and
// BackoffMax raised as their documentation says, or an error naming the
// first invalid field and its value.
func (c Config) withDefaults() (Config, error) {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"interval", c.Interval}, {"TTL", c.TTL}, {"backoff base", c.BackoffBase},
		{"backoff max", c.BackoffMax}, {"Unimplemented retry", c.UnimplementedRetry},
	} {
		if f.d < 0 {
			return c, fmt.Errorf("loadreport: %s %v is negative", f.name, f.d)
		}
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Interval < MinCollectInterval || c.Interval > MaxCollectInterval {
		return c, fmt.Errorf("loadreport: interval %v is outside [%v, %v]", c.Interval, MinCollectInterval, MaxCollectInterval)
	}
	if c.TTL == 0 {
		c.TTL = max(3*c.Interval, MinDefaultTTL)
	}
	c.TTL = max(c.TTL, 2*c.Interval)
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	c.BackoffMax = max(c.BackoffMax, c.BackoffBase)
	if c.UnimplementedRetry == 0 {
		c.UnimplementedRetry = DefaultUnimplementedRetry
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Collector keeps the freshest ORCA load report of each endpoint of one
// service: one out-of-band stream per endpoint, opened and closed as Update
// tells it which endpoints exist, shared by everyone who reads Loads.
//
// A Collector owns a goroutine per endpoint and one that expires reports;
// Close stops them all. Its methods are safe for concurrent use.
type Collector struct {
	// Read-only after construction.
	cfg    Config
	log    *slog.Logger
	clock  clock.Clock
	rand   func() float64 // in [0, 1), for jitter
	ctx    context.Context
	cancel context.CancelFunc
	kick   chan struct{} // wakes the sweeper; buffered
	// dialOpts are the options of every stream's connection, built once.
	dialOpts []grpc.DialOption
	// request is the StreamCoreMetrics request message, framed.
	request []byte
	// silence is how long a stream may go without a report before it is
	// dialed again (a seam for tests).
	silence time.Duration
	wg      sync.WaitGroup

	// cur is the last snapshot built; never nil. Written under mu.
	cur atomic.Pointer[Loads]
	// dirty is set (under mu) when cur no longer reflects the reports
	// and stream states; Loads then builds a new snapshot.
	dirty atomic.Bool
	// running counts stream goroutines, for tests.
	running atomic.Int64

	mu      sync.Mutex
	streams map[string]*stream // guarded by mu: tracked endpoints by ID
	reports map[string]Report  // guarded by mu: fresh reports by ID
	changed chan struct{}      // guarded by mu: cur's Changed
	sweepAt time.Time          // guarded by mu: when the sweeper wakes next; zero if never
	closed  bool               // guarded by mu
}

// stream is one tracked endpoint.
type stream struct {
	// Read-only after creation.
	id     string
	addr   netip.AddrPort
	cancel context.CancelFunc

	// Guarded by Collector.mu.
	state  StreamState
	lastAt time.Time     // the last report of the current stream; zero between streams
	gap    time.Duration // the last gap seen between two reports of one stream
}

// NewCollector checks cfg and starts a Collector tracking no endpoint. It
// does not block. The caller must Close it.
func NewCollector(cfg Config) (*Collector, error) {
	return newCollector(cfg, clock.Real{}, clock.RandFloat)
}

func newCollector(cfg Config, clk clock.Clock, rand func() float64) (*Collector, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Collector{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "loadreport"),
		clock:   clk,
		rand:    rand,
		ctx:     ctx,
		cancel:  cancel,
		kick:    make(chan struct{}, 1),
		streams: make(map[string]*stream),
		reports: make(map[string]Report),
		changed: make(chan struct{}),
	}
	c.dialOpts = dialOptions(cfg)
	c.request = requestFrame(cfg.Interval)
	c.silence = max(MaxStretchedTTL, 3*cfg.Interval)
	c.cur.Store(&Loads{Changed: c.changed})
	c.wg.Go(c.sweep)
	return c, nil
}

// Transport sizes of the streams' connections. A report is a few hundred
// bytes, a request less: small buffers suffice, and the write buffer is
// shared (taken from a pool for each write and given back), so that an idle
// stream holds almost nothing but its connection's read buffer.
const (
	readBufferSize  = 1024
	writeBufferSize = 1024
	// windowSize is grpc-go's least flow-control window. Setting it also
	// turns off the bandwidth estimator, which would grow the windows and
	// ping for nothing.
	windowSize = 64 << 10
	// maxReportSize bounds one report (grpc-go's default is 4 MiB).
	maxReportSize = 64 << 10
)

// dialOptions returns the options of every stream's connection: cfg's
// credentials, keepalive every 5 min, small buffers, then cfg.DialOptions.
func dialOptions(cfg Config) []grpc.DialOption {
	creds := cfg.Credentials
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: 20 * time.Second}),
		grpc.WithReadBufferSize(readBufferSize),
		grpc.WithWriteBufferSize(writeBufferSize),
		grpc.WithSharedWriteBuffer(true),
		grpc.WithInitialWindowSize(windowSize),
		grpc.WithInitialConnWindowSize(windowSize),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxReportSize)),
		grpc.WithDisableServiceConfig(),
		grpc.WithDisableRetry(),
	}, cfg.DialOptions...)
}

// Config returns the configuration in force, with defaults applied.
func (c *Collector) Config() Config { return c.cfg }

// Loads returns the current snapshot. It does not block: after a change
// it takes the collector's lock for as long as a copy of the reports
// takes.
func (c *Collector) Loads() Loads {
	if !c.dirty.Load() {
		return *c.cur.Load()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dirty.Load() {
		return *c.snapshotLocked()
	}
	return *c.cur.Load()
}

// Load returns the fresh report of endpoint id, if there is one.
func (c *Collector) Load(id string) (Report, bool) { return c.Loads().Report(id) }

// Changed returns the channel closed at the next meaningful change (see
// Loads.Changed). To read the loads and wait for the next change without
// missing one, use the Changed field of a Loads.
func (c *Collector) Changed() <-chan struct{} { return c.Loads().Changed }

// Update makes the collector track exactly the endpoints of snap: it opens
// a stream to each new endpoint ID, closes the stream of each ID no longer
// present (dropping its report at once), and restarts the stream of an ID
// whose address changed. Weight and metadata changes change nothing. It
// does not block (closed streams end in the background; Close waits for
// them), and does nothing after Close. Endpoints with an invalid address
// are ignored.
func (c *Collector) Update(snap discovery.Snapshot) {
	want := make(map[string]netip.AddrPort, len(snap.Endpoints))
	for _, ep := range snap.Endpoints {
		if ep.Addr.IsValid() && ep.Addr.Port() != 0 {
			want[ep.ID] = ep.Addr
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	changed := false
	for id, s := range c.streams {
		if addr, ok := want[id]; ok && addr == s.addr {
			continue
		}
		s.cancel()
		delete(c.streams, id)
		delete(c.reports, id)
		changed = true
		c.log.Debug("endpoint untracked", "endpoint", id, "addr", s.addr.String())
	}
	now := c.clock.Now()
	for id, addr := range want {
		if _, ok := c.streams[id]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(c.ctx)
		s := &stream{id: id, addr: addr, cancel: cancel, state: StreamState{Addr: addr, Since: now}}
		c.streams[id] = s
		c.wg.Go(func() { c.run(ctx, s) })
		changed = true
		c.log.Debug("endpoint tracked", "endpoint", id, "addr", addr.String())
	}
	if changed {
		c.publishLocked(true)
	}
}

// Close stops every stream and the expiry of reports, and waits for their
// goroutines to return. Loads keeps its last value. Safe to call more than
// once.
func (c *Collector) Close() {
	c.mu.Lock()
	c.closed = true
	for _, s := range c.streams {
		s.cancel()
	}
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
}

// publishLocked records that the reports or stream states changed; when
// meaningful, it also closes the current Changed. The snapshot itself is
// built by the next Loads, so that a report costs no copy of every
// endpoint's (at 1,000 endpoints reporting every second, copying on each
// report would copy a million entries a second).
func (c *Collector) publishLocked(meaningful bool) {
	c.dirty.Store(true)
	if meaningful {
		old := c.changed
		c.changed = make(chan struct{})
		close(old)
	}
}

// snapshotLocked makes a new snapshot of the reports and stream states
// current.
func (c *Collector) snapshotLocked() *Loads {
	l := &Loads{
		Reports: maps.Clone(c.reports),
		Streams: make(map[string]StreamState, len(c.streams)),
		Changed: c.changed,
	}
	for id, s := range c.streams {
		l.Streams[id] = s.state
	}
	c.cur.Store(l)
	c.dirty.Store(false)
	return l
}

// run keeps a load report stream open to s until ctx is done: one
// connection, one stream at a time, retried after failures.
func (c *Collector) run(ctx context.Context, s *stream) {
	c.running.Add(1)
	defer c.running.Add(-1)
	attempt, done := c.attempter(s)
	if attempt == nil {
		return
	}
	defer done()
	// The loop keeps a small frame: the stream waits below it (see
	// h2Stream).
	failures := 0
	for {
		got, err := attempt(ctx)
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		wait, failures = c.retry(s, got, err, failures)
		if !c.sleep(ctx, wait) {
			return
		}
	}
}

// attempter returns what runs one stream attempt to s, and what to call
// once there are no more; or nil when s cannot be dialed at all.
func (c *Collector) attempter(s *stream) (attempt func(context.Context) (bool, error), done func()) {
	if len(c.cfg.DialOptions) == 0 {
		return func(ctx context.Context) (bool, error) { return c.streamH2(ctx, s) }, func() {}
	}
	cc, err := grpc.NewClient("passthrough:///"+s.addr.String(), c.dialOpts...)
	if err != nil {
		// Only bad dial options get here; retrying would not help.
		c.log.Error("cannot dial endpoint for load reports", "endpoint", s.id, "addr", s.addr.String(), "err", err)
		c.failed(s, fmt.Errorf("loadreport: dialing %s: %w", s.addr, err), false, 1)
		return nil, nil
	}
	client := orcasvc.NewOpenRcaServiceClient(cc)
	return func(ctx context.Context) (bool, error) { return c.stream(ctx, client, s) }, func() { cc.Close() }
}

// retry records that an attempt of s ended with err (got: after at
// least one report), logs it, and returns the wait before the next
// attempt and the count of consecutive failures from now on.
func (c *Collector) retry(s *stream, got bool, err error, failures int) (time.Duration, int) {
	log := c.log.With("endpoint", s.id, "addr", s.addr.String())
	if status.Code(err) == codes.Unimplemented {
		wait := c.cfg.UnimplementedRetry
		if c.failed(s, err, true, 0) {
			log.Info("endpoint serves no ORCA load reports; asking again later", "retry_in", wait)
		}
		return wait, 0
	}
	if got {
		failures = 0
	}
	wait := c.backoff(failures)
	failures++
	if c.failed(s, err, false, failures) || failures == 1 {
		log.Warn("load report stream failed", "err", err, "failures", failures, "retry_in", wait)
	} else {
		log.Debug("load report stream failed", "err", err, "failures", failures, "retry_in", wait)
	}
	return wait, failures
}

// stream runs one StreamCoreMetrics call, recording each report, until it
// fails or ctx is done. It reports whether any report arrived.
func (c *Collector) stream(ctx context.Context, client orcasvc.OpenRcaServiceClient, s *stream) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.StreamCoreMetrics(ctx, &orcasvc.OrcaLoadReportRequest{
		ReportInterval: durationpb.New(c.cfg.Interval),
	})
	if err != nil {
		return false, err
	}
	for {
		rep, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return got, errors.New("loadreport: the endpoint ended the stream")
		}
		if err != nil {
			return got, err
		}
		got = true
		c.received(s, rep)
	}
}

// received records a report of s.
func (c *Collector) received(s *stream, rep *orcapb.OrcaLoadReport) {
	now := c.clock.Now()
	r := fromProto(rep, now)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.streams[s.id] != s {
		return // untracked meanwhile
	}
	if !s.lastAt.IsZero() {
		s.gap = now.Sub(s.lastAt)
	}
	s.lastAt = now
	ttl := min(max(c.cfg.TTL, 3*s.gap), max(c.cfg.TTL, MaxStretchedTTL))
	r.Expires = now.Add(ttl)
	old, had := c.reports[s.id]
	c.reports[s.id] = r
	meaningful := !had || !old.sameValues(r)
	if !s.state.Connected {
		c.log.Debug("load reports flowing", "endpoint", s.id, "addr", s.addr.String())
		s.state = StreamState{Addr: s.addr, Connected: true, Since: now}
		meaningful = true
	}
	c.publishLocked(meaningful)
	if c.sweepAt.IsZero() || r.Expires.Before(c.sweepAt) {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// failed records that a stream attempt of s failed, and reports whether
// that changed its state meaningfully (it was connected, or Unimplemented
// turned on or off).
func (c *Collector) failed(s *stream, err error, unimplemented bool, failures int) bool {
	now := c.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.streams[s.id] != s {
		return false
	}
	s.lastAt = time.Time{}
	meaningful := s.state.Connected || s.state.Unimplemented != unimplemented
	if meaningful {
		s.state.Since = now
	}
	s.state.Connected = false
	s.state.Unimplemented = unimplemented
	s.state.LastError = err
	s.state.Failures = failures
	c.publishLocked(meaningful)
	return meaningful
}

// backoff returns the wait after the given number of earlier consecutive
// failures: BackoffBase doubled that many times, capped at BackoffMax,
// times a random factor in [0.8, 1.2).
func (c *Collector) backoff(failures int) time.Duration {
	return clock.Backoff(c.cfg.BackoffBase, c.cfg.BackoffMax, failures, c.rand())
}

// sleep waits d on the collector's clock and reports whether ctx is still
// live.
func (c *Collector) sleep(ctx context.Context, d time.Duration) bool {
	fire, stop := c.clock.NewTimer(d)
	defer stop()
	select {
	case <-ctx.Done():
		return false
	case <-fire:
		return true
	}
}

// sweep drops reports as they expire, until the collector closes.
func (c *Collector) sweep() {
	for {
		c.mu.Lock()
		now := c.clock.Now()
		var next time.Time
		expired := false
		for id, r := range c.reports {
			if !r.Fresh(now) {
				delete(c.reports, id)
				expired = true
				c.log.Debug("load report expired", "endpoint", id, "age", r.Age(now))
				continue
			}
			if next.IsZero() || r.Expires.Before(next) {
				next = r.Expires
			}
		}
		if expired {
			c.publishLocked(true)
		}
		c.sweepAt = next
		c.mu.Unlock()

		var fire <-chan time.Time
		stop := func() bool { return false }
		if !next.IsZero() {
			fire, stop = c.clock.NewTimer(next.Sub(now))
		}
		select {
		case <-c.ctx.Done():
			stop()
			return
		case <-c.kick:
		case <-fire:
		}
		stop()
	}
}
