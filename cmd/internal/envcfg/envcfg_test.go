package envcfg

import (
	"bytes"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herald-cdc/herald/consumers"
)

type program struct {
	Common
	Consumer
	Durable string `envconfig:"CONSUMER" default:"demo" desc:"durable name"`
	Dir     string `envconfig:"DEMO_DIR" required:"true" desc:"a required one"`
}

func TestLoadDefaults(t *testing.T) {
	t.Setenv("HERALD_DEMO_DIR", "/srv")
	t.Setenv("HERALD_NATS_URL", "nats://a:4222, nats://b:4222")
	var p program
	if err := Load(&p); err != nil {
		t.Fatal(err)
	}
	if p.URL != "nats://a:4222, nats://b:4222" || p.Stream != "HERALD" || p.SubjectPrefix != "herald" ||
		p.LogFormat != "json" || p.LogLevel != "info" || p.MetricsAddr != ":9090" || p.Durable != "demo" ||
		p.Workers != 4 || p.AckWait != 30*time.Second || p.MaxDeliver != 10 || p.DLQStream != "HERALD_DLQ" {
		t.Fatalf("defaults not applied: %+v", p)
	}
	if err := p.Common.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	cc, err := p.Consumer.Config(&p.Common, p.Durable)
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.Validate(); err != nil || cc.Durable != "demo" || cc.DeliverPolicy != consumers.DeliverLastPerSubject {
		t.Fatalf("consumer config %+v, %v", cc, err)
	}
}

func TestLoadErrorsNameTheVariable(t *testing.T) {
	var p program
	err := Load(&p)
	if err == nil || !strings.Contains(err.Error(), "HERALD_DEMO_DIR is required") {
		t.Fatalf("Load without a required variable = %v", err)
	}
	t.Setenv("HERALD_DEMO_DIR", "/srv")
	t.Setenv("HERALD_CONSUMER_ACK_WAIT", "soon")
	err = Load(&p)
	if err == nil || !strings.Contains(err.Error(), "HERALD_CONSUMER_ACK_WAIT") {
		t.Fatalf("Load with a bad duration = %v", err)
	}
	t.Setenv("HERALD_CONSUMER_ACK_WAIT", "30s")
	for _, v := range []string{"0", "-1", "5000"} {
		t.Setenv("HERALD_CONSUMER_MAX_BATCH", v)
		if err := Load(&p); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Consumer.Config(&p.Common, p.Durable); err == nil || !strings.Contains(err.Error(), "HERALD_CONSUMER_MAX_BATCH") {
			t.Fatalf("HERALD_CONSUMER_MAX_BATCH=%s: %v", v, err)
		}
	}
}

func TestValidate(t *testing.T) {
	good := Common{NATS: NATS{URL: "nats://x:4222"}, Stream: "HERALD", SubjectPrefix: "herald", LogFormat: "json", LogLevel: "info"}
	tests := []struct {
		name   string
		change func(c *Common)
		want   string
	}{
		{"empty url", func(c *Common) { c.URL = " " }, "HERALD_NATS_URL"},
		{"cert without key", func(c *Common) { c.TLSCert = "c.pem" }, "HERALD_NATS_TLS_KEY"},
		{"bad stream", func(c *Common) { c.Stream = "A.B" }, "HERALD_STREAM"},
		{"bad prefix", func(c *Common) { c.SubjectPrefix = "her*ald" }, "HERALD_SUBJECT_PREFIX"},
		{"bad format", func(c *Common) { c.LogFormat = "xml" }, "HERALD_LOG_FORMAT"},
		{"bad level", func(c *Common) { c.LogLevel = "loud" }, "HERALD_LOG_LEVEL"},
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for _, tt := range tests {
		c := good
		tt.change(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Validate() = %v, want it to name %s", tt.name, err, tt.want)
		}
	}
	var cons Consumer
	cons.DeliverPolicy = "sometimes"
	if _, err := cons.Config(&good, "d"); err == nil || !strings.Contains(err.Error(), "HERALD_CONSUMER_DELIVER") {
		t.Errorf("bad deliver policy: %v", err)
	}
}

func TestLogger(t *testing.T) {
	c := Common{LogFormat: "text", LogLevel: "warn"}
	var buf bytes.Buffer
	l, err := c.Logger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown")
	if out := buf.String(); strings.Contains(out, "hidden") || !strings.Contains(out, "msg=shown") {
		t.Fatalf("text logger at warn wrote %q", out)
	}
	c.LogFormat = "json"
	buf.Reset()
	if l, err = c.Logger(&buf); err != nil {
		t.Fatal(err)
	}
	l.Warn("x")
	if !strings.HasPrefix(buf.String(), "{") {
		t.Fatalf("json logger wrote %q", buf.String())
	}
}

func TestUsageListsEveryVariable(t *testing.T) {
	var out bytes.Buffer
	err := ParseArgs("demo", []string{"-h"}, &out, "demo does things.", &program{})
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("ParseArgs(-h) = %v, want flag.ErrHelp", err)
	}
	text := out.String()
	for _, want := range []string{
		"demo does things.",
		"HERALD_NATS_URL", "nats://127.0.0.1:4222", "HERALD_NATS_CREDS", "HERALD_NATS_TLS_CERT", "HERALD_NATS_TLS_KEY",
		"HERALD_NATS_TLS_CA", "HERALD_NATS_NAME", "HERALD_STREAM", "HERALD_SUBJECT_PREFIX", "HERALD_METRICS_ADDR",
		"HERALD_LOG_FORMAT", "HERALD_LOG_LEVEL", "HERALD_CONSUMER ", "HERALD_CONSUMER_WORKERS", "HERALD_DLQ_STREAM",
		"HERALD_DEMO_DIR", "(required)", "a required one",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("usage lacks %q:\n%s", want, text)
		}
	}
	if err := ParseArgs("demo", []string{"extra"}, &out, "", &program{}); err == nil || !strings.Contains(err.Error(), "HERALD_") {
		t.Errorf("ParseArgs with an argument = %v", err)
	}
}

func TestConnectRetriesInBackground(t *testing.T) {
	// Nothing listens on port 1: with retry on failed connect, Connect
	// returns a connection that keeps trying rather than an error.
	n := NATS{URL: "nats://127.0.0.1:1", Name: "envcfg-test"}
	nc, err := n.Connect(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Connect = %v", err)
	}
	defer nc.Close()
	if st := nc.Status(); st == nats.CONNECTED {
		t.Fatalf("status %v with no server", st)
	}
	if nc.Opts.MaxReconnect != -1 || !nc.Opts.RetryOnFailedConnect || nc.Opts.Name != "envcfg-test" {
		t.Fatalf("options: max reconnect %d, retry %v, name %q", nc.Opts.MaxReconnect, nc.Opts.RetryOnFailedConnect, nc.Opts.Name)
	}

	bad := NATS{URL: "nats://127.0.0.1:1", Creds: "/nonexistent/creds"}
	if _, err := bad.Connect(slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "HERALD_NATS") {
		t.Fatalf("Connect with a missing credentials file = %v", err)
	}
}
