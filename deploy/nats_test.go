package deploy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// startConf starts an in-process nats-server from a configuration file of
// deploy/, moved to this machine: random client and monitoring ports on
// 127.0.0.1 and a temporary store; everything else as the file says.
// adjust changes the options further before the start.
func startConf(t *testing.T, conf string, adjust func(*server.Options)) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile(conf)
	require.NoError(t, err)
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.HTTPHost, opts.HTTPPort = "127.0.0.1", -1
	opts.StoreDir = t.TempDir()
	opts.NoSigs, opts.NoLog = true, true
	if adjust != nil {
		adjust(opts)
	}
	s, err := server.NewServer(opts)
	require.NoError(t, err)
	go s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	require.True(t, s.ReadyForConnections(30*time.Second), "%s: server not ready", conf)
	return s
}

func TestNATSConf(t *testing.T) {
	conf := filepath.Join(root, "deploy", "nats-server.conf")
	opts, err := server.ProcessConfigFile(conf)
	require.NoError(t, err)
	require.True(t, opts.JetStream)
	require.True(t, opts.SyncAlways, "sync_interval: always (DESIGN.md: acknowledged means on disk)")
	require.Equal(t, 4222, opts.Port)
	require.Equal(t, 8222, opts.HTTPPort)
	require.Equal(t, int32(1<<20), opts.MaxPayload)
	require.Equal(t, "/data/jetstream", opts.StoreDir)

	// The server starts from it, and answers the container's healthcheck.
	s := startConf(t, conf, nil)
	p := loadProject(t, composeFile)
	hc := p.Services["nats"].HealthCheck.Test
	u, err := url.Parse(hc[len(hc)-1])
	require.NoError(t, err)
	u.Host = s.MonitorAddr().String()
	resp, err := http.Get(u.String())
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", u, body)
}

// TestNATSClusterConf starts the three nodes of deploy/cluster from their
// files (addresses moved to 127.0.0.1) and creates a stream with 3
// replicas, as herald-bridge does with HERALD_STREAM_REPLICAS=3.
func TestNATSClusterConf(t *testing.T) {
	names := []string{"nats", "nats-2", "nats-3"} // the compose services the routes name
	ports := make([]int, len(names))
	for i := range ports {
		ports[i] = freePort(t)
	}
	var servers []*server.Server
	for i := range names {
		conf := filepath.Join(root, "deploy", "cluster", fmt.Sprintf("nats-%d.conf", i+1))
		s := startConf(t, conf, func(o *server.Options) {
			require.Equal(t, "herald", o.Cluster.Name)
			require.Len(t, o.Routes, len(names))
			// Each route names a compose service; point it at that node here.
			for j, r := range o.Routes {
				idx := slices.Index(names, r.Hostname())
				require.GreaterOrEqual(t, idx, 0, "%s: route %s names no node", conf, r)
				require.Equal(t, strconv.Itoa(o.Cluster.Port), r.Port(), "%s: route %s", conf, r)
				o.Routes[j] = &url.URL{Scheme: r.Scheme, Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[idx]))}
			}
			o.Cluster.Host, o.Cluster.Port = "127.0.0.1", ports[i]
		})
		servers = append(servers, s)
	}

	nc, err := nats.Connect(servers[0].ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)

	// The cluster needs a JetStream meta leader before it can place a
	// replicated stream: retry until one is elected.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var info *jetstream.StreamInfo
	for {
		// Each attempt gets its own timeout: a request sent before the
		// election may get no answer at all.
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := js.CreateStream(actx, jetstream.StreamConfig{Name: "HERALD", Subjects: []string{"herald.>"}, Replicas: 3, Storage: jetstream.FileStorage})
		if err == nil {
			info, err = s.Info(actx)
			acancel()
			require.NoError(t, err)
			break
		}
		acancel()
		require.NoError(t, ctx.Err(), "no replicated stream within a minute: %v", err)
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	require.Equal(t, 3, info.Config.Replicas)
	require.NotNil(t, info.Cluster)
	require.Equal(t, "herald", info.Cluster.Name)
	peers := map[string]bool{info.Cluster.Leader: true}
	for _, r := range info.Cluster.Replicas {
		peers[r.Name] = true
	}
	require.Equal(t, map[string]bool{"nats-1": true, "nats-2": true, "nats-3": true}, peers, "the stream lives on every node")

	ack, err := js.Publish(ctx, "herald.public.__cmdb.host1", []byte(`{"v":1}`))
	require.NoError(t, err)
	require.Equal(t, uint64(1), ack.Sequence)
}

// freePort returns a TCP port of 127.0.0.1 nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
