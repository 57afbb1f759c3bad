package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready:\nstream HERALD does not exist yet\n"))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	// An address nobody listens on: a port taken and released.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := "http://" + ln.Addr().String() + "/healthz"
	require.NoError(t, ln.Close())

	tests := []struct {
		name     string
		args     []string
		code     int
		stderrIs string
	}{
		{"2xx is healthy", []string{srv.URL + "/healthz"}, 0, ""},
		{"503 is unhealthy, with the reason", []string{srv.URL + "/readyz"}, 1, "503 Service Unavailable: not ready: stream HERALD does not exist yet"},
		{"404 is unhealthy", []string{srv.URL + "/nothing"}, 1, "404"},
		{"no server", []string{closed}, 1, "HERALD_METRICS_ADDR"},
		{"timeout", []string{"-timeout", "50ms", srv.URL + "/slow"}, 1, "deadline exceeded"},
		{"no URL", nil, 2, "Usage"},
		{"two URLs", []string{srv.URL, srv.URL}, 2, "Usage"},
		{"not http", []string{"127.0.0.1:9090/healthz"}, 2, "not an http(s) URL"},
		{"help", []string{"-h"}, 0, "Usage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			start := time.Now()
			code := run(tc.args, &out, &errb)
			require.Equal(t, tc.code, code, "stderr: %s", errb.String())
			require.Less(t, time.Since(start), 10*time.Second)
			if tc.stderrIs == "" {
				require.Equal(t, "ok\n", out.String())
				require.Empty(t, errb.String())
				return
			}
			require.Contains(t, errb.String(), tc.stderrIs)
		})
	}
}
