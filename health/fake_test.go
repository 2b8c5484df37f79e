package health_test

import (
	"sync"
	"time"

	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// fake is a Reporter whose health the test sets.
type fake struct {
	mu sync.Mutex
	h  resilient.Health
}

func newFake(s resilient.State, age time.Duration, err error) *fake {
	f := &fake{}
	f.set(s, age, err)
	return f
}

func (f *fake) set(s resilient.State, age time.Duration, err error) {
	f.mu.Lock()
	f.h = resilient.Health{State: s, Since: time.Now().Add(-age), Err: err}
	f.mu.Unlock()
}

func (f *fake) Health() resilient.Health {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.h
}
