package h2bidi

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

var (
	errStopped      = errors.New("h2bidi: server stopped")
	errKeepalive    = errors.New("h2bidi: keepalive ping not answered")
	errAge          = errors.New("h2bidi: connection reached its maximum age and grace")
	errDrained      = errors.New("h2bidi: connection drained")
	errTooManyPings = errors.New("h2bidi: too many pings from the client")
)

// goAwayPing is the data of the PING that follows a graceful GOAWAY (as
// grpc-go's).
var goAwayPing = [8]byte{1, 6, 1, 8, 0, 3, 3, 9}

// lingerTime bounds how long a drained connection, shut for writing,
// waits for the client to close it (as grpc-go's server waits for its
// reader).
const lingerTime = time.Second

// connErr is a connection error: GOAWAY with code, then close.
type connErr struct {
	code http2.ErrCode
	msg  string
}

func (e *connErr) Error() string { return fmt.Sprintf("h2bidi: %v: %s", e.code, e.msg) }

// conn is one accepted connection. Its goroutine (serve) peeks at the
// first request, then reads frames until the connection fails.
//
// Lock order: wmu before mu; neither is held while waiting for anything
// but a socket write.
type conn[Req any] struct {
	s   *Server[Req]
	raw net.Conn // as accepted; closing it ends everything
	nc  net.Conn // after the handshake; set before any write; reads and writes go here
	// peer is shared by the connection's streams' contexts.
	peer *peer.Peer

	// wmu serializes writes to nc. A stream's decision of what to write
	// (headers, data, trailers) is taken holding it, so that frames go out
	// in the order decided.
	wmu sync.Mutex
	// wdeadline is nc's write deadline, as writeLocked last set it;
	// guarded by wmu.
	wdeadline time.Time

	mu sync.Mutex // protects the fields below and the Stream fields marked "c.mu"
	// owned: the connection is served here (not peeking any more).
	owned bool
	// closed: close began; no more writes.
	closed  bool
	streams map[uint32]*Stream[Req]
	// lastStreamID is the highest stream id the client opened (written by
	// the reader only).
	lastStreamID uint32
	// sendWin is the connection's send window.
	sendWin int64
	// peerInitialWin and peerMaxFrame are the client's settings.
	peerInitialWin int64
	peerMaxFrame   uint32
	// goAwayDebug is set when the first (heads-up) GOAWAY is sent; draining
	// when the final one is: new streams are refused and the connection
	// closes after its last stream.
	goAwayDebug string
	goAwaySent  bool
	draining    bool
	// Timers: keepalive, connection age, the wait for the GOAWAY ping's ack.
	kaTimer, ageTimer, drainTimer *time.Timer
	// lingerTimer closes a drained connection the client did not close.
	lingerTimer *time.Timer
	// handedOff: the connection is grpc.Server's now.
	handedOff bool
	// kaPrev is lastRead when the keepalive timer last looked;
	// pingOutstanding says it sent a ping since.
	kaPrev          int64
	pingOutstanding bool

	// lastRead is the time of the last frame read (UnixNano), for
	// keepalive.
	lastRead atomic.Int64
	// resetPingStrikes is set by writes of headers and data: the next
	// client ping forgives the strikes (as grpc-go).
	resetPingStrikes atomic.Bool
	// wuPending says a stream has a WINDOW_UPDATE decided by Next that is
	// not written yet (Stream.wuIncr): whoever releases wmu writes it.
	wuPending atomic.Bool

	// The reader's own state.
	fr          *http2.Framer
	recvWin     int64 // connection receive window left
	recvUnacked int64 // received and not yet given back
	pingStrikes int
	lastPingAt  time.Time
}

func newConn[Req any](s *Server[Req], nc net.Conn) *conn[Req] {
	return &conn[Req]{s: s, raw: nc}
}

// serve runs the connection's goroutine.
func (c *conn[Req]) serve() {
	s := c.s
	defer s.wg.Done()
	handedOff := false
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		if !handedOff {
			c.close(nil)
		}
	}()
	rc, err := c.peek()
	if err != nil {
		if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
			s.log.Debug("h2bidi: connection failed before its first request", "peer", c.raw.RemoteAddr(), "err", err)
		}
		return
	}
	if rc != nil {
		handedOff = true
		c.mu.Lock()
		c.closed = true // not ours to write to or close any more
		c.handedOff = true
		c.mu.Unlock()
		// Counted first: once handed off, the connection may be served
		// (and its client see an answer) before this goroutine runs on.
		s.nHandedOff.Add(1)
		if !s.others.handOff(rc) {
			s.nHandedOff.Add(-1)
		}
		return
	}
	s.nConns.Add(1)
	err = c.readLoop()
	s.nConns.Add(-1)
	var ce *connErr
	if errors.As(err, &ce) {
		s.nProtoErrs.Add(1)
		c.goAway(ce.code, ce.msg)
	}
	if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		s.log.Debug("h2bidi: connection failed", "peer", c.raw.RemoteAddr(), "err", err)
	}
	c.close(err)
}

// recorder records the bytes read through it, up to maxPeek.
type recorder struct {
	r   io.Reader
	buf []byte
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.buf = append(r.buf, p[:n]...)
	if len(r.buf) > maxPeek {
		return n, errors.New("h2bidi: more than 64 KiB before the first request")
	}
	return n, err
}

// peek does the handshake, reads the preface, sends our SETTINGS and
// reads up to the first request. It returns the connection to hand off,
// or nil if the connection is ours (then c is ready for readLoop).
func (c *conn[Req]) peek() (*replayConn, error) {
	cfg := &c.s.cfg
	c.raw.SetDeadline(time.Now().Add(cfg.HandshakeTimeout))
	var (
		nc   = c.raw
		auth credentials.AuthInfo
		err  error
	)
	if cfg.Creds != nil {
		nc, auth, err = cfg.Creds.ServerHandshake(c.raw)
	} else {
		nc, auth, err = insecure.NewCredentials().ServerHandshake(c.raw)
	}
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	c.mu.Lock()
	c.nc = nc
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, net.ErrClosed
	}
	c.peer = &peer.Peer{Addr: c.raw.RemoteAddr(), LocalAddr: c.raw.LocalAddr(), AuthInfo: auth}
	rec := &recorder{r: nc}
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(rec, preface[:]); err != nil {
		return nil, fmt.Errorf("reading the client preface: %w", err)
	}
	if string(preface[:]) != http2.ClientPreface {
		return nil, errors.New("not an HTTP/2 client preface")
	}
	c.raw.SetDeadline(time.Time{})
	// Our first SETTINGS only asks the client not to index the header
	// fields it sends (a dynamic table of its headers would cost each
	// connection a few hundred bytes; a grpc-go client applies it before its
	// first request). The others come once the connection is ours: a
	// handed-off connection gets grpc.Server's.
	if err := c.writeFrames(func(b []byte) []byte {
		return appendSettings(b, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
	}); err != nil {
		return nil, err
	}
	fr := http2.NewFramer(io.Discard, rec)
	fr.SetMaxReadFrameSize(16384)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = cfg.MaxHeaderListSize
	var first *http2.MetaHeadersFrame
	for first == nil {
		f, err := fr.ReadFrame()
		if _, ok := err.(http2.StreamError); ok {
			// A header block we cannot read: grpc.Server answers it.
			return handOff(nc, rec.buf, auth), nil
		}
		if err != nil {
			if ce, ok := err.(http2.ConnectionError); ok {
				c.s.nProtoErrs.Add(1)
				d := ""
				if e := fr.ErrorDetail(); e != nil {
					d = e.Error()
				}
				c.goAway(http2.ErrCode(ce), d)
			}
			return nil, err
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			if !f.IsAck() {
				rec.buf = rec.buf[:len(rec.buf)-(9+8)]
				data := f.Data
				if err := c.writeFrames(func(b []byte) []byte { return appendPing(b, true, data) }); err != nil {
					return nil, err
				}
				// The policy for a connection without streams, as grpc.Server
				// would apply it.
				if err := c.pingPolicy(0); err != nil {
					return nil, err
				}
			}
		case *http2.MetaHeadersFrame:
			first = f
		}
	}
	if !c.s.isOurs(first) {
		return handOff(nc, rec.buf, auth), nil
	}
	// Ours: read everything after the preface again, with a fresh decoder.
	c.fr = http2.NewFramer(io.Discard, &replayConn{Conn: nc, buf: rec.buf[len(preface):]})
	c.fr.SetMaxReadFrameSize(16384)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = cfg.MaxHeaderListSize
	c.fr.SetReuseFrames()
	return nil, c.own()
}

// handOff returns nc for the grpc.Server, replaying read and with no
// write deadline: the peek's writes set one (writeLocked), which would
// fail the grpc.Server's writes WriteTimeout after the peek (grpc-go
// clears deadlines after its own handshake today; this does not rely on
// it).
func handOff(nc net.Conn, read []byte, auth credentials.AuthInfo) *replayConn {
	nc.SetWriteDeadline(time.Time{})
	return &replayConn{Conn: nc, buf: read, auth: auth}
}

// isOurs reports whether a connection's first request makes it ours.
func (s *Server[Req]) isOurs(f *http2.MetaHeadersFrame) bool {
	if f.Truncated || f.PseudoValue("path") != s.cfg.Method {
		return false
	}
	var ct, enc string
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "content-type":
			ct = hf.Value
		case "grpc-encoding":
			enc = hf.Value
		}
	}
	return (ct == "application/grpc" || ct == "application/grpc+proto") && (enc == "" || enc == "identity")
}

// own makes c served here: our settings, windows and timers.
func (c *conn[Req]) own() error {
	s, cfg := c.s, &c.s.cfg
	s.mu.Lock()
	stopped, graceful := s.stopped, s.graceful
	s.mu.Unlock()
	if stopped && !graceful {
		return errStopped
	}
	now := time.Now()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.owned = true
	c.streams = make(map[uint32]*Stream[Req])
	c.sendWin = 65535
	c.peerInitialWin = 65535
	c.peerMaxFrame = 16384
	c.recvWin = int64(cfg.InitialWindowSize)
	c.lastRead.Store(now.UnixNano())
	c.kaPrev = now.UnixNano()
	if cfg.KeepaliveTime > 0 {
		c.kaTimer = time.AfterFunc(cfg.KeepaliveTime, c.keepalive)
	}
	if age := cfg.MaxConnectionAge; age > 0 {
		if j := int64(age / 10); j > 0 {
			age += time.Duration(rand.Int64N(2*j) - j)
		}
		c.ageTimer = time.AfterFunc(age, c.aged)
	}
	c.mu.Unlock()
	settings := []http2.Setting{
		{ID: http2.SettingMaxConcurrentStreams, Val: cfg.MaxConcurrentStreams},
		{ID: http2.SettingMaxHeaderListSize, Val: cfg.MaxHeaderListSize},
	}
	iw := cfg.InitialWindowSize
	if iw != 65535 {
		settings = append(settings, http2.Setting{ID: http2.SettingInitialWindowSize, Val: iw})
	}
	err := c.writeFrames(func(b []byte) []byte {
		b = appendSettings(b, settings...)
		if iw > 65535 {
			b = appendWindowUpdate(b, 0, iw-65535)
		}
		return b
	})
	if err == nil && stopped {
		c.drain("graceful_stop")
	}
	return err
}

// readLoop reads and handles frames until the connection fails.
func (c *conn[Req]) readLoop() error {
	keepalive := c.s.cfg.KeepaliveTime > 0
	for {
		f, err := c.fr.ReadFrame()
		if keepalive {
			c.lastRead.Store(time.Now().UnixNano())
		}
		if err != nil {
			switch e := err.(type) {
			case http2.StreamError:
				c.resetStreamID(e.StreamID, e.Code, e)
				continue
			case http2.ConnectionError:
				d := "frame error"
				if e := c.fr.ErrorDetail(); e != nil {
					d = e.Error()
				}
				return &connErr{code: http2.ErrCode(e), msg: d}
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return &connErr{code: http2.ErrCodeFrameSize, msg: "frame too large"}
			}
			return err
		}
		if err := c.handle(f); err != nil {
			return err
		}
	}
}

func (c *conn[Req]) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.PingFrame:
		return c.onPing(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.onRSTStream(f)
	case *http2.PushPromiseFrame:
		return &connErr{code: http2.ErrCodeProtocol, msg: "PUSH_PROMISE from a client"}
	}
	// GOAWAY from the client (grpc-go's server ignores it too), PRIORITY,
	// unknown frames: nothing to do.
	return nil
}

// onHeaders handles a header block: a new stream, or a stream's trailers.
func (c *conn[Req]) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	if st != nil || (id <= c.lastStreamID && id%2 == 1) {
		if !f.StreamEnded() {
			return &connErr{code: http2.ErrCodeProtocol, msg: fmt.Sprintf("second HEADERS without END_STREAM on stream %d", id)}
		}
		if st != nil {
			c.halfClose(st)
		}
		return nil
	}
	if id%2 == 0 {
		return &connErr{code: http2.ErrCodeProtocol, msg: fmt.Sprintf("client stream id %d is even", id)}
	}
	c.mu.Lock()
	c.lastStreamID = id
	draining, active := c.draining || c.closed, uint32(len(c.streams))
	c.mu.Unlock()
	cfg := &c.s.cfg
	if f.Truncated {
		return c.writeFrames(func(b []byte) []byte { return appendRSTStream(b, id, http2.ErrCodeFrameSize) })
	}
	var (
		isGRPC, protoErr    bool
		ct, path, method    string
		enc, timeoutV       string
		timeoutSet          bool
		headerErr           *status.Status
		md                  = make(metadata.MD, len(f.Fields))
		authorities, nhosts int
		rst                 = !f.StreamEnded()
	)
	for _, hf := range f.Fields {
		switch hf.Name {
		case "content-type":
			if !isGRPCContentType(hf.Value) {
				ct = hf.Value
				break
			}
			md[hf.Name] = append(md[hf.Name], hf.Value)
			isGRPC = true
		case "grpc-encoding":
			enc = hf.Value
		case ":method":
			method = hf.Value
		case ":path":
			path = hf.Value
		case "grpc-timeout":
			timeoutSet, timeoutV = true, hf.Value
		case "connection":
			protoErr = true
		case ":authority", "user-agent":
			md[hf.Name] = append(md[hf.Name], hf.Value)
			if hf.Name == ":authority" {
				authorities++
			}
		default:
			if hf.IsPseudo() || isReservedHeader(hf.Name) {
				break
			}
			v := hf.Value
			if strings.HasSuffix(hf.Name, "-bin") {
				b, err := decodeBinHeader(v)
				if err != nil {
					headerErr = status.Newf(codes.Internal, "malformed binary metadata %q in header %q: %v", hf.Value, hf.Name, err)
					break
				}
				v = string(b)
			}
			if hf.Name == "host" {
				nhosts++
			}
			md[hf.Name] = append(md[hf.Name], v)
		}
	}
	var timeout time.Duration
	if timeoutSet {
		var err error
		if timeout, err = decodeTimeout(timeoutV); err != nil {
			headerErr = status.Newf(codes.Internal, "malformed grpc-timeout: %v", err)
		}
	}
	abort := func(st *status.Status, httpStatus int) error {
		return c.writeFrames(func(b []byte) []byte {
			b = appendStatus(b, id, 16384, st, httpStatus)
			if rst {
				b = appendRSTStream(b, id, http2.ErrCodeNo)
			}
			return b
		})
	}
	// Another method goes to Config.Other, which checks the request
	// itself.
	other := path != cfg.Method && cfg.Other != nil
	// The order of the checks is grpc-go's.
	switch {
	case authorities > 1 || nhosts > 1:
		return abort(status.New(codes.Internal, fmt.Sprintf("num values of :authority: %v, num values of host: %v, both must only have 1 value as per HTTP/2 spec", authorities, nhosts)), http.StatusBadRequest)
	case protoErr:
		return c.writeFrames(func(b []byte) []byte { return appendRSTStream(b, id, http2.ErrCodeProtocol) })
	case !isGRPC && !other:
		return abort(status.Newf(codes.InvalidArgument, "invalid gRPC request content-type %q", ct), http.StatusUnsupportedMediaType)
	case headerErr != nil && !other:
		return abort(headerErr, http.StatusBadRequest)
	}
	if authorities == 0 {
		if h, ok := md["host"]; ok {
			md[":authority"] = h
		}
	}
	delete(md, "host")
	switch {
	case len(md[":authority"]) == 0 && !other:
		return abort(status.New(codes.Internal, "no host or :authority header present"), http.StatusBadRequest)
	case draining || active >= cfg.MaxConcurrentStreams:
		return c.writeFrames(func(b []byte) []byte { return appendRSTStream(b, id, http2.ErrCodeRefusedStream) })
	case other:
		// Not a gRPC error of ours: the timeout is grpc's to parse too.
		var to time.Duration
		if timeoutSet && headerErr == nil {
			to = timeout
		}
		return c.startOther(f, method, path, to)
	case method != http.MethodPost:
		return abort(status.New(codes.Internal, fmt.Sprintf("Received a HEADERS frame with :method %q which should be POST", method)), http.StatusMethodNotAllowed)
	case path != cfg.Method:
		return abort(status.Newf(codes.Unimplemented, "h2bidi: this connection serves only %s; open a new connection for other methods", cfg.Method), http.StatusOK)
	case enc != "" && enc != "identity":
		return abort(status.Newf(codes.Unimplemented, "grpc: Decompressor is not installed for grpc-encoding %q", enc), http.StatusOK)
	}

	ctx := peer.NewContext(context.Background(), c.peer)
	ctx = metadata.NewIncomingContext(ctx, md)
	var cancel context.CancelFunc
	if timeoutSet {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	if cfg.Tap != nil {
		tctx, err := cfg.Tap(ctx)
		if err != nil {
			cancel()
			st, ok := status.FromError(err)
			if !ok {
				st = status.New(codes.PermissionDenied, err.Error())
			}
			return abort(st, http.StatusOK)
		}
		if tctx != nil {
			ctx = tctx
		}
	}
	if ctx.Err() != nil {
		cancel()
		return abort(status.New(codes.DeadlineExceeded, context.DeadlineExceeded.Error()), http.StatusOK)
	}
	if !timeoutSet {
		timeout = 0
	}
	c.startStream(id, ctx, cancel, f.StreamEnded(), timeout, nil)
	return nil
}

// startStream registers a new stream and starts its handler goroutine
// (Config.Handler, or Config.Other when other is set). timeout, if not
// 0, resets the stream at its end.
func (c *conn[Req]) startStream(id uint32, ctx context.Context, cancel context.CancelFunc, ended bool, timeout time.Duration, other *otherStream) {
	st := &Stream[Req]{
		c:       c,
		id:      id,
		ctx:     ctx,
		cancel:  cancel,
		ready:   make(chan struct{}, 1),
		wake:    make(chan struct{}, 1),
		recvWin: int64(c.s.cfg.InitialWindowSize),
		other:   other,
	}
	c.mu.Lock()
	if c.closed || c.draining {
		c.mu.Unlock()
		cancel()
		return
	}
	st.sendWin = c.peerInitialWin
	c.streams[id] = st
	if ended {
		st.halfClosed = true
		st.recvEnd = io.EOF
		st.signal()
	}
	if timeout != 0 {
		// As grpc-go: at the deadline the stream is reset (CANCEL).
		st.deadline = time.AfterFunc(timeout, func() {
			c.resetStream(st, http2.ErrCodeCancel, status.Error(codes.DeadlineExceeded, "h2bidi: the stream's deadline passed"))
		})
	}
	c.s.wg.Add(1)
	c.mu.Unlock()
	c.s.nStreams.Add(1)
	if other != nil {
		go c.runOther(st)
	} else {
		go c.runHandler(st)
	}
}

// runHandler runs on a stream's goroutine.
func (c *conn[Req]) runHandler(st *Stream[Req]) {
	c.handled(st, c.s.cfg.Handler(st))
}

// handled takes what a run of st's handler returned: Park leaves the
// stream open without a goroutine (its Resume goes on), anything else ends
// it. The stream counts in the server's WaitGroup while parked.
func (c *conn[Req]) handled(st *Stream[Req], err error) {
	if err == Park {
		return
	}
	defer c.s.wg.Done()
	c.handlerDone(st, err)
}

// handlerDone ends st with the status of err, the handler's. Apart from
// runHandler so that a handler at rest has the smallest stack below it.
func (c *conn[Req]) handlerDone(st *Stream[Req], err error) {
	stat := status.Convert(err)
	c.finish(st, func() { c.writeTrailers(st, stat) })
}

// isGRPCContentType reports whether v is application/grpc, or
// application/grpc followed by '+' or ';' and a subtype (as grpc-go's
// server accepts).
func isGRPCContentType(v string) bool {
	rest, ok := strings.CutPrefix(v, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// isReservedHeader reports headers that are not metadata (grpc-go's list).
func isReservedHeader(h string) bool {
	switch h {
	case "content-type", "user-agent", "grpc-message-type", "grpc-encoding", "grpc-message",
		"grpc-status", "grpc-timeout", "te":
		return true
	}
	return false
}

func decodeBinHeader(v string) ([]byte, error) {
	if len(v)%4 == 0 {
		return base64.StdEncoding.DecodeString(v)
	}
	return base64.RawStdEncoding.DecodeString(v)
}

// decodeTimeout parses a grpc-timeout value (as grpc-go does).
func decodeTimeout(s string) (time.Duration, error) {
	if len(s) < 2 || len(s) > 9 {
		return 0, fmt.Errorf("timeout %q has a bad length", s)
	}
	var unit time.Duration
	switch s[len(s)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, fmt.Errorf("timeout unit of %q is not recognized", s)
	}
	t, err := strconv.ParseUint(s[:len(s)-1], 10, 64)
	if err != nil {
		return 0, err
	}
	if unit == time.Hour && t > uint64(1<<63-1)/uint64(time.Hour) {
		return 1<<63 - 1, nil
	}
	return unit * time.Duration(t), nil
}

// onData handles DATA: flow control, then the stream's messages.
func (c *conn[Req]) onData(f *http2.DataFrame) error {
	cfg := &c.s.cfg
	n := int64(f.Length)
	if n > c.recvWin {
		return &connErr{code: http2.ErrCodeFlowControl, msg: "DATA over the connection window"}
	}
	c.recvWin -= n
	c.recvUnacked += n
	if c.recvUnacked >= int64(cfg.InitialWindowSize)/4 {
		incr := uint32(c.recvUnacked)
		c.recvWin += c.recvUnacked
		c.recvUnacked = 0
		if err := c.writeFrames(func(b []byte) []byte { return appendWindowUpdate(b, 0, incr) }); err != nil {
			return err
		}
	}
	id := f.StreamID
	c.mu.Lock()
	st := c.streams[id]
	if st == nil {
		c.mu.Unlock()
		if id > c.lastStreamID {
			return &connErr{code: http2.ErrCodeProtocol, msg: fmt.Sprintf("DATA on idle stream %d", id)}
		}
		return nil // a stream that ended
	}
	if st.ended || st.halfClosed {
		c.mu.Unlock()
		return nil
	}
	if n > st.recvWin {
		c.mu.Unlock()
		return &connErr{code: http2.ErrCodeFlowControl, msg: fmt.Sprintf("DATA over stream %d's window", id)}
	}
	st.recvWin -= n
	// The bytes wait in rbuf for Next; their prefixes are checked here, as
	// they come, so that a message too large ends the stream at once.
	st.rbuf = append(st.rbuf, f.Data()...)
	var bad error
	for st.other == nil && st.scanned+5 <= len(st.rbuf) {
		m, err := c.checkPrefix(st.rbuf[st.scanned:])
		if err != nil {
			bad = err
			st.rbuf = st.rbuf[:st.scanned] // the messages before it are still taken
			break
		}
		st.scanned += 5 + m
	}
	_, whole := frontMessage(st.rbuf)
	if st.other != nil {
		whole = len(st.rbuf) > 0
	}
	var incr uint32
	if bad == nil {
		if f.StreamEnded() {
			c.halfCloseLocked(st)
		} else {
			incr = st.grantLocked(int64(cfg.InitialWindowSize))
		}
	}
	c.mu.Unlock()
	if whole {
		st.signal()
	}
	if bad != nil {
		c.failStream(st, bad)
		return nil
	}
	if incr > 0 {
		return c.writeFrames(func(b []byte) []byte { return appendWindowUpdate(b, id, incr) })
	}
	return nil
}

// checkPrefix checks a message's 5-byte prefix and returns its length.
func (c *conn[Req]) checkPrefix(p []byte) (int, error) {
	n := uint32(p[1])<<24 | uint32(p[2])<<16 | uint32(p[3])<<8 | uint32(p[4])
	if p[0] != 0 {
		return 0, status.Error(codes.Internal, "grpc: compressed flag set with identity or empty encoding")
	}
	if max := c.s.cfg.MaxRecvMsgSize; uint64(n) > uint64(max) {
		return 0, status.Errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", n, max)
	}
	return int(n), nil
}

// halfClose records the client's END_STREAM.
func (c *conn[Req]) halfClose(st *Stream[Req]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.halfCloseLocked(st)
}

// halfCloseLocked records the client's END_STREAM: a partial message is
// dropped, and Next gives io.EOF after the whole ones (an Other stream's
// body, after its bytes). c.mu is held.
func (c *conn[Req]) halfCloseLocked(st *Stream[Req]) {
	if st.halfClosed || st.ended {
		return
	}
	st.halfClosed = true
	if st.other == nil {
		off := 0
		for {
			n, whole := frontMessage(st.rbuf[off:])
			if !whole {
				break
			}
			off += 5 + n
		}
		st.rbuf = st.rbuf[:off]
	}
	if len(st.rbuf) == 0 {
		st.rbuf = nil
	}
	st.wuIncr = 0
	if st.recvEnd == nil {
		st.recvEnd = io.EOF
	}
	st.signal()
}

// onSettings applies the client's settings and acknowledges them.
func (c *conn[Req]) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	var err error
	c.mu.Lock()
	f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitialWin
			c.peerInitialWin = int64(s.Val)
			for _, st := range c.streams {
				st.sendWin += delta
				if st.sendWin > 1<<31-1 {
					err = &connErr{code: http2.ErrCodeFlowControl, msg: "stream send window over 2^31-1"}
				}
				if delta > 0 {
					st.wakeLocked()
				}
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		}
		return nil
	})
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.writeFrames(appendSettingsAck)
}

// onPing acknowledges a ping and enforces the ping policy as grpc-go's
// server does (handlePing).
func (c *conn[Req]) onPing(f *http2.PingFrame) error {
	if f.IsAck() {
		if f.Data == goAwayPing {
			c.drainFinal()
		}
		return nil
	}
	data := f.Data
	if err := c.writeFrames(func(b []byte) []byte { return appendPing(b, true, data) }); err != nil {
		return err
	}
	c.mu.Lock()
	ns := len(c.streams)
	c.mu.Unlock()
	return c.pingPolicy(ns)
}

// pingPolicy counts a client ping against the policy, as grpc-go's
// server does (handlePing): a ping sooner than MinPingInterval after the
// previous one (sooner than 2 h with no stream open, unless
// PermitWithoutStream) is a strike; our headers or data written since the
// previous ping forgive the strikes; a third strike ends the connection
// with GOAWAY ENHANCE_YOUR_CALM "too_many_pings". ns is the number of open
// streams. It runs on the reader.
func (c *conn[Req]) pingPolicy(ns int) error {
	now := time.Now()
	defer func() { c.lastPingAt = now }()
	if c.resetPingStrikes.CompareAndSwap(true, false) {
		c.pingStrikes = 0
		return nil
	}
	cfg := &c.s.cfg
	if ns < 1 && !cfg.PermitWithoutStream {
		if c.lastPingAt.Add(2 * time.Hour).After(now) {
			c.pingStrikes++
		}
	} else if c.lastPingAt.Add(cfg.MinPingInterval).After(now) {
		c.pingStrikes++
	}
	if c.pingStrikes > 2 {
		c.goAway(http2.ErrCodeEnhanceYourCalm, "too_many_pings")
		return errTooManyPings
	}
	return nil
}

// onWindowUpdate grows a send window and wakes the Sends waiting for it.
func (c *conn[Req]) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWin += int64(f.Increment)
		if c.sendWin > 1<<31-1 {
			return &connErr{code: http2.ErrCodeFlowControl, msg: "connection send window over 2^31-1"}
		}
		for _, st := range c.streams {
			st.wakeLocked()
		}
		return nil
	}
	if st := c.streams[f.StreamID]; st != nil {
		st.sendWin += int64(f.Increment)
		st.wakeLocked()
	} else if f.StreamID > c.lastStreamID {
		return &connErr{code: http2.ErrCodeProtocol, msg: fmt.Sprintf("WINDOW_UPDATE on idle stream %d", f.StreamID)}
	}
	return nil
}

// onRSTStream ends a stream the client reset.
func (c *conn[Req]) onRSTStream(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams[f.StreamID]
	if st == nil {
		if f.StreamID > c.lastStreamID {
			return &connErr{code: http2.ErrCodeProtocol, msg: fmt.Sprintf("RST_STREAM on idle stream %d", f.StreamID)}
		}
		return nil
	}
	st.noWrite = true
	c.endLocked(st, status.Errorf(codes.Canceled, "h2bidi: the client cancelled the stream (%v)", f.ErrCode))
	return nil
}

// endLocked ends st: Sends fail with err, Next gives it after the
// messages received (unless receiving had ended already), its context is
// cancelled. The handler may still run. c.mu is held.
func (c *conn[Req]) endLocked(st *Stream[Req], err error) {
	if st.ended {
		return
	}
	st.ended = true
	st.endErr = err
	st.wuIncr = 0
	if st.recvEnd == nil {
		st.recvEnd = err
	}
	st.signal()
	st.wakeLocked()
	st.idleLocked()
	if st.deadline != nil {
		st.deadline.Stop()
	}
	st.cancel()
}

// failStream ends st for err (a status error) and tells the client: the
// trailers carry err's status (ending the stream and deciding its trailers
// hold wmu, so a handler returning at once cannot write others first).
func (c *conn[Req]) failStream(st *Stream[Req], err error) {
	c.endAndWriteTrailers(st, status.Convert(err), err)
}

// resetStream ends st with RST_STREAM code; Sends and Next get err.
func (c *conn[Req]) resetStream(st *Stream[Req], code http2.ErrCode, err error) {
	c.wmu.Lock()
	c.mu.Lock()
	write := !st.noWrite && !st.trailersSent && !c.closed
	st.noWrite = true
	c.endLocked(st, err)
	c.mu.Unlock()
	var werr error
	if write {
		werr = c.writeLocked(func(b []byte) []byte { return appendRSTStream(b, st.id, code) })
	}
	c.wunlock()
	if werr != nil {
		c.close(werr)
	}
}

// resetStreamID answers a stream error of the framer.
func (c *conn[Req]) resetStreamID(id uint32, code http2.ErrCode, err error) {
	c.mu.Lock()
	st := c.streams[id]
	if id%2 == 1 && id > c.lastStreamID {
		c.lastStreamID = id // a new stream's unreadable header block: the stream is closed
	}
	c.mu.Unlock()
	if st != nil {
		c.resetStream(st, code, status.Errorf(codes.Internal, "h2bidi: stream error: %v", err))
		return
	}
	c.writeFrames(func(b []byte) []byte { return appendRSTStream(b, id, code) })
}

// writeTrailers writes st's status: trailers, or a trailers-only response
// when nothing was sent, then RST_STREAM NO_ERROR if the client has not
// half-closed. It writes nothing once the stream was reset or its
// trailers written. While a message is half written (a Send on another
// goroutine waits for flow control), trailers would cut it: the stream
// is reset instead, with the code closest to stat's.
func (c *conn[Req]) writeTrailers(st *Stream[Req], stat *status.Status) {
	c.endAndWriteTrailers(st, stat, nil)
}

// endAndWriteTrailers is writeTrailers, ending st with end first if end
// is not nil.
func (c *conn[Req]) endAndWriteTrailers(st *Stream[Req], stat *status.Status, end error) {
	c.writeEnd(st, end, rstCode(stat.Code()), func(b []byte, headersSent bool, maxFrame uint32) []byte {
		httpStatus := 0
		if !headersSent {
			httpStatus = http.StatusOK
		}
		return appendStatus(b, st.id, maxFrame, stat, httpStatus)
	})
}

// writeEnd writes the frames build appends to end st's response (ending
// with END_STREAM; headersSent says whether response headers went
// before), then RST_STREAM NO_ERROR if the client has not half-closed;
// or, while a message is half written, RST_STREAM midCode instead. It
// ends st with end first if end is not nil, and writes nothing once the
// stream was reset or its end written.
func (c *conn[Req]) writeEnd(st *Stream[Req], end error, midCode http2.ErrCode, build func(b []byte, headersSent bool, maxFrame uint32) []byte) {
	c.wmu.Lock()
	c.mu.Lock()
	if end != nil {
		c.endLocked(st, end)
	}
	if st.noWrite || st.trailersSent || c.closed {
		c.mu.Unlock()
		c.wunlock()
		return
	}
	headersSent := st.headersSent
	midMessage := st.midMessage
	st.headersSent, st.trailersSent = true, true
	rst := !st.halfClosed
	maxFrame := c.peerMaxFrame
	c.mu.Unlock()
	err := c.writeLocked(func(b []byte) []byte {
		if midMessage {
			return appendRSTStream(b, st.id, midCode)
		}
		b = build(b, headersSent, maxFrame)
		if rst {
			b = appendRSTStream(b, st.id, http2.ErrCodeNo)
		}
		return b
	})
	c.wunlock()
	c.resetPingStrikes.Store(true)
	if err != nil {
		c.close(err)
	}
}

// rstCode is the RST_STREAM code a grpc-go client turns into code (or
// its nearest).
func rstCode(code codes.Code) http2.ErrCode {
	switch code {
	case codes.ResourceExhausted:
		return http2.ErrCodeEnhanceYourCalm
	case codes.Canceled, codes.DeadlineExceeded:
		return http2.ErrCodeCancel
	}
	return http2.ErrCodeInternal
}

// finish ends a stream whose handler returned with err. A message still
// being sent (by a Send on another goroutine) may complete first, for up
// to WriteTimeout.
func (c *conn[Req]) finish(st *Stream[Req], writeEnd func()) {
	c.mu.Lock()
	st.finishing = true
	var idle chan struct{}
	if st.midMessage && !st.ended {
		idle = make(chan struct{})
		st.idle = idle
	}
	c.mu.Unlock()
	if idle != nil {
		t := time.NewTimer(c.s.cfg.WriteTimeout)
		select {
		case <-idle:
		case <-t.C:
		}
		t.Stop()
	}
	writeEnd()
	c.mu.Lock()
	delete(c.streams, st.id)
	c.endLocked(st, status.Error(codes.Canceled, "h2bidi: the stream's handler returned"))
	st.rbuf = nil
	last := c.draining && len(c.streams) == 0
	c.mu.Unlock()
	c.s.nStreams.Add(-1)
	if last {
		c.close(errDrained)
	}
}

// writeFrames writes the frames build appends, under wmu.
func (c *conn[Req]) writeFrames(build func([]byte) []byte) error {
	c.wmu.Lock()
	err := c.writeLocked(build)
	c.wunlock()
	if err != nil {
		c.close(err)
	}
	return err
}

// writeLocked writes the frames build appends to a pooled buffer, with
// the write deadline. wmu is held.
func (c *conn[Req]) writeLocked(build func([]byte) []byte) error {
	bp := getBuf()
	defer putBuf(bp)
	*bp = build((*bp)[:0])
	// The deadline is moved only when less than three quarters of
	// WriteTimeout is left of it: setting it costs a timer update, and a
	// fan-out writes to every connection at once.
	wt := c.s.cfg.WriteTimeout
	if d := time.Now().Add(wt); d.Sub(c.wdeadline) > wt/4 {
		c.nc.SetWriteDeadline(d)
		c.wdeadline = d
	}
	_, err := c.nc.Write(*bp)
	return err
}

// wunlock releases wmu; then, while a stream WINDOW_UPDATE decided by
// Next waits (Next does not wait for wmu: it leaves the update to the
// writer holding it), it writes them.
func (c *conn[Req]) wunlock() {
	c.wmu.Unlock()
	for c.wuPending.Load() && c.wmu.TryLock() {
		c.flushWindowUpdatesLocked()
		c.wmu.Unlock()
	}
}

// flushWindowUpdatesLocked writes the streams' pending WINDOW_UPDATEs.
// wmu is held.
func (c *conn[Req]) flushWindowUpdatesLocked() {
	type update struct{ id, incr uint32 }
	var arr [8]update
	ups := arr[:0]
	c.mu.Lock()
	c.wuPending.Store(false)
	for _, st := range c.streams {
		if st.wuIncr > 0 {
			if !c.closed && !st.noWrite && !st.trailersSent {
				ups = append(ups, update{st.id, st.wuIncr})
			}
			st.wuIncr = 0
		}
	}
	c.mu.Unlock()
	if len(ups) == 0 {
		return
	}
	if err := c.writeLocked(func(b []byte) []byte {
		for _, u := range ups {
			b = appendWindowUpdate(b, u.id, u.incr)
		}
		return b
	}); err != nil {
		c.close(err)
	}
}

// goAway writes a final GOAWAY (before a close).
func (c *conn[Req]) goAway(code http2.ErrCode, debug string) {
	c.mu.Lock()
	closed, nc := c.closed, c.nc
	sid := c.lastStreamID
	c.mu.Unlock()
	if closed || nc == nil {
		return
	}
	c.wmu.Lock()
	c.writeLocked(func(b []byte) []byte { return appendGoAway(b, sid, code, debug) })
	c.wunlock()
}

// drain begins a graceful close as grpc-go's server does: GOAWAY with the
// largest stream id and a PING; the final GOAWAY follows the PING's ack
// (or 5 s).
func (c *conn[Req]) drain(debug string) {
	c.mu.Lock()
	if c.closed || c.goAwaySent {
		c.mu.Unlock()
		return
	}
	c.goAwaySent = true
	c.goAwayDebug = debug
	c.drainTimer = time.AfterFunc(5*time.Second, c.drainFinal)
	c.mu.Unlock()
	c.writeFrames(func(b []byte) []byte {
		b = appendGoAway(b, 1<<31-1, http2.ErrCodeNo, debug)
		return appendPing(b, false, goAwayPing)
	})
}

// drainFinal sends the final GOAWAY: streams after the last one seen are
// refused, and the connection closes after its last stream.
func (c *conn[Req]) drainFinal() {
	c.mu.Lock()
	if c.closed || !c.goAwaySent || c.draining {
		c.mu.Unlock()
		return
	}
	c.draining = true
	c.drainTimer.Stop()
	sid, debug, empty := c.lastStreamID, c.goAwayDebug, len(c.streams) == 0
	c.mu.Unlock()
	if c.writeFrames(func(b []byte) []byte { return appendGoAway(b, sid, http2.ErrCodeNo, debug) }) == nil && empty {
		c.close(errDrained)
	}
}

// aged runs at the connection's maximum age.
func (c *conn[Req]) aged() {
	c.drain("max_age")
	if grace := c.s.cfg.MaxConnectionAgeGrace; grace > 0 {
		c.mu.Lock()
		if !c.closed {
			c.ageTimer = time.AfterFunc(grace, func() { c.close(errAge) })
		}
		c.mu.Unlock()
	}
}

// keepalive runs on the keepalive timer (grpc-go's server keepalive,
// without its goroutine).
func (c *conn[Req]) keepalive() {
	cfg := &c.s.cfg
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	now, last := time.Now().UnixNano(), c.lastRead.Load()
	if last > c.kaPrev {
		c.kaPrev = last
		c.pingOutstanding = false
		c.kaTimer.Reset(time.Duration(last + int64(cfg.KeepaliveTime) - now))
		c.mu.Unlock()
		return
	}
	if c.pingOutstanding {
		c.mu.Unlock()
		c.close(errKeepalive)
		return
	}
	c.pingOutstanding = true
	c.kaTimer.Reset(cfg.KeepaliveTimeout)
	c.mu.Unlock()
	c.writeFrames(func(b []byte) []byte { return appendPing(b, false, [8]byte{}) })
}

// isOwned reports whether c is served here.
func (c *conn[Req]) isOwned() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.owned && !c.closed
}

// close closes the connection: the first time, its streams end
// Unavailable (their handlers go on until they return) and its timers
// stop. A drained connection (err errDrained) is only shut for writing
// first, so that the client reads our last frames and closes its end
// (rather than get a reset for bytes it sent meanwhile); the reader reads
// on until then, for at most lingerTime. Any other close, or the reader's
// end, closes the socket. A handed-off connection is not closed here.
func (c *conn[Req]) close(err error) {
	c.mu.Lock()
	if c.handedOff {
		c.mu.Unlock()
		return
	}
	first := !c.closed
	if first {
		c.closed = true
		msg := "h2bidi: the connection closed"
		if err != nil {
			msg += ": " + err.Error()
		}
		for _, st := range c.streams {
			st.noWrite = true
			c.endLocked(st, status.Error(codes.Unavailable, msg))
		}
		for _, t := range []*time.Timer{c.kaTimer, c.ageTimer, c.drainTimer} {
			if t != nil {
				t.Stop()
			}
		}
	}
	linger := first && errors.Is(err, errDrained) && c.owned
	if !linger && c.lingerTimer != nil {
		c.lingerTimer.Stop()
	}
	c.mu.Unlock()
	if linger {
		if cw, ok := c.raw.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			c.mu.Lock()
			c.lingerTimer = time.AfterFunc(lingerTime, func() { c.raw.Close() })
			c.mu.Unlock()
			return
		}
	}
	c.raw.Close()
}
