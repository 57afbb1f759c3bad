package consumers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-cdc/herald/change"
)

// Headers of a dead letter. The dead letter also carries the original
// message's body and Herald-* headers unchanged, so it can be inspected
// with the same tools and republished as is.
const (
	HeaderDLQReason     = "Herald-Dlq-Reason"     // why it was dead-lettered
	HeaderDLQConsumer   = "Herald-Dlq-Consumer"   // the durable that gave up
	HeaderDLQSubject    = "Herald-Dlq-Subject"    // the original subject
	HeaderDLQStream     = "Herald-Dlq-Stream"     // the original stream
	HeaderDLQSequence   = "Herald-Dlq-Sequence"   // the original stream sequence
	HeaderDLQDeliveries = "Herald-Dlq-Deliveries" // deliveries to this consumer so far
	HeaderDLQMsgID      = "Herald-Dlq-Msg-Id"     // the original Nats-Msg-Id
	HeaderDLQTime       = "Herald-Dlq-Time"       // when, RFC 3339 UTC
)

// maxReasonLen bounds the reason header; a header line must stay well under
// the server's limits whatever an error message holds.
const maxReasonLen = 1024

// ensureDLQ creates the dead-letter stream if it is missing, with limits that
// keep every dead letter (no per-subject cap, no age, no size limit; when
// the server itself runs out, publishing fails and the message is retried
// rather than an older dead letter dropped). An existing stream must take
// this consumer's dead-letter subject.
func (c *Consumer) ensureDLQ(ctx context.Context, replicas int) error {
	s, err := c.js.Stream(ctx, c.cfg.DLQStream)
	if err == nil {
		for _, f := range s.CachedInfo().Config.Subjects {
			if subjectMatches(f, c.dlqSubject) {
				return nil
			}
		}
		return backoff.Permanent(fmt.Errorf("dead-letter stream %s exists but does not take subject %s; add %s_dlq.> to its subjects or set another DLQ stream",
			c.cfg.DLQStream, c.dlqSubject, c.cfg.Prefix))
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("looking up dead-letter stream %s: %w", c.cfg.DLQStream, err)
	}
	if replicas < 1 {
		replicas = 1
	}
	_, err = c.js.CreateStream(ctx, jetstream.StreamConfig{
		Name:              c.cfg.DLQStream,
		Description:       "Herald dead letters: changes consumers could not apply",
		Subjects:          []string{c.cfg.Prefix + "_dlq.>"},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardNew,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		MaxAge:            0,
		MaxMsgsPerSubject: -1,
		Duplicates:        2 * time.Minute,
		Replicas:          replicas,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("creating dead-letter stream %s: %w", c.cfg.DLQStream, err)
	}
	if err == nil {
		c.log.Info("created dead-letter stream", "stream", c.cfg.DLQStream, "subjects", c.cfg.Prefix+"_dlq.>")
	}
	return nil
}

// deadLetter copies m to the dead-letter stream and then terminates it. If
// the copy cannot be stored, m is naked instead: a change is never dropped
// without a dead letter.
func (c *Consumer) deadLetter(m jetstream.Msg, reason string) {
	var stream string
	var seq, deliveries uint64 = 0, 1
	if md, err := m.Metadata(); err == nil {
		stream, seq, deliveries = md.Stream, md.Sequence.Stream, md.NumDelivered
	}
	err := c.publishDeadLetter(m.Subject(), m.Headers(), m.Data(), reason, stream, seq, deliveries)
	if err != nil {
		delay := c.backoff(deliveries)
		c.log.Error("cannot store dead letter; the message will be retried", "subject", m.Subject(), "err", err, "retry_in", delay)
		_ = m.NakWithDelay(delay)
		return
	}
	if err := m.TermWithReason(truncate(oneLine(reason), 200)); err != nil {
		c.log.Debug("term", "subject", m.Subject(), "err", err)
	}
	c.m.deadLettered.Inc()
	c.log.Warn("dead-lettered", "subject", m.Subject(), "seq", seq, "reason", reason, "dlq_subject", c.dlqSubject)
}

// publishDeadLetter stores one dead letter, retrying briefly. Its message id
// is derived from the consumer and the original stream sequence, so a dead
// letter stored twice (a retry after a lost ack, two instances of one
// durable) is kept once.
func (c *Consumer) publishDeadLetter(subject string, hdr nats.Header, data []byte, reason, stream string, seq, deliveries uint64) error {
	msg := &nats.Msg{Subject: c.dlqSubject, Data: data, Header: nats.Header{}}
	for k, vs := range hdr {
		// Nats-* headers steer the server (message id, expectations,
		// batches, TTL): they describe the original publish, not this one.
		if strings.HasPrefix(strings.ToLower(k), "nats-") {
			continue
		}
		msg.Header[k] = append([]string(nil), vs...)
	}
	msg.Header.Set(HeaderDLQReason, truncate(oneLine(reason), maxReasonLen))
	msg.Header.Set(HeaderDLQConsumer, c.cfg.Durable)
	msg.Header.Set(HeaderDLQSubject, subject)
	msg.Header.Set(HeaderDLQStream, stream)
	msg.Header.Set(HeaderDLQSequence, strconv.FormatUint(seq, 10))
	msg.Header.Set(HeaderDLQDeliveries, strconv.FormatUint(deliveries, 10))
	msg.Header.Set(HeaderDLQTime, time.Now().UTC().Format(time.RFC3339Nano))
	if id := hdr.Get(change.HeaderMsgID); id != "" {
		msg.Header.Set(HeaderDLQMsgID, id)
	}
	id := fmt.Sprintf("%s:%s:%d", c.cfg.Durable, stream, seq)

	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxElapsedTime = c.cfg.AckWait / 2
	return backoff.Retry(func() error {
		ctx, cancel := context.WithTimeout(c.base, 5*time.Second)
		defer cancel()
		_, err := c.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(c.cfg.DLQStream))
		if err != nil {
			return fmt.Errorf("publishing to %s: %w", c.dlqSubject, err)
		}
		return nil
	}, backoff.WithContext(b, c.base))
}

// onMaxDeliveries handles the server's advisory for a message that ran out of
// deliveries without a verdict from this runtime: its last delivery timed
// out (a crash, a handler past AckWait) or its dead letter could not be
// stored. The message is read back from the stream and dead-lettered, so it
// is not silently abandoned.
func (c *Consumer) onMaxDeliveries(msg *nats.Msg) {
	var adv struct {
		Stream     string `json:"stream"`
		Consumer   string `json:"consumer"`
		StreamSeq  uint64 `json:"stream_seq"`
		Deliveries uint64 `json:"deliveries"`
	}
	if err := json.Unmarshal(msg.Data, &adv); err != nil || adv.Consumer != c.cfg.Durable || adv.Stream != c.cfg.Stream {
		return
	}
	ctx, cancel := context.WithTimeout(c.base, 10*time.Second)
	defer cancel()
	s, err := c.js.Stream(ctx, c.cfg.Stream)
	if err == nil {
		var raw *jetstream.RawStreamMsg
		raw, err = s.GetMsg(ctx, adv.StreamSeq)
		if err == nil {
			reason := fmt.Sprintf("delivered %d times without being acknowledged (handler past AckWait, a crash, or the dead letter could not be stored)", adv.Deliveries)
			err = c.publishDeadLetter(raw.Subject, raw.Header, raw.Data, reason, adv.Stream, adv.StreamSeq, adv.Deliveries)
			if err == nil {
				c.m.deadLettered.Inc()
				c.log.Warn("dead-lettered after max deliveries", "subject", raw.Subject, "seq", adv.StreamSeq)
				return
			}
		}
	}
	c.log.Error("a message ran out of deliveries and could not be dead-lettered; it stays in the stream but this consumer will not receive it again",
		"seq", adv.StreamSeq, "err", err)
}

// subjectMatches reports whether subject matches filter, with NATS wildcards.
func subjectMatches(filter, subject string) bool {
	ft := strings.Split(filter, ".")
	st := strings.Split(subject, ".")
	for i, f := range ft {
		if f == ">" {
			return len(st) > i
		}
		if i >= len(st) || (f != "*" && f != st[i]) {
			return false
		}
	}
	return len(ft) == len(st)
}

func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r < 0x20 {
			return ' '
		}
		return r
	}, s)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary.
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}
