package h2bidi

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Streams of other methods on a connection served here go to
// Config.Other as HTTP/2 requests, as net/http's HTTP/2 server would give
// them (grpc.Server.ServeHTTP serves them): the stream's handler
// goroutine runs Other.ServeHTTP; the request body reads the stream's
// DATA, its window given back as it is read; the response writes to the
// stream under the client's flow control.

var (
	// errBodyClosed says what grpc.Server.ServeHTTP looks for (it makes
	// the read Canceled).
	errBodyClosed  = errors.New("h2bidi: request body closed by handler")
	errHandlerDone = errors.New("h2bidi: the handler returned")
)

// otherStream is what a stream served by Config.Other has more. Its
// fields are the handler goroutine's, but bodyClosed, under c.mu.
type otherStream struct {
	req *http.Request
	// bodyClosed: the request body was closed; what comes is dropped.
	bodyClosed bool
}

// startOther starts a stream of another method, served by Config.Other,
// for the header block f. timeout, if not 0, is the grpc-timeout.
func (c *conn[Req]) startOther(f *http2.MetaHeadersFrame, method, path string, timeout time.Duration) error {
	id := f.StreamID
	u, err := url.ParseRequestURI(path)
	if err != nil || method == "" || method == http.MethodConnect {
		return c.writeFrames(func(b []byte) []byte { return appendRSTStream(b, id, http2.ErrCodeProtocol) })
	}
	header := make(http.Header, len(f.Fields))
	var authority, host string
	for _, hf := range f.Fields {
		switch {
		case hf.Name == ":authority":
			authority = hf.Value
		case hf.IsPseudo():
		case hf.Name == "host":
			host = hf.Value
		default:
			k := textproto.CanonicalMIMEHeaderKey(hf.Name)
			header[k] = append(header[k], hf.Value)
		}
	}
	if authority == "" {
		authority = host
	}
	ctx := peer.NewContext(context.Background(), c.peer)
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, c.raw.LocalAddr())
	var cancel context.CancelFunc
	if timeout != 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	r := &http.Request{
		Method:        method,
		URL:           u,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		ProtoMinor:    0,
		Header:        header,
		ContentLength: -1,
		Host:          authority,
		RemoteAddr:    c.raw.RemoteAddr().String(),
		RequestURI:    path,
		TLS:           c.tlsState(),
	}
	if f.StreamEnded() {
		r.Body = http.NoBody
	}
	r = r.WithContext(ctx)
	c.startStream(id, ctx, cancel, f.StreamEnded(), timeout, &otherStream{req: r})
	return nil
}

// tlsState is the connection's TLS state for http.Request.TLS (from
// which grpc.Server.ServeHTTP makes the peer's credentials.TLSInfo), or
// nil for plaintext.
func (c *conn[Req]) tlsState() *tls.ConnectionState {
	if info, ok := c.peer.AuthInfo.(credentials.TLSInfo); ok {
		cs := info.State
		return &cs
	}
	if tc, ok := c.nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		cs := tc.ConnectionState()
		return &cs
	}
	return nil
}

// runOther runs on the goroutine of a stream served by Config.Other.
func (c *conn[Req]) runOther(st *Stream[Req]) {
	defer c.s.wg.Done()
	r := st.other.req
	st.other.req = nil
	if r.Body == nil {
		r.Body = &otherBody[Req]{st: st}
	}
	w := &otherWriter[Req]{st: st, header: make(http.Header)}
	func() {
		defer func() {
			if p := recover(); p != nil {
				w.panicked = true
				if p != http.ErrAbortHandler {
					c.s.log.Error("h2bidi: Config.Other panicked", "path", r.URL.Path, "panic", p)
				}
			}
		}()
		c.s.cfg.Other.ServeHTTP(w, r)
	}()
	w.done = true
	if b, ok := r.Body.(*otherBody[Req]); ok {
		b.Close()
	}
	c.finish(st, w.writeEnd)
}

// otherBody is the request body of a stream served by Config.Other.
type otherBody[Req any] struct{ st *Stream[Req] }

// Read reads what the client sent, waiting for it; io.EOF after the
// client's END_STREAM.
func (b *otherBody[Req]) Read(p []byte) (int, error) {
	st := b.st
	c := st.c
	for {
		c.mu.Lock()
		if st.other.bodyClosed {
			c.mu.Unlock()
			return 0, errBodyClosed
		}
		if len(st.rbuf) > 0 && len(p) > 0 {
			n := copy(p, st.rbuf)
			st.rbuf = st.rbuf[n:]
			if len(st.rbuf) == 0 {
				st.rbuf = nil
			}
			more := len(st.rbuf) > 0 || st.recvEnd != nil
			incr := st.grantLocked(int64(c.s.cfg.InitialWindowSize))
			c.mu.Unlock()
			if more {
				st.signal()
			}
			c.giveWindow(st, incr)
			return n, nil
		}
		if err := st.recvEnd; err != nil {
			c.mu.Unlock()
			return 0, err
		}
		c.mu.Unlock()
		if len(p) == 0 {
			return 0, nil
		}
		<-st.ready
	}
}

// Close drops what the client sent and makes Read fail.
func (b *otherBody[Req]) Close() error {
	st := b.st
	st.c.mu.Lock()
	st.other.bodyClosed = true
	st.rbuf = nil
	st.c.mu.Unlock()
	st.signal()
	return nil
}

// otherWriter is the http.ResponseWriter of a stream served by
// Config.Other, used on its handler goroutine. Headers go with the first
// Write or Flush (or at the end); trailers, as net/http's HTTP/2 server
// sends them, are the header keys declared in "Trailer" and those prefixed
// with http.TrailerPrefix, set by the end.
type otherWriter[Req any] struct {
	st          *Stream[Req]
	header      http.Header
	code        int
	wroteHeader bool // WriteHeader was called
	sentHeader  bool // the HEADERS went (or were decided)
	declared    map[string]bool
	done        bool // the handler returned
	panicked    bool
}

func (w *otherWriter[Req]) Header() http.Header { return w.header }

// WriteHeader sets the response's status code; informational (1xx) codes
// are not sent.
func (w *otherWriter[Req]) WriteHeader(code int) {
	if w.wroteHeader || w.done || code < 200 || code > 999 {
		return
	}
	w.wroteHeader = true
	w.code = code
}

// Write writes p as DATA frames, after the response HEADERS the first
// time, waiting as the client's flow control requires.
func (w *otherWriter[Req]) Write(p []byte) (int, error) {
	if w.done {
		return 0, errHandlerDone
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	headers := noHeaders
	if !w.sentHeader {
		headers = w.appendHeaders()
	}
	err := w.st.send(p, headers)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush sends the response HEADERS if they have not gone yet (the data
// is written as it comes).
func (w *otherWriter[Req]) Flush() { w.FlushError() }

// FlushError is Flush, with the error (for http.ResponseController).
func (w *otherWriter[Req]) FlushError() error {
	if w.done {
		return errHandlerDone
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.sentHeader {
		return nil
	}
	st, c := w.st, w.st.c
	build := w.appendHeaders()
	c.wmu.Lock()
	c.mu.Lock()
	if st.ended || st.noWrite || st.trailersSent || c.closed {
		err := st.sendErrLocked()
		c.mu.Unlock()
		c.wunlock()
		return err
	}
	write := !st.headersSent
	st.headersSent = true
	maxFrame := c.peerMaxFrame
	c.mu.Unlock()
	var err error
	if write {
		err = c.writeLocked(func(b []byte) []byte { return build(b, st.id, maxFrame) })
	}
	c.wunlock()
	if err != nil {
		c.close(err)
		return status.Errorf(codes.Unavailable, "h2bidi: writing to the connection: %v", err)
	}
	c.resetPingStrikes.Store(true)
	return nil
}

// appendHeaders snapshots the response headers (once) and returns what
// appends them as a HEADERS frame.
func (w *otherWriter[Req]) appendHeaders() func(b []byte, streamID, maxFrame uint32) []byte {
	w.sentHeader = true
	fields := w.headerFields(false)
	return func(b []byte, streamID, maxFrame uint32) []byte {
		return appendHeaders(b, streamID, false, maxFrame, fields...)
	}
}

// noHeaders is the HEADERS builder of a Write after the HEADERS went.
func noHeaders(b []byte, _, _ uint32) []byte { return b }

// headerFields returns the response's header fields: :status and the
// headers (end: with the trailers' values too, for a response that ends
// before its headers went). It notes the trailers declared.
func (w *otherWriter[Req]) headerFields(end bool) []hpack.HeaderField {
	code := w.code
	if code == 0 {
		code = http.StatusOK
	}
	for _, v := range w.header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			k = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(k))
			if k == "" || !httpguts.ValidTrailerHeader(k) {
				continue
			}
			if w.declared == nil {
				w.declared = make(map[string]bool)
			}
			w.declared[k] = true
		}
	}
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(code)}}
	for k, vv := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if end {
				fields = appendFields(fields, strings.TrimPrefix(k, http.TrailerPrefix), vv)
			}
			continue
		}
		if w.declared[k] && !end {
			continue
		}
		switch k {
		case "Trailer", "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade":
			continue
		}
		fields = appendFields(fields, k, vv)
	}
	return fields
}

// appendFields appends a header's values as fields, its name lower-cased.
func appendFields(fields []hpack.HeaderField, k string, vv []string) []hpack.HeaderField {
	name := strings.ToLower(k)
	if !httpguts.ValidHeaderFieldName(name) {
		return fields
	}
	for _, v := range vv {
		if httpguts.ValidHeaderFieldValue(v) {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	return fields
}

// trailerFields returns the trailers set by the end of the handler.
func (w *otherWriter[Req]) trailerFields() []hpack.HeaderField {
	var fields []hpack.HeaderField
	for k, vv := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			fields = appendFields(fields, strings.TrimPrefix(k, http.TrailerPrefix), vv)
		} else if w.declared[k] {
			fields = appendFields(fields, k, vv)
		}
	}
	return fields
}

// writeEnd ends the response once the handler returned: the HEADERS if
// none went (with END_STREAM), else the trailers, or an empty DATA frame
// with END_STREAM when there are none. A handler that panicked gets its
// stream reset.
func (w *otherWriter[Req]) writeEnd() {
	st, c := w.st, w.st.c
	if w.panicked {
		c.resetStream(st, http2.ErrCodeInternal, status.Error(codes.Internal, "h2bidi: the handler panicked"))
		return
	}
	var fields []hpack.HeaderField
	if !w.sentHeader {
		fields = w.headerFields(true)
	} else {
		fields = w.trailerFields()
	}
	c.writeEnd(st, nil, http2.ErrCodeInternal, func(b []byte, headersSent bool, maxFrame uint32) []byte {
		if len(fields) == 0 {
			return appendFrameHeader(b, 0, http2.FrameData, http2.FlagDataEndStream, st.id)
		}
		return appendHeaders(b, st.id, true, maxFrame, fields...)
	})
}

var _ io.ReadCloser = (*otherBody[int])(nil)
var _ http.Flusher = (*otherWriter[int])(nil)
