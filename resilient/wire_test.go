package resilient

import (
	"crypto/tls"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The door reads every field the core uses from watermill-amqp v2's Config.
func TestWire(t *testing.T) {
	c := amqp.NewDurablePubSubConfig("amqp://guest:guest@example:5672/", amqp.GenerateQueueNameTopicNameWithSuffix("s"))
	c.Connection.Reconnect = &amqp.ReconnectConfig{BackoffInitialInterval: time.Second, BackoffMaxInterval: 2 * time.Second,
		BackoffMultiplier: 3, BackoffRandomizationFactor: 0.1}
	c.Publish.Mandatory, c.Publish.ChannelPoolSize = true, 7
	c.Queue.AutoDelete = true
	c.Queue.Arguments = amqp091.Table{"x-delivery-limit": int32(3)}
	c.Queue.Exclusive = true
	c.Consume.Qos.PrefetchCount, c.Consume.Exclusive, c.Consume.NoRequeueOnNack = 9, true, true
	c.Consume.Qos.PrefetchSize, c.Consume.NoLocal, c.Consume.NoWait, c.Consume.Consumer = 1024, true, true, "tag"
	c.Consume.Arguments = amqp091.Table{"x-priority": int32(5)}
	c.Publish.Immediate, c.Publish.Transactional = true, true
	c.Connection.TLSConfig = &tls.Config{ServerName: "broker"}
	c.Connection.AmqpConfig = &amqp091.Config{Vhost: "v"}
	w := wire(c)
	// Every field of the Wiring, and of its Consume, is set from c: a field
	// the door forgets stays zero.
	for _, v := range []reflect.Value{reflect.ValueOf(w), reflect.ValueOf(w.Consume)} {
		for i := range v.NumField() {
			if v.Field(i).IsZero() {
				t.Errorf("%s.%s not read from the Config", v.Type().Name(), v.Type().Field(i).Name)
			}
		}
	}
	if w.TLSConfig.ServerName != "broker" || w.AMQPConfig.Vhost != "v" || w.Consume.Arguments["x-priority"] != int32(5) {
		t.Fatalf("connection or arguments: %+v", w)
	}
	if w.URI != c.Connection.AmqpURI || w.ExchangeName("t") != "t" || w.QueueName("t") != "t_s" || w.RoutingKey("t") != "" {
		t.Fatalf("names: %+v", w)
	}
	if w.Reconnect.InitialWait != time.Second || w.Reconnect.MaxWait != 2*time.Second || w.Reconnect.Multiplier != 3 || w.Reconnect.Jitter != 0.1 {
		t.Fatalf("reconnect: %+v", w.Reconnect)
	}
	if !w.Mandatory || w.ChannelPoolSize != 7 || !w.QueueAutoDelete || !w.QueueExclusive || w.Consume.PrefetchCount != 9 || !w.Consume.Exclusive || !w.Consume.NoRequeueOnNack {
		t.Fatalf("flags: %+v", w)
	}
	if !w.StringHeadersOnly || w.DeclareExchange == nil || w.BuildTopology == nil {
		t.Fatalf("DefaultMarshaler or topology: %+v", w)
	}
	c.Marshaler = &amqp.DefaultMarshaler{}
	if !wire(c).StringHeadersOnly {
		t.Fatal("a *DefaultMarshaler reads strings only too")
	}
	c.Marshaler, c.TopologyBuilder = nil, nil
	if w := wire(c); w.Marshaler != nil || w.StringHeadersOnly || w.FreshHeaders || w.BuildTopology == nil {
		t.Fatalf("no marshaler, default builder: %+v", w)
	}
}

// The header UUIDInMessageIDOnly leaves out is the one the DefaultMarshaler
// writes; its table is changed in place only where no function of the
// user's (PostprocessPublishing) can have put a table of theirs there.
func TestWireUUIDHeader(t *testing.T) {
	c := amqp.NewDurableQueueConfig("amqp://example/")
	if w := wire(c); w.UUIDHeader != "_watermill_message_uuid" || !w.FreshHeaders {
		t.Errorf("DefaultMarshaler: header %q, fresh tables %v", w.UUIDHeader, w.FreshHeaders)
	}
	c.Marshaler = &amqp.DefaultMarshaler{MessageUUIDHeaderKey: "x-id",
		PostprocessPublishing: func(p amqp091.Publishing) amqp091.Publishing { return p }}
	if w := wire(c); w.UUIDHeader != "x-id" || w.FreshHeaders {
		t.Errorf("a custom key, PostprocessPublishing: header %q, fresh tables %v", w.UUIDHeader, w.FreshHeaders)
	}
	c.Marshaler = (*amqp.DefaultMarshaler)(nil)
	if w := wire(c); w.UUIDHeader != "_watermill_message_uuid" || w.FreshHeaders || w.StringHeadersOnly {
		t.Errorf("a nil *DefaultMarshaler: %+v", w)
	}
}

// On the lean wire a message without metadata is built without the
// DefaultMarshaler (core/leanwire.go), in the delivery mode the door read
// from it: the one its Marshal sets.
func TestWireDeliveryModeIsTheMarshalers(t *testing.T) {
	c := amqp.NewDurableQueueConfig("amqp://example/")
	for _, m := range []amqp.DefaultMarshaler{{}, {NotPersistentDeliveryMode: true}} {
		c.Marshaler = m
		pub, err := m.Marshal(message.NewMessage("u1", []byte("body")))
		if err != nil {
			t.Fatal(err)
		}
		if w := wire(c); !w.FreshHeaders || w.DeliveryMode != pub.DeliveryMode {
			t.Errorf("NotPersistentDeliveryMode %v: wired delivery mode %d (lean path %v), Marshal sets %d",
				m.NotPersistentDeliveryMode, w.DeliveryMode, w.FreshHeaders, pub.DeliveryMode)
		}
	}
}

// A zero Config names what is missing in watermill-amqp's own field names.
func TestValidateNamesAMQPFields(t *testing.T) {
	err := Config{}.Validate()
	for _, want := range []string{"AMQP.Connection.AmqpURI", "AMQP.Marshaler", "AMQP.Exchange.GenerateName", "AMQP.Publish.GenerateRoutingKey"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v does not name %s", err, want)
		}
	}
}

// A config without QueueBind.GenerateRoutingKey binds with "", as the v3
// door does, rather than panic in v2's DefaultTopologyBuilder on a
// goroutine of the subscriber's.
func TestWireBindsWithoutARoutingKeyGenerator(t *testing.T) {
	c := amqp.NewDurablePubSubConfig("amqp://example/", amqp.GenerateQueueNameTopicNameWithSuffix("s"))
	c.QueueBind.GenerateRoutingKey = nil
	builder := &bindingRecorder{}
	c.TopologyBuilder = builder
	if err := wire(c).BuildTopology(nil, "t", "t_s", "t", nil); err != nil {
		t.Fatal(err)
	}
	if builder.routingKey != "" || !builder.called {
		t.Fatalf("bound with %q (called %v), want \"\"", builder.routingKey, builder.called)
	}
}

type bindingRecorder struct {
	called     bool
	routingKey string
}

func (r *bindingRecorder) BuildTopology(_ *amqp091.Channel, queue, _ string, config amqp.Config, _ watermill.LoggerAdapter) error {
	r.called, r.routingKey = true, config.QueueBind.GenerateRoutingKey(queue)
	return nil
}

func (r *bindingRecorder) ExchangeDeclare(*amqp091.Channel, string, amqp.Config) error { return nil }

// ValidatePublisher and ValidateSubscriber check what each side needs, as
// watermill-amqp's methods of the same names do: a subscriber has no use
// for a routing key generator, a publisher none for a queue name.
func TestValidatePublisherAndSubscriber(t *testing.T) {
	valid := Config{AMQP: amqp.NewDurableQueueConfig("amqp://guest:secret@example:5672/")}
	if err := valid.ValidatePublisher(); err != nil {
		t.Fatalf("ValidatePublisher: %v", err)
	}
	if err := valid.ValidateSubscriber(); err != nil {
		t.Fatalf("ValidateSubscriber: %v", err)
	}

	pubOnly := valid
	pubOnly.AMQP.Queue.GenerateName = nil
	if err := pubOnly.ValidatePublisher(); err != nil {
		t.Errorf("ValidatePublisher without a queue name: %v", err)
	}
	if err := pubOnly.ValidateSubscriber(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "AMQP.Queue.GenerateName") {
		t.Errorf("ValidateSubscriber without a queue name: %v, want ErrConfig naming AMQP.Queue.GenerateName", err)
	}

	subOnly := valid
	subOnly.AMQP.Publish.GenerateRoutingKey = nil
	subOnly.AMQP.Publish.Transactional = true
	if err := subOnly.ValidateSubscriber(); err != nil {
		t.Errorf("ValidateSubscriber without publishing settings: %v", err)
	}
	err := subOnly.ValidatePublisher()
	for _, want := range []string{"AMQP.Publish.GenerateRoutingKey", "AMQP.Publish.Transactional"} {
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidatePublisher: %v, want ErrConfig naming %s", err, want)
		}
	}
	if err.Error() != subOnly.Validate().Error() {
		t.Errorf("Validate is not ValidatePublisher: %v", subOnly.Validate())
	}

	broken := valid
	broken.AMQP.Connection.AmqpURI = "http://guest:secret@example/"
	for name, err := range map[string]error{"publisher": broken.ValidatePublisher(), "subscriber": broken.ValidateSubscriber()} {
		if !errors.Is(err, ErrConfig) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: a bad URI gives %v, want ErrConfig without the password", name, err)
		}
	}
}
