package resilient_test

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// failingMarshaler fails for messages carrying metadata "fail", adds a
// header AMQP cannot encode to those carrying "unencodable", and sets a
// delivery mode that does not exist on those carrying "delivery_mode".
type failingMarshaler struct{ amqp.DefaultMarshaler }

func (m failingMarshaler) Marshal(msg *message.Message) (amqp091.Publishing, error) {
	if msg.Metadata.Get("fail") != "" {
		return amqp091.Publishing{}, errors.New("cannot encode this one")
	}
	pub, err := m.DefaultMarshaler.Marshal(msg)
	if msg.Metadata.Get("unencodable") != "" {
		pub.Headers["count"] = uint64(1)
	}
	if msg.Metadata.Get("delivery_mode") != "" {
		pub.DeliveryMode = 7
	}
	return pub, err
}

// publishAlongside publishes to a healthy topic while bad input is tried,
// and checks afterwards that the healthy topic lost nothing.
type healthyTopic struct {
	t     *testing.T
	queue string
	ids   brokertest.IDs
}

func newHealthyTopic(t *testing.T) *healthyTopic {
	h := &healthyTopic{t: t, queue: brokertest.Name("healthy")}
	brokertest.DeleteQueues(t, h.queue)
	return h
}

func (h *healthyTopic) publish(pub message.Publisher) {
	h.t.Helper()
	msgs, ids := newMessages(20)
	if err := pub.Publish(h.queue, msgs...); err != nil {
		h.t.Fatalf("healthy topic: %v", err)
	}
	h.ids.Add(ids...)
}

func (h *healthyTopic) requireNoneLost() {
	h.t.Helper()
	brokertest.RequireNoneLost(h.t, brokertest.Drain(h.t, h.queue, h.ids.All()))
}

func requirePublishError(t *testing.T, err error, sentinel error, unconfirmed []string) *resilient.PublishError {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %v, want %v", err, sentinel)
	}
	var pe *resilient.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("error %T is not a *PublishError", err)
	}
	if unconfirmed != nil && strings.Join(pe.Unconfirmed, ",") != strings.Join(unconfirmed, ",") {
		t.Fatalf("unconfirmed %v, want %v", pe.Unconfirmed, unconfirmed)
	}
	return pe
}

func TestBadInputFailsFastAndSendsNothing(t *testing.T) {
	brokertest.Need(t)
	cfg := amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.Marshaler = failingMarshaler{}
	var reconnects atomic.Int32
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg, MaxMessageSize: 1024, OnStateChange: func(c resilient.StateChange) {
		if c.To == resilient.StateReconnecting {
			reconnects.Add(1)
		}
	}})
	healthy := newHealthyTopic(t)

	bad := brokertest.Name("bad-input")
	brokertest.DeleteQueues(t, bad)
	cases := []struct {
		name     string
		topic    string
		messages func() ([]*message.Message, []string)
		want     error
	}{
		{"nil message", bad, func() ([]*message.Message, []string) {
			msgs, ids := newMessages(3)
			return []*message.Message{msgs[0], nil, msgs[1], msgs[2]}, ids
		}, resilient.ErrNilMessage},
		{"empty topic", "", func() ([]*message.Message, []string) { return newMessages(2) }, resilient.ErrInvalidName},
		{"topic too long", strings.Repeat("x", 256), func() ([]*message.Message, []string) { return newMessages(2) }, resilient.ErrInvalidName},
		{"topic not utf-8", "bad\xff", func() ([]*message.Message, []string) { return newMessages(2) }, resilient.ErrInvalidName},
		{"body over MaxMessageSize", bad, func() ([]*message.Message, []string) {
			msgs, ids := newMessages(3)
			msgs[2].Payload = make([]byte, 1025)
			return msgs, ids
		}, resilient.ErrMessageTooLarge},
		{"marshaler fails", bad, func() ([]*message.Message, []string) {
			msgs, ids := newMessages(3)
			msgs[1].Metadata.Set("fail", "yes")
			return msgs, ids
		}, resilient.ErrMarshal},
		// amqp091-go would close the whole connection on these, again after
		// every reconnect: they must be refused before sending.
		{"message id over 255 bytes", bad, func() ([]*message.Message, []string) {
			msgs, _ := newMessages(2)
			msgs = append(msgs, message.NewMessage(strings.Repeat("u", 300), nil))
			return msgs, []string{msgs[0].UUID, msgs[1].UUID, msgs[2].UUID}
		}, resilient.ErrMarshal},
		{"header name over 255 bytes", bad, func() ([]*message.Message, []string) {
			msgs, ids := newMessages(2)
			msgs[0].Metadata.Set(strings.Repeat("k", 300), "v")
			return msgs, ids
		}, resilient.ErrMarshal},
		{"header AMQP cannot encode", bad, func() ([]*message.Message, []string) {
			msgs, ids := newMessages(2)
			msgs[1].Metadata.Set("unencodable", "yes")
			return msgs, ids
		}, resilient.ErrMarshal},
		// RabbitMQ 3.10 refuses it (closing the channel, naming no
		// message); 4.x stores it as transient: refused before sending on
		// both lines.
		{"delivery mode 7", bad, func() ([]*message.Message, []string) {
			msgs, ids := newMessages(3)
			msgs[1].Metadata.Set("delivery_mode", "7")
			return msgs, ids
		}, resilient.ErrMarshal},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			healthy.publish(pub)
			msgs, ids := c.messages()
			start := time.Now()
			err := pub.Publish(c.topic, msgs...)
			requirePublishError(t, err, c.want, ids)
			if !resilient.IsPermanent(err) {
				t.Fatalf("%v should be permanent", err)
			}
			if took := time.Since(start); took > time.Second {
				t.Fatalf("bad input took %s to fail", took)
			}
			healthy.publish(pub)
		})
	}
	// Nothing of any rejected batch was sent, not even its valid messages.
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	if q, err := ch.QueueDeclarePassive(bad, true, false, false, false, nil); err == nil && q.Messages != 0 {
		t.Fatalf("rejected batches sent %d messages", q.Messages)
	}
	healthy.requireNoneLost()
	if n := reconnects.Load(); n != 0 {
		t.Fatalf("bad input cost %d reconnect(s)", n)
	}
}

// Needs no broker: a bad config fails before anything is dialed.
func TestInvalidConfig(t *testing.T) {
	const secret = "S3cr3t-Pa55"
	valid := func() resilient.Config {
		return resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}
	}
	cases := map[string]func(c *resilient.Config){
		"empty URI":  func(c *resilient.Config) { c.AMQP.Connection.AmqpURI = "" },
		"bad scheme": func(c *resilient.Config) { c.AMQP.Connection.AmqpURI = "http://guest:" + secret + "@localhost/" },
		"bad port": func(c *resilient.Config) {
			c.AMQP.Connection.AmqpURI = "amqp://guest:" + secret + "@localhost:99999999/"
		},
		"bad failover URI": func(c *resilient.Config) { c.FailoverURIs = []string{"amqp://guest:" + secret + "@host:port:x/"} },
		"nil marshaler":    func(c *resilient.Config) { c.AMQP.Marshaler = nil },
		"no routing key":   func(c *resilient.Config) { c.AMQP.Publish.GenerateRoutingKey = nil },
		"immediate":        func(c *resilient.Config) { c.AMQP.Publish.Immediate = true },
		"transactional":    func(c *resilient.Config) { c.AMQP.Publish.Transactional = true },
		"negative timeout": func(c *resilient.Config) { c.PublishTimeout = -time.Second },
		"jitter":           func(c *resilient.Config) { c.Reconnect.Jitter = 2 },
		"heartbeat < 1s":   func(c *resilient.Config) { c.Heartbeat = 500 * time.Millisecond },
		"tiny confirm timeout": func(c *resilient.Config) {
			c.ConfirmTimeout = time.Nanosecond
		},
		"amqp091 recovery": func(c *resilient.Config) {
			c.AMQP.Connection.AmqpConfig = &amqp091.Config{Recovery: &amqp091.Recovery{}}
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := valid()
			mutate(&cfg)
			if err := cfg.Validate(); !errors.Is(err, resilient.ErrConfig) {
				t.Fatalf("Validate: %v, want ErrConfig", err)
			}
			pub, err := resilient.NewPublisher(cfg, nil)
			if pub != nil || !errors.Is(err, resilient.ErrConfig) || !resilient.IsPermanent(err) {
				t.Fatalf("NewPublisher: %v, want ErrConfig", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the error shows the password: %v", err)
			}
			t.Log(err)
		})
	}
	// A reserved character left in a password ends the URI's authority early,
	// and the parser's text quotes a piece of the password: no piece of it
	// may reach the error.
	for _, reserved := range []string{"#", "/", "?"} {
		pieces := []string{"Xq7", "Zr9Kw"}
		cfg := valid()
		cfg.AMQP.Connection.AmqpURI = "amqp://user:" + pieces[0] + reserved + pieces[1] + "@localhost:5672/"
		err := cfg.Validate()
		if !errors.Is(err, resilient.ErrConfig) {
			t.Fatalf("password with %q: %v, want ErrConfig", reserved, err)
		}
		for _, piece := range pieces {
			if strings.Contains(err.Error(), piece) {
				t.Fatalf("password with %q: the error shows a piece of it (%q): %v", reserved, piece, err)
			}
		}
		t.Logf("password with %q: %v", reserved, err)
	}
	if err := valid().Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	// Only InitialWait set, above the default MaxWait; jitter off: valid.
	// (Connecting in the background: the broker need not be there.)
	cfg := valid()
	cfg.Reconnect = resilient.Backoff{InitialWait: 5 * time.Second, Jitter: resilient.NoJitter}
	cfg.RetryOnFailedConnect = true
	pub, err := resilient.NewPublisher(cfg, nil)
	if err != nil {
		t.Fatalf("valid reconnect config: %v", err)
	}
	pub.Close()
}

func TestWrongCredentialsFailNewPublisher(t *testing.T) {
	brokertest.Need(t)
	const secret = "Wr0ng-Pa55-XYZ"
	uri := strings.Replace(brokertest.URI(), "guest:guest", "guest:"+secret, 1)
	if uri == brokertest.URI() {
		t.Fatalf("AMQP_URI %q has no guest:guest to replace", brokertest.URI())
	}
	logs := watermill.NewCaptureLogger()
	start := time.Now()
	pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri), RetryOnFailedConnect: true}, logs)
	if pub != nil || !errors.Is(err, resilient.ErrAccessRefused) || !resilient.IsPermanent(err) {
		t.Fatalf("NewPublisher: %v, want ErrAccessRefused", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("took %s to fail", took)
	}
	if strings.Contains(err.Error(), secret) || strings.Contains(logText(logs), secret) {
		t.Fatalf("the password leaked: %v\n%s", err, logText(logs))
	}
	t.Log(err)
}

func TestMissingVhostFailsNewPublisher(t *testing.T) {
	brokertest.Need(t)
	uri := strings.TrimSuffix(brokertest.URI(), "/") + "/no-such-vhost"
	pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri)}, nil)
	if pub != nil || !errors.Is(err, resilient.ErrNotFound) || !resilient.IsPermanent(err) {
		t.Fatalf("NewPublisher: %v, want ErrNotFound", err)
	}
	t.Log(err)
}

func TestUnreachableBroker(t *testing.T) {
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig("amqp://guest:guest@127.0.0.1:1/"), DialTimeout: time.Second}
	if pub, err := resilient.NewPublisher(cfg, nil); pub != nil || err == nil || resilient.IsPermanent(err) {
		t.Fatalf("NewPublisher: %v, want a transient error", err)
	}
	// With RetryOnFailedConnect, Publish waits, bounded by PublishTimeout.
	cfg.RetryOnFailedConnect = true
	cfg.PublishTimeout = 300 * time.Millisecond
	pub, err := resilient.NewPublisher(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	msgs, ids := newMessages(2)
	err = pub.Publish("never", msgs...)
	requirePublishError(t, err, resilient.ErrNotConfirmed, ids)
	if resilient.IsPermanent(err) {
		t.Fatalf("%v should be transient", err)
	}
	t.Log(err)
}
