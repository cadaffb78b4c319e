package h2bidi

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// othersListener hands the connections that are not ours to a grpc.Server.
type othersListener struct {
	ch   chan net.Conn // unbuffered: a connection's goroutine waits for Accept
	done chan struct{} // closed by Close
	once sync.Once
	addr atomic.Value // net.Addr of the served listener
}

func newOthersListener() *othersListener {
	return &othersListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

// Accept returns the next handed-off connection, or net.ErrClosed once
// the listener is closed.
func (l *othersListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close makes Accept fail.
func (l *othersListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr is the served listener's address (or an empty TCP address before
// Serve).
func (l *othersListener) Addr() net.Addr {
	if a, ok := l.addr.Load().(net.Addr); ok {
		return a
	}
	return &net.TCPAddr{}
}

func (l *othersListener) setAddr(a net.Addr) {
	if l.addr.Load() == nil {
		l.addr.Store(a)
	}
}

// handOff gives c to Accept, or closes it when the listener is closed
// first. It reports whether Accept took it.
func (l *othersListener) handOff(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		c.Close()
		return false
	}
}

// replayConn is a connection whose reads first return buf, the bytes
// already read from it, then continue from the connection. auth is the
// AuthInfo of the handshake that made it.
type replayConn struct {
	net.Conn
	buf  []byte
	auth credentials.AuthInfo
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.buf) > 0 {
		n := copy(p, r.buf)
		r.buf = r.buf[n:]
		if len(r.buf) == 0 {
			r.buf = nil
		}
		return n, nil
	}
	return r.Conn.Read(p)
}

// othersCreds are the credentials of handed-off connections: their
// handshake already happened.
type othersCreds struct {
	info credentials.ProtocolInfo
}

func newOthersCreds(c credentials.TransportCredentials) *othersCreds {
	if c == nil {
		c = insecure.NewCredentials()
	}
	return &othersCreds{info: c.Info()}
}

var errNotHandedOff = errors.New("h2bidi: OthersCreds serves only connections from Others")

func (o *othersCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	rc, ok := c.(*replayConn)
	if !ok {
		return nil, nil, errNotHandedOff
	}
	return rc, rc.auth, nil
}

func (o *othersCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("h2bidi: OthersCreds are server credentials")
}

func (o *othersCreds) Info() credentials.ProtocolInfo { return o.info }

func (o *othersCreds) Clone() credentials.TransportCredentials {
	return &othersCreds{info: o.info}
}

// OverrideServerName is a no-op: these credentials never dial.
func (o *othersCreds) OverrideServerName(string) error { return nil }
