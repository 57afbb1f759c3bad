package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/internal/natstest"
	"github.com/herald-cdc/herald/internal/testproc"
)

func TestHelpListsEveryVariable(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &out, &errOut); code != 0 {
		t.Fatalf("-h exited %d: %s", code, errOut.String())
	}
	for _, v := range []string{
		"HERALD_CONSUMER ", "HERALD_FILESYNC_TABLE", "HERALD_FILESYNC_KEYS", "HERALD_FILESYNC_COLUMN",
		"HERALD_FILESYNC_DIR", "HERALD_FILESYNC_PATH", "HERALD_FILESYNC_QUIET", "HERALD_FILESYNC_FILE_MODE",
		"HERALD_NATS_URL", "HERALD_STREAM", "HERALD_SUBJECT_PREFIX", "HERALD_METRICS_ADDR", "HERALD_LOG_FORMAT",
		"HERALD_LOG_LEVEL", "public.__cmdb", "{key}/host_specific.json", "0644",
	} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("-h output lacks %q", v)
		}
	}
}

func TestBadConfigExitsWithOneLine(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, "HERALD_FILESYNC_DIR is required"},
		{map[string]string{"HERALD_FILESYNC_DIR": "/tmp/x", "HERALD_FILESYNC_PATH": "/etc/{key}"}, "Path"},
		{map[string]string{"HERALD_FILESYNC_DIR": "/tmp/x", "HERALD_FILESYNC_FILE_MODE": "rw-r--r--"}, "HERALD_FILESYNC_FILE_MODE"},
		{map[string]string{"HERALD_FILESYNC_DIR": "/tmp/x", "HERALD_SUBJECT_PREFIX": "a b"}, "HERALD_SUBJECT_PREFIX"},
		{map[string]string{"HERALD_FILESYNC_DIR": "/tmp/x", "HERALD_FILESYNC_KEYS": "ok,../etc"}, "Keys"},
		{map[string]string{"HERALD_FILESYNC_DIR": "/tmp/x", "HERALD_FILESYNC_QUIET": "1m"}, "Quiet"},
		{map[string]string{"HERALD_FILESYNC_DIR": "/tmp/x", "HERALD_CONSUMER": "a.b"}, "Durable"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var out, errOut bytes.Buffer
			code := run(context.Background(), nil, &out, &errOut)
			if code != 2 {
				t.Fatalf("exit %d, want 2 (stderr %q)", code, errOut.String())
			}
			msg := errOut.String()
			if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tt.want) || !strings.HasPrefix(msg, "herald-filesync: ") {
				t.Fatalf("stderr %q, want one line mentioning %q", msg, tt.want)
			}
		})
	}
}

const wait = 30 * time.Second

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func httpGet(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRunsSyncsAndStopsCleanly(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ctx0, cancel0 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel0()
	// The stream as the bridge creates it, with the state preset.
	if _, err := js.CreateStream(ctx0, jetstream.StreamConfig{
		Name: "HERALD", Subjects: []string{"herald.>"}, Storage: jetstream.FileStorage,
		Discard: jetstream.DiscardNew, Duplicates: 2 * time.Minute, AllowAtomicPublish: true, MaxMsgsPerSubject: 1,
	}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "cmdb")
	addr := freePort(t)
	t.Setenv("HERALD_NATS_URL", srv.URL())
	t.Setenv("HERALD_FILESYNC_DIR", dir)
	t.Setenv("HERALD_METRICS_ADDR", addr)
	t.Setenv("HERALD_LOG_FORMAT", "text")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut testproc.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, nil, &out, &errOut) }()

	testproc.Eventually(t, wait, func() string {
		if code, body := httpGet("http://" + addr + "/readyz"); code != 200 {
			return fmt.Sprintf("/readyz %d %s", code, body)
		}
		return ""
	})
	m, err := change.NewMsg("herald", &change.Envelope{
		V: 1, Source: "test", Epoch: 1, ID: 1, TxID: 1, At: time.Now().UTC(), Schema: "public", Table: "__cmdb",
		Op: change.OpInsert, Key: []string{"SHA=8f3a01"}, New: []byte(`{"hostkey":"SHA=8f3a01","value":{"vars":{"role":"web","n":1.50}}}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx0, m); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "SHA=8f3a01", "host_specific.json")
	testproc.Eventually(t, wait, func() string {
		b, err := os.ReadFile(file)
		if err != nil {
			return err.Error()
		}
		if string(b) != `{"vars":{"role":"web","n":1.50}}`+"\n" {
			return fmt.Sprintf("file holds %q", b)
		}
		return ""
	})
	if code, body := httpGet("http://" + addr + "/metrics"); code != 200 || !strings.Contains(body, `herald_consumer_processed_total{consumer="filesync"} 1`) {
		t.Fatalf("/metrics %d lacks the processed count:\n%s", code, body)
	}
	if code, _ := httpGet("http://" + addr + "/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d after a clean shutdown; stderr:\n%s", code, errOut.String())
		}
	case <-time.After(wait):
		t.Fatal("did not stop after cancel")
	}
	if !strings.Contains(errOut.String(), "herald-filesync stopped") {
		t.Fatalf("no shutdown log:\n%s", errOut.String())
	}
}

// TestMetricsAddressInUseExitsOne: when the endpoints cannot listen, the
// program stops (exit 1, the address in the log) rather than run unobserved.
func TestMetricsAddressInUseExitsOne(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	t.Setenv("HERALD_NATS_URL", srv.URL())
	t.Setenv("HERALD_FILESYNC_DIR", filepath.Join(t.TempDir(), "cmdb"))
	t.Setenv("HERALD_METRICS_ADDR", taken.Addr().String())
	t.Setenv("HERALD_LOG_FORMAT", "text")

	var out, errOut testproc.Buffer
	done := make(chan int, 1)
	go func() { done <- run(context.Background(), nil, &out, &errOut) }()
	select {
	case code := <-done:
		if code != 1 {
			t.Fatalf("exit %d, want 1; stderr:\n%s", code, errOut.String())
		}
	case <-time.After(wait):
		t.Fatalf("still running with its metrics address taken; stderr:\n%s", errOut.String())
	}
	if !strings.Contains(errOut.String(), taken.Addr().String()) {
		t.Fatalf("the log does not name the address:\n%s", errOut.String())
	}
}
