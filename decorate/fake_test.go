package decorate_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// fakePublisher is a scripted message.Publisher: call n returns script[n]
// (nil once the script runs out) and records the UUIDs it was given.
type fakePublisher struct {
	mu     sync.Mutex
	script []func(msgs []*message.Message) error
	calls  [][]string
	closed atomic.Int32
}

func (f *fakePublisher) Publish(_ string, msgs ...*message.Message) error {
	f.mu.Lock()
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.UUID
	}
	f.calls = append(f.calls, ids)
	var step func([]*message.Message) error
	if len(f.script) > 0 {
		step, f.script = f.script[0], f.script[1:]
	}
	f.mu.Unlock()
	if step == nil {
		return nil
	}
	return step(msgs)
}

func (f *fakePublisher) Close() error {
	f.closed.Add(1)
	return nil
}

func (f *fakePublisher) Calls() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.calls...)
}

func fail(err error) func([]*message.Message) error {
	return func([]*message.Message) error { return err }
}

func failN(n int, err error) []func([]*message.Message) error {
	s := make([]func([]*message.Message) error, n)
	for i := range s {
		s[i] = fail(err)
	}
	return s
}

// blockUntilDone waits for the first message's context to end and returns
// its error, as a publisher honouring message contexts does.
func blockUntilDone(msgs []*message.Message) error {
	<-msgs[0].Context().Done()
	return msgs[0].Context().Err()
}

var errTransient = errors.New("fake: connection reset")

func newMessages(n int) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte("x"))
	}
	return msgs
}

// connFake is a fakePublisher that reports a connection state, and can
// announce that someone asked about it while it was down.
type connFake struct {
	fakePublisher
	up        atomic.Bool
	askedDown chan struct{} // gets a value each time IsConnected says false
}

func newConnFake(up bool) *connFake {
	f := &connFake{askedDown: make(chan struct{}, 1000)}
	f.up.Store(up)
	return f
}

func (f *connFake) IsConnected() bool {
	up := f.up.Load()
	if !up {
		select {
		case f.askedDown <- struct{}{}:
		default:
		}
	}
	return up
}

// waitFake also implements WaitConnected, released by connect.
type waitFake struct {
	*connFake
	mu        sync.Mutex
	connected chan struct{}
	waits     atomic.Int32
	waiting   chan struct{} // gets a value when WaitConnected starts
}

func newWaitFake() *waitFake {
	f := &waitFake{connFake: newConnFake(false), connected: make(chan struct{}), waiting: make(chan struct{}, 100)}
	return f
}

func (f *waitFake) connect() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.up.Store(true)
	close(f.connected)
}

func (f *waitFake) WaitConnected(ctx context.Context) error {
	f.waits.Add(1)
	f.waiting <- struct{}{}
	f.mu.Lock()
	connected := f.connected
	f.mu.Unlock()
	select {
	case <-connected:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
