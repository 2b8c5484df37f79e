package resilient

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// maxStrikes is how many channel exceptions with a permanent code (that did
// not name the message) a message may be in flight for before it is failed
// with that exception rather than re-sent once more.
const maxStrikes = 3

// retryPause is the pause before re-sending on a connection that lives.
const retryPause = 50 * time.Millisecond

// Publisher is a watermill message.Publisher for RabbitMQ whose Publish
// returns nil only once the broker has confirmed every message, and which
// rides through connection loss by reconnecting and re-sending.
// It is safe for concurrent use.
type Publisher struct {
	cfg      Config
	logger   watermill.LoggerAdapter
	sup      *supervisor
	notifier *notifier

	mu     sync.RWMutex // guards closed against calls.Add
	closed bool
	calls  sync.WaitGroup

	abortCtx     context.Context // cancelled when Close stops waiting for calls
	abort        context.CancelCauseFunc
	timeoutCause error // why a Publish ran out of time

	closeOnce sync.Once
	closeErr  error

	abandonedMu sync.Mutex
	abandoned   []string // UUIDs left unconfirmed because of Close

	declareTopic func(*amqp091.Channel, string) error // p.declare, bound once
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher validates cfg, connects, and returns a Publisher.
//
// It fails with an error matching ErrConfig for a bad configuration, with
// ErrAccessRefused when the broker refuses the credentials, and with
// ErrNotFound for a missing vhost. When the broker cannot be reached it fails
// too, unless cfg.RetryOnFailedConnect is set. A nil logger logs nothing.
func NewPublisher(cfg Config, logger watermill.LoggerAdapter) (*Publisher, error) {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := newNotifier(cfg.OnStateChange, logger)
	p := &Publisher{
		cfg:          cfg,
		logger:       logger,
		notifier:     n,
		timeoutCause: fmt.Errorf("%w (%s)", errPublishTimeout, cfg.PublishTimeout),
	}
	p.declareTopic = p.declare
	p.sup = newSupervisor(&p.cfg, logger, n)

	first, err := p.sup.connectOnce()
	if err != nil {
		if IsPermanent(err) || !cfg.RetryOnFailedConnect {
			n.stop()
			return nil, fmt.Errorf("cannot connect to AMQP: %w", err)
		}
		logger.Error("Cannot connect to AMQP yet, retrying in the background", err, nil)
		p.sup.dialErr = err
	} else {
		logger.Info("Connected to AMQP", watermill.LogFields{"uri": first.uri})
	}
	p.abortCtx, p.abort = context.WithCancelCause(context.Background())
	p.sup.start(first)
	return p, nil
}

// Status returns the state of the connection.
func (p *Publisher) Status() State { return p.sup.status() }

// IsConnected reports whether a connection is up (blocked counts as up).
func (p *Publisher) IsConnected() bool {
	s := p.Status()
	return s == StateConnected || s == StateBlocked
}

// WaitConnected blocks until a connection is up, ctx ends, or the publisher
// is closed (ErrClosed).
func (p *Publisher) WaitConnected(ctx context.Context) error {
	_, err := p.sup.await(ctx)
	return err
}

// Publish sends messages to topic and returns nil only once the broker has
// confirmed every one of them. On connection loss it waits for the
// reconnect and re-sends what was not confirmed, so a message may arrive
// more than once (its UUID is its AMQP message_id). It gives up when a
// message's Context() ends, after Config.PublishTimeout, or on Close, with
// a *PublishError naming the unconfirmed UUIDs. Invalid input (nil message,
// marshal failure, bad name, oversized body) fails the whole call before
// anything is sent. Faults the broker reports for one exchange or message
// fail those messages only, with a permanent error (see IsPermanent).
func (p *Publisher) Publish(topic string, messages ...*message.Message) error {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return ErrClosed
	}
	p.calls.Add(1)
	p.mu.RUnlock()
	defer p.calls.Done()

	batch, err := p.prepare(topic, messages)
	if err != nil || len(batch) == 0 {
		return err
	}
	return p.publish(topic, batch)
}

// prepare marshals and validates every message before any is sent.
func (p *Publisher) prepare(topic string, messages []*message.Message) ([]*outgoing, error) {
	exchange := p.cfg.AMQP.Exchange.GenerateName(topic)
	routingKey := p.cfg.AMQP.Publish.GenerateRoutingKey(topic)
	var errs []error
	if err := validName("topic", topic, false); err != nil {
		errs = append(errs, err)
	}
	if err := validName("exchange", exchange, true); err != nil {
		errs = append(errs, err)
	}
	if err := validName("routing key", routingKey, true); err != nil {
		errs = append(errs, err)
	}
	if q := p.queueToDeclare(topic); q != "" {
		if err := validName("queue", q, false); err != nil {
			errs = append(errs, err)
		}
	}

	// One allocation for all the messages of the call, however many.
	store := make([]outgoing, len(messages))
	batch := make([]*outgoing, 0, len(messages))
	for i, msg := range messages {
		if msg == nil {
			errs = append(errs, fmt.Errorf("%w at index %d", ErrNilMessage, i))
			continue
		}
		pub, err := p.cfg.AMQP.Marshaler.Marshal(msg)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w %s: %w", ErrMarshal, msg.UUID, err))
			continue
		}
		if pub.MessageId == "" {
			pub.MessageId = msg.UUID
		}
		if err := validProperties(pub); err != nil {
			errs = append(errs, fmt.Errorf("%w %s: %w", ErrMarshal, msg.UUID, err))
			continue
		}
		if len(pub.Body) > p.cfg.MaxMessageSize {
			errs = append(errs, fmt.Errorf("%w: %s has %d bytes, the limit is %d", ErrMessageTooLarge, msg.UUID, len(pub.Body), p.cfg.MaxMessageSize))
			continue
		}
		store[i] = outgoing{
			index:      i,
			uuid:       msg.UUID,
			ctx:        msg.Context(),
			exchange:   exchange,
			routingKey: routingKey,
			mandatory:  p.cfg.AMQP.Publish.Mandatory,
			publishing: pub,
		}
		batch = append(batch, &store[i])
	}
	if len(errs) > 0 {
		uuids := make([]string, 0, len(messages))
		for _, msg := range messages {
			if msg != nil {
				uuids = append(uuids, msg.UUID)
			}
		}
		// The first error names the kind; all are listed.
		return nil, &PublishError{Topic: topic, Unconfirmed: uuids, Err: fmt.Errorf("%w (nothing was sent)", joinFirst(errs))}
	}
	return batch, nil
}

// joinFirst joins errs so that errors.Is matches all of them and the text
// starts with the first.
func joinFirst(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

func validName(kind, name string, emptyOK bool) error {
	switch {
	case name == "" && !emptyOK:
		return fmt.Errorf("%w: empty %s", ErrInvalidName, kind)
	case len(name) > maxShortString:
		return fmt.Errorf("%w: %s of %d bytes, AMQP allows %d", ErrInvalidName, kind, len(name), maxShortString)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: %s %q is not UTF-8", ErrInvalidName, kind, name)
	}
	return nil
}

// validProperties rejects what amqp091-go cannot encode, before it is sent:
// an encoding failure would otherwise close the whole connection, again after
// every reconnect.
func validProperties(pub amqp091.Publishing) error {
	// An array, not a map: this runs for every message.
	for _, f := range [...]struct{ name, value string }{
		{"content type", pub.ContentType}, {"content encoding", pub.ContentEncoding},
		{"correlation id", pub.CorrelationId}, {"reply to", pub.ReplyTo}, {"expiration", pub.Expiration},
		{"message id", pub.MessageId}, {"type", pub.Type}, {"user id", pub.UserId}, {"app id", pub.AppId},
	} {
		if len(f.value) > maxShortString {
			return fmt.Errorf("%s of %d bytes, AMQP allows %d", f.name, len(f.value), maxShortString)
		}
	}
	if err := pub.Headers.Validate(); err != nil {
		return fmt.Errorf("headers: %w", err)
	}
	return validTableKeys(pub.Headers)
}

func validTableKeys(t amqp091.Table) error {
	for k, v := range t {
		if len(k) > maxShortString {
			return fmt.Errorf("header name of %d bytes, AMQP allows %d", len(k), maxShortString)
		}
		if nested, ok := v.(amqp091.Table); ok {
			if err := validTableKeys(nested); err != nil {
				return err
			}
		}
	}
	return nil
}

// queueToDeclare names the queue the publisher declares itself: that of a
// default-exchange (queue) config, so that a message published before any
// subscriber exists is kept, not acked and dropped as unroutable.
func (p *Publisher) queueToDeclare(topic string) string {
	if p.cfg.AMQP.Exchange.GenerateName(topic) != "" || p.cfg.AMQP.Queue.GenerateName == nil {
		return ""
	}
	return p.cfg.AMQP.Queue.GenerateName(topic)
}

// declare is the topology of topic, run once per topic per connection.
func (p *Publisher) declare(ch *amqp091.Channel, topic string) error {
	if exchange := p.cfg.AMQP.Exchange.GenerateName(topic); exchange != "" {
		return p.cfg.AMQP.TopologyBuilder.ExchangeDeclare(ch, exchange, p.cfg.AMQP)
	}
	if queue := p.queueToDeclare(topic); queue != "" {
		return p.cfg.AMQP.TopologyBuilder.BuildTopology(ch, queue, "", p.cfg.AMQP, p.logger)
	}
	return nil
}

var errPublishTimeout = errors.New("publish timeout")

// publish runs attempts until every message is confirmed or failed.
func (p *Publisher) publish(topic string, batch []*outgoing) error {
	// The call's context ends when Close gives up on it (abortCtx, whose
	// cause is ErrClosed), after PublishTimeout, or once every message's
	// Context() has ended.
	base := p.abortCtx
	var wake chan struct{} // nil unless some message's Context() can end
	if watched, immortal := contextsToWatch(batch); len(watched) > 0 {
		var cancelBase context.CancelCauseFunc
		base, cancelBase = context.WithCancelCause(p.abortCtx)
		defer cancelBase(nil)
		wake = make(chan struct{}, 1)
		defer watchMessageContexts(watched, immortal, wake, cancelBase)()
	}
	ctx, cancel := context.WithTimeoutCause(base, p.cfg.PublishTimeout, p.timeoutCause)
	defer cancel()

	var failed []failure
	remaining := batch
	for len(remaining) > 0 {
		sess, err := p.sup.await(ctx)
		if err != nil {
			failed = failAll(failed, remaining, p.deadlineErr(ctx, err))
			break
		}
		if err := sess.ensureTopology(ctx, topic, batch[0].exchange, p.declareTopic); err != nil {
			if errors.Is(err, errConnectionLost) {
				pause(ctx, sess.stopping, retryPause)
				continue
			}
			failed = failAll(failed, remaining, p.deadlineErr(ctx, err))
			break
		}
		var failedNow []failure
		remaining, failedNow = p.attempt(ctx, sess, remaining, wake)
		failed = append(failed, failedNow...)
		if len(remaining) > 0 {
			// Nacked, or lost with a channel while the connection lives: give
			// the broker (or the lane reopening its channel) a moment rather
			// than spin. A lost connection ends the pause at once.
			pause(ctx, sess.stopping, retryPause)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return p.publishError(topic, failed)
}

type failure struct {
	msg *outgoing
	err error
}

func failAll(failed []failure, msgs []*outgoing, err error) []failure {
	for _, m := range msgs {
		failed = append(failed, failure{m, err})
	}
	return failed
}

// deadlineErr turns the end of the call's context into the reason the
// messages were not confirmed; other errors pass through.
func (p *Publisher) deadlineErr(ctx context.Context, err error) error {
	if ctx.Err() == nil || IsPermanent(err) && !errors.Is(err, context.Canceled) {
		return err
	}
	if err == ctx.Err() {
		return fmt.Errorf("%w: %w", ErrNotConfirmed, context.Cause(ctx))
	}
	return fmt.Errorf("%w: %w; %v", ErrNotConfirmed, context.Cause(ctx), err)
}

// contextsToWatch lists the distinct message contexts that can end, and
// tells whether some message's context never ends. Most messages carry
// context.Background(): then there is nothing to watch, and nothing to
// allocate.
func contextsToWatch(batch []*outgoing) (distinct []context.Context, immortal bool) {
	for _, m := range batch {
		if m.ctx.Done() == nil {
			immortal = true
			continue
		}
		seen := false
		for _, c := range distinct {
			seen = seen || c == m.ctx
		}
		if !seen {
			distinct = append(distinct, m.ctx)
		}
	}
	return distinct, immortal
}

// watchMessageContexts wakes the attempt loop when a message's Context()
// ends, and cancels the call once every message's has (unless some
// message's context is immortal). It returns the function that stops
// watching.
func watchMessageContexts(distinct []context.Context, immortal bool, wake chan struct{}, cancel context.CancelCauseFunc) func() {
	var mu sync.Mutex
	live := len(distinct)
	stops := make([]func() bool, 0, len(distinct))
	for _, c := range distinct {
		stops = append(stops, context.AfterFunc(c, func() {
			select {
			case wake <- struct{}{}:
			default:
			}
			mu.Lock()
			live--
			last := live == 0
			mu.Unlock()
			if last && !immortal {
				cancel(context.Cause(c))
			}
		}))
	}
	return func() {
		for _, stop := range stops {
			stop()
		}
	}
}

func pause(ctx context.Context, stop <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-stop:
	case <-t.C:
	}
}

// attempt sends msgs once on sess and waits for their outcomes. It returns
// the messages to send again (lost with their channel, or nacked) and those
// that failed for good or ran out of time.
func (p *Publisher) attempt(ctx context.Context, sess *session, msgs []*outgoing, wake <-chan struct{}) (retry []*outgoing, failed []failure) {
	results := make(chan outcome, len(msgs))
	deliveries := make([]delivery, len(msgs))
	for i, m := range msgs {
		deliveries[i].msg, deliveries[i].results = m, results
	}
	outstanding, enqueued := len(msgs), 0
	lane := sess.pickLane()

	settle := func(o outcome) {
		if o.d.resolved {
			return // given up on already
		}
		o.d.resolved = true
		outstanding--
		m := o.d.msg
		switch o.kind {
		case outcomeAcked:
		case outcomeNacked:
			m.nacks++
			if p.cfg.MaxNackRetries >= 0 && m.nacks <= p.cfg.MaxNackRetries {
				retry = append(retry, m)
			} else {
				failed = append(failed, failure{m, fmt.Errorf("%w %d time(s)", ErrNacked, m.nacks)})
			}
		case outcomeLost:
			if isPermanentBroker(o.err) {
				m.strikes++
				if m.strikes >= maxStrikes {
					failed = append(failed, failure{m, classifyBroker(o.err)})
					return
				}
			}
			retry = append(retry, m)
		case outcomeFailed:
			failed = append(failed, failure{m, o.err})
		}
	}
	// giveUp stops waiting for the messages matching expired; a queued one is
	// abandoned, so no lane will send it.
	giveUp := func(expired func(*outgoing) error) {
		for i := range deliveries {
			d := &deliveries[i]
			if deliveries[i].resolved {
				continue
			}
			if err := expired(d.msg); err != nil {
				d.abandon()
				deliveries[i].resolved = true
				outstanding--
				failed = append(failed, failure{d.msg, err})
			}
		}
	}

	for outstanding > 0 {
		// A message whose context ended is never handed over.
		for enqueued < len(deliveries) && deliveries[enqueued].msg.ctx.Err() != nil {
			d := &deliveries[enqueued]
			d.abandon()
			deliveries[enqueued].resolved = true
			outstanding--
			failed = append(failed, failure{d.msg, fmt.Errorf("%w: %w", ErrNotConfirmed, context.Cause(d.msg.ctx))})
			enqueued++
		}
		if outstanding == 0 {
			break
		}
		var intake chan<- *delivery
		var next *delivery
		if enqueued < len(deliveries) {
			intake, next = lane.queue, &deliveries[enqueued]
			// Room in the lane's queue, the usual case: no need to watch
			// every other channel for it.
			select {
			case intake <- next:
				enqueued++
				continue
			default:
			}
		}
		select {
		case intake <- next:
			enqueued++
		case o := <-results:
			settle(o)
		case <-wake:
			giveUp(func(m *outgoing) error {
				if m.ctx.Err() == nil {
					return nil
				}
				return fmt.Errorf("%w: %w", ErrNotConfirmed, context.Cause(m.ctx))
			})
		case <-ctx.Done():
			err := p.deadlineErr(ctx, ctx.Err())
			giveUp(func(*outgoing) error { return err })
		case <-sess.dead:
			// Every lane has exited, having reported what it claimed.
			for drained := false; !drained; {
				select {
				case o := <-results:
					settle(o)
				default:
					drained = true
				}
			}
			for i := range deliveries {
				if !deliveries[i].resolved && deliveries[i].abandon() {
					deliveries[i].resolved = true
					outstanding--
					retry = append(retry, deliveries[i].msg)
				}
			}
		}
	}
	return retry, failed
}

func (p *Publisher) publishError(topic string, failed []failure) error {
	var cause error
	ids := make([]string, len(failed))
	// Report in call order.
	byIndex := make(map[int]failure, len(failed))
	order := make([]int, 0, len(failed))
	for _, f := range failed {
		byIndex[f.msg.index] = f
		order = append(order, f.msg.index)
	}
	slices.Sort(order)
	closed := false
	for i, idx := range order {
		f := byIndex[idx]
		ids[i] = f.msg.uuid
		if cause == nil || IsPermanent(f.err) && !IsPermanent(cause) {
			cause = f.err
		}
		closed = closed || errors.Is(f.err, ErrClosed)
	}
	if closed {
		p.abandonedMu.Lock()
		p.abandoned = append(p.abandoned, ids...)
		p.abandonedMu.Unlock()
	}
	p.logger.Debug("Publish failed", watermill.LogFields{"topic": topic, "unconfirmed": len(ids), "error": cause.Error()})
	return &PublishError{Topic: topic, Unconfirmed: ids, Err: cause}
}

// Close stops accepting messages, waits up to Config.CloseTimeout for the
// publishes in progress to be confirmed, then closes the connection and
// waits for every goroutine it started. It returns a *PublishError naming
// the messages that publishes in progress gave up on. Calling it again
// returns the same result.
func (p *Publisher) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()

		done := make(chan struct{})
		go func() {
			p.calls.Wait()
			close(done)
		}()
		timer := time.NewTimer(p.cfg.CloseTimeout)
		select {
		case <-done:
		case <-timer.C:
			p.logger.Info("Close: publishes still in progress after CloseTimeout, giving up on them", nil)
			p.abort(ErrClosed)
			<-done
		}
		timer.Stop()
		p.abort(ErrClosed)
		p.sup.stop()
		p.notifier.stop()

		p.abandonedMu.Lock()
		defer p.abandonedMu.Unlock()
		if len(p.abandoned) > 0 {
			p.closeErr = &PublishError{Unconfirmed: p.abandoned, Err: fmt.Errorf("%w: %w", ErrNotConfirmed, ErrClosed)}
		}
		p.logger.Info("Publisher closed", nil)
	})
	return p.closeErr
}
