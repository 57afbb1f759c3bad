// Package natstest runs an in-process NATS server with JetStream for
// Herald's integration tests: a real server, on a random port of 127.0.0.1,
// with its store in the test's temporary directory.
//
// A test can stop the server, watch its clients lose the connection, and
// restart it on the same port and store, where the JetStream state is as
// it was:
//
//	srv := natstest.Start(t, natstest.Options{SyncAlways: true})
//	js := srv.JetStream(t)
//	...
//	srv.Stop()
//	srv.Restart(t)
//
// A cold -race build of the server package takes minutes on a small machine;
// keep the tests that use it in few packages, so it is built once.
package natstest

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readyTimeout bounds the wait for a starting server to accept clients,
// JetStream recovery included.
const readyTimeout = 30 * time.Second

// Options configures a test server.
type Options struct {
	// SyncAlways makes JetStream fsync every write (sync interval
	// "always"), as a deployment that must not lose acknowledged messages
	// to a power cut would; without it the server syncs every two minutes.
	SyncAlways bool
	// StoreDir holds the JetStream store; empty means a new t.TempDir().
	StoreDir string
	// MaxPayload is the largest message the server accepts; 0 keeps the
	// server's default (1 MiB).
	MaxPayload int32
	// Logf receives the server's notices, warnings and errors. Nil sends
	// only warnings and errors to t.Logf, so a failing test shows them
	// without pages of start-up banners.
	Logf func(format string, args ...any)
}

// Server is an in-process nats-server with JetStream. Its methods are safe
// for concurrent use.
type Server struct {
	opts     Options
	storeDir string
	log      *logger

	mu   sync.Mutex
	srv  *server.Server // latest server; kept after Stop for inspection
	port int            // fixed by the first start, reused by Restart
}

// Start starts a server and shuts it down when the test ends. It fails the
// test if the server cannot start.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{opts: opts, storeDir: opts.StoreDir, port: -1}
	if s.storeDir == "" {
		s.storeDir = t.TempDir()
	}
	s.log = &logger{logf: opts.Logf, notices: opts.Logf != nil}
	if s.log.logf == nil {
		s.log.logf = t.Logf
	}
	// Cleanups run last in, first out: registered after t.TempDir, this
	// stops the server before its store is removed, and clients connected
	// later are closed before the server goes.
	t.Cleanup(func() {
		s.Stop()
		// Server goroutines must not log through t.Logf once the test
		// is over.
		s.log.off()
	})
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// start creates and starts a server on s.port (-1: a random one).
func (s *Server) start() error {
	s.mu.Lock()
	port := s.port
	s.mu.Unlock()
	srv, err := server.NewServer(&server.Options{
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   s.storeDir,
		SyncAlways: s.opts.SyncAlways,
		MaxPayload: s.opts.MaxPayload,
		// The test binary's signals are not the server's business.
		NoSigs: true,
	})
	if err != nil {
		return fmt.Errorf("natstest: configuring nats-server: %w", err)
	}
	srv.SetLogger(s.log, false, false)
	srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("natstest: nats-server (store %s, port %d) not ready within %v; last error: %s",
			s.storeDir, port, readyTimeout, s.log.lastError())
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("natstest: JetStream did not start (store %s); last error: %s", s.storeDir, s.log.lastError())
	}
	addr, ok := srv.Addr().(*net.TCPAddr)
	if !ok {
		srv.Shutdown()
		srv.WaitForShutdown()
		return errors.New("natstest: nats-server has no TCP listener")
	}
	s.mu.Lock()
	s.srv = srv
	s.port = addr.Port
	s.mu.Unlock()
	return nil
}

// URL returns the client URL, nats://127.0.0.1:<port>.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.Port()) }

// Port returns the client port. It stays the same across Restart.
func (s *Server) Port() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.port
}

// StoreDir returns the JetStream store directory.
func (s *Server) StoreDir() string { return s.storeDir }

// Server returns the running server, or the last one after Stop.
func (s *Server) Server() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

// Stop shuts the server down and waits until it is gone. Clients see their
// connection drop and, if they allow it, try to reconnect. Stopping a
// stopped server does nothing.
func (s *Server) Stop() {
	srv := s.Server()
	if srv == nil {
		return
	}
	srv.Shutdown()
	srv.WaitForShutdown()
}

// Restart starts the server again on the same port and store directory, so
// streams, consumers and messages come back, and waits until it accepts
// clients. A running server is stopped first.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
}

// Connect connects a client, closed when the test ends. Options given
// replace the client's defaults (reconnect handling, for instance).
func (s *Server) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.URL(), opts...)
	if err != nil {
		t.Fatalf("natstest: connecting to %s: %v", s.URL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a new connection, closed when
// the test ends.
func (s *Server) JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(s.Connect(t))
	if err != nil {
		t.Fatalf("natstest: creating a JetStream context: %v", err)
	}
	return js
}

// logger adapts the server's log calls to a Logf function.
type logger struct {
	mu      sync.Mutex
	logf    func(string, ...any) // nil once the test is over
	notices bool
	lastErr string
}

func (l *logger) print(level, format string, args []any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if level == "ERR" || level == "FTL" {
		l.lastErr = fmt.Sprintf(format, args...)
	}
	if l.logf != nil {
		l.logf("nats-server: [%s] %s", level, strings.TrimSuffix(fmt.Sprintf(format, args...), "\n"))
	}
}

func (l *logger) off() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.logf = nil
}

func (l *logger) lastError() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lastErr == "" {
		return "(none logged)"
	}
	return l.lastErr
}

// Noticef implements server.Logger.
func (l *logger) Noticef(format string, args ...any) {
	if l.notices {
		l.print("INF", format, args)
	}
}

// Warnf implements server.Logger.
func (l *logger) Warnf(format string, args ...any) { l.print("WRN", format, args) }

// Errorf implements server.Logger.
func (l *logger) Errorf(format string, args ...any) { l.print("ERR", format, args) }

// Fatalf implements server.Logger. Unlike the server's own logger it does
// not exit the process: start reports the failure to the test instead.
func (l *logger) Fatalf(format string, args ...any) { l.print("FTL", format, args) }

// Debugf implements server.Logger; debug output is dropped.
func (l *logger) Debugf(string, ...any) {}

// Tracef implements server.Logger; trace output is dropped.
func (l *logger) Tracef(string, ...any) {}
