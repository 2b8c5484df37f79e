package core

import (
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A delivery mode other than 1 or 2 (0 meaning the default) is refused
// before sending: RabbitMQ 3.10 would close the channel over it, naming no
// message, and 4.x would store the message as transient.
func TestDeliveryModeCheckedBeforeSending(t *testing.T) {
	for mode := range 256 {
		_, err := validProperties(amqp091.Publishing{DeliveryMode: uint8(mode)})
		if ok := mode <= 2; ok != (err == nil) {
			t.Errorf("delivery mode %d: %v", mode, err)
		}
	}
}
