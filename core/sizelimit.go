package core

import "sync/atomic"

// sizeLimit is what a connection knows of the broker's max_message_size.
// The broker does not say it (no server property, no reply but a refusal),
// it differs between lines (RabbitMQ 3.10: 128 MiB by default; 4.x: 16
// MiB) and nodes (each reads its own configuration), and a refusal costs a
// whole channel: the broker closes it, and every message in flight on it
// must be sent again. So each connection learns it:
//
//   - taken is the largest body the broker confirmed on this connection: any
//     body up to it is safe, and goes out pipelined as usual;
//   - a larger body goes alone on its channel (a lane waits until nothing
//     else is in flight, sends it, and sends nothing more until it is
//     answered), so that a refusal costs no other message; confirmed, it
//     raises taken. Over a connection's life only the bodies that are
//     larger than every one before go alone: a handful, for sizes that
//     vary at random (the records of a random sequence: about ln n of n);
//   - refused is the limit the broker named when it refused one ("message
//     size 17825792 is larger than configured max size 16777216"): larger
//     bodies fail at once from then on, before they are sent, with
//     ErrMessageTooLarge, at no cost to anyone.
//
// Both are per connection: the next one may reach another node, or a node
// restarted with another limit.
type sizeLimit struct {
	taken   atomic.Int64
	refused atomic.Int64 // 0: unknown
}

// alone reports whether a body of n bytes must go alone: larger than any
// the broker took on this connection.
func (s *sizeLimit) alone(n int) bool { return int64(n) > s.taken.Load() }

// took records that the broker confirmed a body of n bytes.
func (s *sizeLimit) took(n int) {
	for {
		old := s.taken.Load()
		if int64(n) <= old || s.taken.CompareAndSwap(old, int64(n)) {
			return
		}
	}
}

// refuse records the limit the broker named when it refused a body.
func (s *sizeLimit) refuse(limit int) { s.refused.Store(int64(limit)) }

// over returns the broker's limit when a body of n bytes is known to
// exceed it.
func (s *sizeLimit) over(n int) (limit int64, over bool) {
	limit = s.refused.Load()
	return limit, limit > 0 && int64(n) > limit
}
