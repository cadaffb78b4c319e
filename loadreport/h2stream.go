package loadreport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/url"
	"strconv"
	"time"

	orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	orcasvc "github.com/cncf/xds/go/xds/service/orca/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The collector's own ORCA stream: a plain HTTP/2 client of one gRPC call,
// run entirely on the stream's goroutine (no reader, writer, keepalive or
// serializer goroutines as a grpc.ClientConn has), so that an endpoint
// costs one goroutine, one connection and a few small buffers. It is used
// unless Config.DialOptions asks for a grpc.ClientConn. Instead of
// keepalive pings, a stream silent for max(MaxStretchedTTL, 3×Interval)
// (real time, not the collector's clock) is ended and dialed again.

// streamMethod is the path of the one call.
const streamMethod = "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics"

// dialTimeout bounds connecting and the TLS handshake.
const dialTimeout = 20 * time.Second

// requestFrame returns the gRPC message of the StreamCoreMetrics request
// asking for interval: a 5-byte prefix (uncompressed, length) and the
// request.
func requestFrame(interval time.Duration) []byte {
	b, err := proto.Marshal(&orcasvc.OrcaLoadReportRequest{ReportInterval: durationpb.New(interval)})
	if err != nil {
		panic(err) // a duration always marshals
	}
	out := make([]byte, 5, 5+len(b))
	binary.BigEndian.PutUint32(out[1:], uint32(len(b)))
	return append(out, b...)
}

// streamH2 runs one StreamCoreMetrics call to s over a connection of its
// own, recording each report, until it fails or ctx is done. It reports
// whether any report arrived. Errors carry gRPC codes as a grpc.ClientConn
// would give them: Unimplemented when the endpoint serves no ORCA,
// Unavailable when it cannot be reached or goes away.
func (c *Collector) streamH2(ctx context.Context, s *stream) (got bool, err error) {
	h, err := c.openH2(ctx, s)
	if h == nil {
		return false, err
	}
	defer h.close()
	return h.read()
}

// h2Stream is one open stream of streamH2. What its read loop needs is
// here, on the heap, rather than in the loop's frame: a stream waits for
// its next report in read, and with small frames there it uses less than
// a quarter of its goroutine's 8 KiB stack, which the runtime halves.
type h2Stream struct {
	c        *Collector
	s        *stream
	conn     net.Conn
	fr       *http2.Framer
	actx     context.Context // ends with the stream; its end closes conn
	acancel  context.CancelCauseFunc
	stop     func() bool // stops closing conn at actx's end
	watchdog *time.Timer // ends actx after silence without a report
	msg      []byte      // received bytes of the gRPC messages not yet decoded
	got      bool        // whether a report arrived
}

// openH2 dials s, sends the request, and returns the open stream; or nil
// and the error that ends the attempt.
func (c *Collector) openH2(ctx context.Context, s *stream) (*h2Stream, error) {
	authority := s.addr.String()
	raw, conn, err := c.connect(ctx, authority)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	// The watchdog ends a stream that stays silent for silence (a
	// grpc.ClientConn would ping): a dead or stuck endpoint is dialed again.
	h := &h2Stream{c: c, s: s, conn: conn}
	h.actx, h.acancel = context.WithCancelCause(ctx)
	h.watchdog = time.AfterFunc(c.silence, func() { h.acancel(errSilent) })
	// A cancelled actx closes the connection (the socket: with TLS, at
	// once, without a close_notify), which ends any read or write.
	h.stop = context.AfterFunc(h.actx, func() { raw.Close() })
	scheme := "http"
	if c.cfg.Credentials != nil {
		scheme = "https"
	}

	// No read buffer: a report is two reads (frame header, payload) a
	// second, and a buffer would cost each endpoint 1 KiB.
	h.fr = http2.NewFramer(h.conn, h.conn)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.fr.MaxHeaderListSize = 16 << 10
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", scheme}, {":path", streamMethod}, {":authority", authority},
		{"content-type", "application/grpc"}, {"te", "trailers"}, {"user-agent", "lookaside-loadreport"},
	} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if _, err := h.conn.Write([]byte(http2.ClientPreface)); err != nil {
		return nil, h.fail(err)
	}
	if err := errors.Join(
		h.fr.WriteSettings(),
		h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr.Bytes(), EndHeaders: true}),
		h.fr.WriteData(1, true, c.request),
	); err != nil {
		return nil, h.fail(err)
	}
	return h, nil
}

// fail ends the stream, which failed with err before its first read, and
// returns the attempt's error (read before the end cancels actx).
func (h *h2Stream) fail(err error) error {
	err = h.c.h2err(h.actx, err)
	h.close()
	return err
}

// close ends the stream and its connection.
func (h *h2Stream) close() {
	h.stop()
	h.watchdog.Stop()
	h.acancel(nil)
	h.conn.Close()
}

// read reads and handles frames until the stream ends, and reports
// whether any report arrived and why it ended.
func (h *h2Stream) read() (bool, error) {
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return h.got, h.c.h2err(h.actx, err)
		}
		if err := h.handle(f); err != nil {
			return h.got, err
		}
	}
}

// handle handles one frame, and returns the error that ends the stream,
// if it does.
func (h *h2Stream) handle(f http2.Frame) error {
	var err error
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() {
			err = h.fr.WriteSettingsAck()
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			err = h.fr.WritePing(true, f.Data)
		}
	case *http2.GoAwayFrame:
		return status.Errorf(codes.Unavailable, "loadreport: the endpoint is going away (%v)", f.ErrCode)
	case *http2.RSTStreamFrame:
		if f.StreamID == 1 {
			return status.Errorf(codes.Unavailable, "loadreport: the endpoint reset the stream (%v)", f.ErrCode)
		}
	case *http2.MetaHeadersFrame:
		if f.StreamID != 1 {
			return nil
		}
		if st := f.PseudoValue("status"); st != "" && st != "200" {
			code := codes.Unavailable
			if st == "404" {
				code = codes.Unimplemented
			}
			return status.Errorf(code, "loadreport: HTTP status %s", st)
		}
		if e, done := grpcStatus(f.RegularFields()); done {
			return e
		}
		if f.StreamEnded() {
			return errors.New("loadreport: the endpoint ended the stream")
		}
	case *http2.DataFrame:
		if f.StreamID != 1 {
			return nil
		}
		if err := h.data(f.Data()); err != nil {
			return err
		}
		if len(f.Data()) > 0 {
			// Give the window back at once: reports are small.
			n := uint32(len(f.Data()))
			err = errors.Join(h.fr.WriteWindowUpdate(0, n), h.fr.WriteWindowUpdate(1, n))
		}
		if err == nil && f.StreamEnded() {
			return errors.New("loadreport: the endpoint ended the stream")
		}
	}
	if err != nil {
		return h.c.h2err(h.actx, err)
	}
	return nil
}

// data takes a DATA frame's payload: it records each whole report.
func (h *h2Stream) data(data []byte) error {
	h.msg = append(h.msg, data...)
	for {
		rep, used, err := nextReport(h.msg)
		if err != nil {
			return err
		}
		if rep == nil {
			return nil
		}
		h.got = true
		h.watchdog.Reset(h.c.silence)
		h.c.received(h.s, rep)
		h.msg = append(h.msg[:0], h.msg[used:]...)
	}
}

// connect dials authority and, with Credentials, runs the TLS
// handshake, within dialTimeout and ctx: it returns the socket and the
// connection to use (the same without Credentials). Both run on a goroutine of their
// own, which ends with them: they need deep stacks, and a stream's
// goroutine that ran them would keep a stack twice the size it needs
// while it waits for reports (the runtime halves a stack only when a
// quarter of it holds what is in use).
func (c *Collector) connect(ctx context.Context, authority string) (raw, conn net.Conn, err error) {
	type dialed struct {
		raw, conn net.Conn
		err       error
	}
	done := make(chan dialed, 1)
	go func() {
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		raw, err := (&net.Dialer{}).DialContext(dctx, "tcp", authority)
		conn := raw
		if err == nil && c.cfg.Credentials != nil {
			if conn, _, err = c.cfg.Credentials.ClientHandshake(dctx, authority, raw); err != nil {
				raw.Close()
			}
		}
		done <- dialed{raw, conn, err}
	}()
	d := <-done
	return d.raw, d.conn, d.err
}

// nextReport decodes the first gRPC message of b: the report and the
// bytes it used, or nil and 0 while b holds no whole message, or an error
// for a message too large, compressed or not a report.
func nextReport(b []byte) (*orcapb.OrcaLoadReport, int, error) {
	if len(b) < 5 {
		return nil, 0, nil
	}
	n := binary.BigEndian.Uint32(b[1:5])
	if n > maxReportSize {
		return nil, 0, status.Errorf(codes.ResourceExhausted, "loadreport: report of %d bytes", n)
	}
	if b[0] != 0 {
		return nil, 0, status.Error(codes.Internal, "loadreport: compressed report")
	}
	if uint32(len(b)-5) < n {
		return nil, 0, nil
	}
	rep := &orcapb.OrcaLoadReport{}
	if err := proto.Unmarshal(b[5:5+n], rep); err != nil {
		return nil, 0, status.Errorf(codes.Internal, "loadreport: bad report: %v", err)
	}
	return rep, 5 + int(n), nil
}

// errSilent ends a stream that sent no report for a while.
var errSilent = errors.New("loadreport: no report for too long; dialing again")

// h2err is the error of a stream whose connection failed: the cause of
// actx's end (errSilent, or its parent's error) when it ended, else
// Unavailable.
func (c *Collector) h2err(actx context.Context, err error) error {
	if actx.Err() != nil {
		if cause := context.Cause(actx); errors.Is(cause, errSilent) {
			return status.Error(codes.Unavailable, cause.Error())
		}
		return actx.Err()
	}
	return status.Error(codes.Unavailable, err.Error())
}

// grpcStatus returns the error a header block's grpc-status gives, and
// whether it has one (a trailer, or the only headers of a call that
// failed at once). Status 0 is the end of the stream.
func grpcStatus(fields []hpack.HeaderField) (error, bool) {
	var gs, gm string
	for _, f := range fields {
		switch f.Name {
		case "grpc-status":
			gs = f.Value
		case "grpc-message":
			gm = f.Value
		}
	}
	if gs == "" {
		return nil, false
	}
	n, err := strconv.Atoi(gs)
	if err != nil {
		return status.Errorf(codes.Unknown, "loadreport: malformed grpc-status %q", gs), true
	}
	if n == 0 {
		return errors.New("loadreport: the endpoint ended the stream"), true
	}
	if m, err := url.PathUnescape(gm); err == nil {
		gm = m
	}
	return status.Error(codes.Code(n), gm), true
}
