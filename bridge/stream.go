package bridge

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrStreamMismatch means an existing stream cannot carry Herald's messages
// as configured; the bridge refuses to start rather than rewrite it.
var ErrStreamMismatch = errors.New("stream does not fit")

// StreamConfig is the configuration the bridge creates its stream with.
func StreamConfig(c Config) jetstream.StreamConfig {
	c.setDefaults()
	sc := jetstream.StreamConfig{
		Name:               c.Stream,
		Description:        "Herald change data (" + string(c.Preset) + " preset)",
		Subjects:           []string{c.Prefix + ".>"},
		Storage:            jetstream.FileStorage,
		Replicas:           c.Replicas,
		Retention:          jetstream.LimitsPolicy,
		Discard:            jetstream.DiscardNew, // full: publishing fails, the backlog waits in PostgreSQL
		MaxBytes:           c.MaxBytes,
		MaxMsgs:            -1,
		Duplicates:         c.DuplicateWindow,
		AllowAtomicPublish: true,
		AllowDirect:        true, // last-per-subject reads for recovery and bootstrap
		AllowMsgTTL:        true,
	}
	switch c.Preset {
	case PresetState:
		sc.MaxMsgsPerSubject = c.MaxMsgsPerSubject
	case PresetLog:
		sc.MaxAge = c.MaxAge
		sc.MaxMsgsPerSubject = -1
	}
	return sc
}

// EnsureStream creates the data stream if it is missing; if it exists it
// verifies that it covers the prefix and allows what the bridge needs, and
// returns ErrStreamMismatch, saying what to change, when it does not.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c Config) (jetstream.Stream, error) {
	c.setDefaults()
	want := StreamConfig(c)
	s, err := js.Stream(ctx, c.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = js.Stream(ctx, c.Stream) // created concurrently: verify it below
		} else if err != nil {
			return nil, fmt.Errorf("creating stream %s: %w", c.Stream, explainJSError(err))
		} else {
			return s, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("looking up stream %s: %w", c.Stream, explainJSError(err))
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading stream %s: %w", c.Stream, explainJSError(err))
	}
	if err := verifyStream(info.Config, c); err != nil {
		return nil, err
	}
	return s, nil
}

func verifyStream(have jetstream.StreamConfig, c Config) error {
	var problems []string
	if !coversPrefix(have.Subjects, c.Prefix) {
		problems = append(problems, fmt.Sprintf("its subjects %v do not cover %s.> (add it, or set HERALD_STREAM / HERALD_SUBJECT_PREFIX to match)", have.Subjects, c.Prefix))
	}
	if !have.AllowAtomicPublish {
		problems = append(problems, "atomic publish is not allowed (nats stream edit "+have.Name+" --allow-batch)")
	}
	if !have.AllowDirect {
		problems = append(problems, "direct get is not allowed (nats stream edit "+have.Name+" --allow-direct)")
	}
	if c.Preset == PresetState && !have.AllowMsgTTL {
		problems = append(problems, "per-message TTL is not allowed, which the state preset needs for delete messages (nats stream edit "+have.Name+" --allow-msg-ttl)")
	}
	if have.Sealed {
		problems = append(problems, "it is sealed")
	}
	if have.Duplicates <= 0 {
		problems = append(problems, "it has no duplicate window")
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: stream %s exists but %s; Herald does not rewrite an existing stream", ErrStreamMismatch, have.Name, strings.Join(problems, "; "))
}

// coversPrefix reports whether one of the stream's subject filters matches
// every subject under prefix.
func coversPrefix(subjects []string, prefix string) bool {
	p := strings.Split(prefix, ".")
	for _, s := range subjects {
		f := strings.Split(s, ".")
		ok := true
		for i, tok := range f {
			if tok == ">" {
				break
			}
			if i >= len(p) || (tok != "*" && tok != p[i]) {
				// A filter longer than the prefix (or differing) does not
				// cover all of prefix.>.
				ok = false
				break
			}
			if i == len(f)-1 {
				ok = false // ends without '>': matches only exact subjects
			}
		}
		if ok && strings.Contains(s, ">") {
			return true
		}
	}
	return false
}

func explainJSError(err error) error {
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Errorf("%w (start nats-server with JetStream enabled: -js)", err)
	}
	return err
}
