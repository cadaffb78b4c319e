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
	authority := s.addr.String()
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", authority)
	if err != nil {
		return false, status.Error(codes.Unavailable, err.Error())
	}
	defer conn.Close()
	// The watchdog ends a stream that stays silent for silence (a
	// grpc.ClientConn would ping): a dead or stuck endpoint is dialed again.
	actx, acancel := context.WithCancelCause(ctx)
	defer acancel(nil)
	silence := c.silence
	watchdog := time.AfterFunc(silence, func() { acancel(errSilent) })
	defer watchdog.Stop()
	// A cancelled actx closes the connection, which ends any read or write.
	stop := context.AfterFunc(actx, func() { conn.Close() })
	defer stop()
	scheme := "http"
	if c.cfg.Credentials != nil {
		scheme = "https"
		tconn, _, err := c.cfg.Credentials.ClientHandshake(dctx, authority, conn)
		if err != nil {
			return false, status.Error(codes.Unavailable, err.Error())
		}
		conn = tconn
		defer conn.Close()
	}
	cancel()

	// No read buffer: a report is two reads (frame header, payload) a
	// second, and a buffer would cost each endpoint 1 KiB.
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 16 << 10
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", scheme}, {":path", streamMethod}, {":authority", authority},
		{"content-type", "application/grpc"}, {"te", "trailers"}, {"user-agent", "lookaside-loadreport"},
	} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		return false, c.h2err(actx, err)
	}
	if err := errors.Join(
		fr.WriteSettings(),
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr.Bytes(), EndHeaders: true}),
		fr.WriteData(1, true, c.request),
	); err != nil {
		return false, c.h2err(actx, err)
	}

	var msg []byte // received bytes of the gRPC messages not yet decoded
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return got, c.h2err(actx, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				err = fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				err = fr.WritePing(true, f.Data)
			}
		case *http2.GoAwayFrame:
			return got, status.Errorf(codes.Unavailable, "loadreport: the endpoint is going away (%v)", f.ErrCode)
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return got, status.Errorf(codes.Unavailable, "loadreport: the endpoint reset the stream (%v)", f.ErrCode)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != 1 {
				continue
			}
			if st := f.PseudoValue("status"); st != "" && st != "200" {
				code := codes.Unavailable
				if st == "404" {
					code = codes.Unimplemented
				}
				return got, status.Errorf(code, "loadreport: HTTP status %s", st)
			}
			if e, done := grpcStatus(f.RegularFields()); done {
				return got, e
			}
			if f.StreamEnded() {
				return got, errors.New("loadreport: the endpoint ended the stream")
			}
		case *http2.DataFrame:
			if f.StreamID != 1 {
				continue
			}
			data := f.Data()
			msg = append(msg, data...)
			for {
				rep, used, err := nextReport(msg)
				if err != nil {
					return got, err
				}
				if rep == nil {
					break
				}
				got = true
				watchdog.Reset(silence)
				c.received(s, rep)
				msg = append(msg[:0], msg[used:]...)
			}
			if len(data) > 0 {
				// Give the window back at once: reports are small.
				err = errors.Join(fr.WriteWindowUpdate(0, uint32(len(data))), fr.WriteWindowUpdate(1, uint32(len(data))))
			}
			if err == nil && f.StreamEnded() {
				return got, errors.New("loadreport: the endpoint ended the stream")
			}
		}
		if err != nil {
			return got, c.h2err(actx, err)
		}
	}
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
