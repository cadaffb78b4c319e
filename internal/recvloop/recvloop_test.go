package recvloop

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeStream hands out its messages, then fails with end.
type fakeStream struct {
	msgs []int
	end  error
}

func (f *fakeStream) recv() (int, error) {
	if len(f.msgs) == 0 {
		return 0, f.end
	}
	v := f.msgs[0]
	f.msgs = f.msgs[1:]
	return v, nil
}

func TestStartDeliversInOrderThenTheError(t *testing.T) {
	end := errors.New("stream ended")
	msgs, errs := Start(context.Background(), (&fakeStream{msgs: []int{1, 2, 3}, end: end}).recv)
	for want := 1; want <= 3; want++ {
		select {
		case got := <-msgs:
			if got != want {
				t.Fatalf("message %d, want %d", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no message %d", want)
		}
	}
	select {
	case err := <-errs:
		if !errors.Is(err, end) {
			t.Fatalf("error %v, want %v", err, end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no error after the last message")
	}
}

// A message nobody takes does not keep the goroutine once ctx is done.
func TestStartEndsWithContextWhileAMessageWaits(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	msgs, _ := Start(ctx, (&fakeStream{msgs: []int{1, 2}}).recv)
	<-msgs // the loop now waits to hand over 2
	cancel()
	// goleak (TestMain) fails the package if the goroutine is left.
}
