package consumers

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; "" means valid
	}{
		{"defaults", Config{Durable: "filesync"}, ""},
		{"no durable", Config{}, "Durable is required"},
		{"durable with dot", Config{Durable: "a.b"}, "Durable"},
		{"durable with space", Config{Durable: "a b"}, "Durable"},
		{"bad stream", Config{Durable: "d", Stream: "A*"}, "Stream"},
		{"bad prefix", Config{Durable: "d", Prefix: "a..b"}, "Prefix"},
		{"dlq is data stream", Config{Durable: "d", DLQStream: "HERALD"}, "DLQStream"},
		{"filter outside prefix", Config{Durable: "d", FilterSubjects: []string{"other.>"}}, "FilterSubjects"},
		{"filter bad wildcard", Config{Durable: "d", FilterSubjects: []string{"herald.>.x"}}, "FilterSubjects"},
		{"filter twice", Config{Durable: "d", FilterSubjects: []string{"herald.a.>", "herald.a.>"}}, "twice"},
		{"short ack wait", Config{Durable: "d", AckWait: time.Millisecond}, "AckWait"},
		{"bad max deliver", Config{Durable: "d", MaxDeliver: -5}, "MaxDeliver"},
		{"unlimited max deliver", Config{Durable: "d", MaxDeliver: -1}, ""},
		{"zero backoff", Config{Durable: "d", Backoff: []time.Duration{0}}, "Backoff[0]"},
		{"empty backoff", Config{Durable: "d", Backoff: []time.Duration{}}, "Backoff"},
		{"bad max ack pending", Config{Durable: "d", MaxAckPending: -3}, "MaxAckPending"},
		{"too many workers", Config{Durable: "d", Workers: 5000}, "Workers"},
		{"negative max batch", Config{Durable: "d", MaxBatch: -1}, "MaxBatch"},
		{"max batch too large", Config{Durable: "d", MaxBatch: 5000}, "MaxBatch"},
		{"no batches", Config{Durable: "d", MaxBatch: 1}, ""},
		{"negative quiet", Config{Durable: "d", Quiet: -time.Second}, "Quiet"},
		{"quiet too long", Config{Durable: "d", Quiet: 20 * time.Second}, "Quiet"},
		{"quiet fits", Config{Durable: "d", Quiet: 5 * time.Second}, ""},
		{"bad deliver policy", Config{Durable: "d", DeliverPolicy: 9}, "DeliverPolicy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			err := cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want an error mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg := Config{Durable: "filesync"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Stream != "HERALD" || cfg.Prefix != "herald" || cfg.DLQStream != "HERALD_DLQ" ||
		cfg.AckWait != DefaultAckWait || cfg.MaxDeliver != DefaultMaxDeliver || cfg.Workers != DefaultWorkers ||
		cfg.MaxAckPending != DefaultMaxAckPending || len(cfg.Backoff) != len(DefaultBackoff) ||
		cfg.DeliverPolicy != DeliverLastPerSubject || cfg.MaxBatch != DefaultMaxBatch {
		t.Fatalf("defaults not filled in: %+v", cfg)
	}
	if len(cfg.FilterSubjects) != 1 || cfg.FilterSubjects[0] != "herald.>" {
		t.Fatalf("FilterSubjects = %v, want [herald.>]", cfg.FilterSubjects)
	}
}

func TestParseDeliverPolicy(t *testing.T) {
	for _, p := range []DeliverPolicy{DeliverLastPerSubject, DeliverAll, DeliverNew} {
		got, err := ParseDeliverPolicy(p.String())
		if err != nil || got != p {
			t.Fatalf("ParseDeliverPolicy(%q) = %v, %v", p.String(), got, err)
		}
	}
	if _, err := ParseDeliverPolicy("sometimes"); err == nil {
		t.Fatal("ParseDeliverPolicy accepted nonsense")
	}
}

func TestSubjectMatches(t *testing.T) {
	tests := []struct {
		filter, subject string
		want            bool
	}{
		{"herald_dlq.>", "herald_dlq.filesync", true},
		{"herald_dlq.>", "herald_dlq", false},
		{"herald_dlq.*", "herald_dlq.filesync", true},
		{"herald_dlq.*", "herald_dlq.a.b", false},
		{"herald_dlq.filesync", "herald_dlq.filesync", true},
		{"herald_dlq.filesync", "herald_dlq.other", false},
		{"other.>", "herald_dlq.filesync", false},
		{">", "anything.at.all", true},
	}
	for _, tt := range tests {
		if got := subjectMatches(tt.filter, tt.subject); got != tt.want {
			t.Errorf("subjectMatches(%q, %q) = %v, want %v", tt.filter, tt.subject, got, tt.want)
		}
	}
}

func TestPermanent(t *testing.T) {
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) != nil")
	}
	base := strings.NewReader("").UnreadByte() // any non-nil error
	if IsPermanent(base) {
		t.Fatal("plain error taken for permanent")
	}
	p := Permanent(base)
	if !IsPermanent(p) || p.Error() != base.Error() {
		t.Fatalf("Permanent(%v) = %v, IsPermanent %v", base, p, IsPermanent(p))
	}
}
