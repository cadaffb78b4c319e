// Package recvloop receives a stream's messages on a goroutine of its own,
// so that the stream's handler can wait for a message and for its other
// events (timers, plan changes, shutdown) in one select.
package recvloop

import "context"

// Start calls recv on a new goroutine until it fails, handing each message
// to msgs and the error that ended the loop to errs (buffered: the loop
// never waits to report it). The goroutine ends when recv fails, or when
// ctx is done while a message waits to be taken. recv must fail once the
// stream ends, as grpc's Recv does after the handler returns, so that the
// goroutine does not outlive the stream. Start does not block.
func Start[T any](ctx context.Context, recv func() (T, error)) (msgs <-chan T, errs <-chan error) {
	m := make(chan T)
	e := make(chan error, 1)
	go func() {
		for {
			v, err := recv()
			if err != nil {
				e <- err
				return
			}
			select {
			case m <- v:
			case <-ctx.Done():
				return
			}
		}
	}()
	return m, e
}
