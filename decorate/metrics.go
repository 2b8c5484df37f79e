package decorate

import (
	"errors"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// PublishResult is what Metrics reports about one Publish call.
type PublishResult struct {
	Topic string
	// Messages is the number of messages passed to Publish.
	Messages int
	// Duration is how long Publish took, retries and waits included when
	// Metrics is stacked above Retry.
	Duration time.Duration
	// Err is what Publish returned.
	Err error
}

// Metrics returns a decorator that calls observe after every Publish, on the
// publishing goroutine (keep it short), with the topic, the number of
// messages, the duration and the error. It is the place to feed a counter
// and a histogram of your metrics library, without this module depending on
// one. Stacked outermost it sees what callers see; stacked under Retry it
// sees every attempt.
func Metrics(observe func(PublishResult)) message.PublisherDecorator {
	return func(pub message.Publisher) (message.Publisher, error) {
		if pub == nil {
			return nil, errors.New("decorate: Metrics: nil publisher")
		}
		if observe == nil {
			return nil, errors.New("decorate: Metrics: nil observe function")
		}
		return forward(&metricsPublisher{pub: pub, observe: observe}, pub), nil
	}
}

type metricsPublisher struct {
	pub     message.Publisher
	observe func(PublishResult)
}

func (m *metricsPublisher) Publish(topic string, messages ...*message.Message) error {
	start := time.Now()
	err := m.pub.Publish(topic, messages...)
	m.observe(PublishResult{Topic: topic, Messages: len(messages), Duration: time.Since(start), Err: err})
	return err
}

func (m *metricsPublisher) Close() error { return m.pub.Close() }
