package consul

import (
	"context"
	"net"
	"sync"
)

// connSet remembers the connections a transport dials so that a closing
// resolver can end them all. Closing only the idle ones is not enough: a
// response read to its end goes back to the idle pool a moment after the
// caller saw the end, and a cancelled request's connection is closed in
// the background, so either can outlive Close with its two goroutines.
type connSet struct {
	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// wrap returns a dial function that records what dial returns. A dial that
// completes after closeAll gets its connection closed at once.
func (s *connSet) wrap(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, set: s}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed {
			c.Close()
			return nil, net.ErrClosed
		}
		if s.conns == nil {
			s.conns = make(map[*trackedConn]struct{})
		}
		s.conns[tc] = struct{}{}
		return tc, nil
	}
}

// closeAll closes every connection still open and refuses later dials.
func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := s.conns
	s.conns, s.closed = nil, true
	s.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

func (s *connSet) forget(c *trackedConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

type trackedConn struct {
	net.Conn
	set  *connSet
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.set.forget(c) })
	return c.Conn.Close()
}
