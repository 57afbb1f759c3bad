package main

// Drain: a backlog built with the bridge off, then published by the bridge
// (own process) to NATS (own process, sync_interval always by default).
// Before the bridge starts, the same changes are built into the very
// messages the bridge publishes and sent as raw atomic batches, so the
// bridge's rate has a ceiling measured in the same run on the same server.

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/schema"
)

type drainRaw struct {
	Mode    string  `json:"mode"` // atomic or fast
	Batch   int     `json:"batch"`
	Msgs    int64   `json:"msgs"`
	Bytes   int64   `json:"payload_bytes"`
	Seconds float64 `json:"seconds_publishing"`
	Rate    float64 `json:"msgs_per_s"`
}

type drainBridge struct {
	Batch      int          `json:"batch"`
	Seconds    float64      `json:"seconds"`
	Rate       float64      `json:"msgs_per_s"`
	FirstMsgS  float64      `json:"first_msg_after_s"`
	PeakRSSMiB float64      `json:"peak_rss_mib"`
	LeftInLog  int64        `json:"left_in_log"`
	CPU        cpuShares    `json:"cpu_percent_of_one_core"`
	Stats      *bridgeStats `json:"metrics,omitempty"`
	LoadStart  [3]float64   `json:"loadavg_start"`
	LoadEnd    [3]float64   `json:"loadavg_end"`
}

type drainReport struct {
	reportHead
	Rows           int64        `json:"rows"`
	Payload        int          `json:"payload_bytes"`
	AvgMsgBytes    float64      `json:"avg_message_bytes"`
	BacklogSeconds float64      `json:"backlog_build_seconds"`
	BridgeConf     bridgeTuning `json:"bridge_config"`
	Raw            drainRaw     `json:"raw_atomic_batch"`
	RawLoad        [3]float64   `json:"raw_loadavg_start"`
	RawFast        *drainRaw    `json:"raw_fast_batch,omitempty"`
	Bridge         drainBridge  `json:"bridge"`
	Ratio          float64      `json:"ratio_bridge_to_raw"`
}

const drainTable = "bench_drain"

func benchDrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench drain", "bench drain [--rows 1000000] [--json FILE]", stdout)
	rows := fs.Int64("rows", 1_000_000, "changes in the backlog")
	payload := fs.Int("payload", 272, "bytes of text in each row (the default makes 512-byte message bodies)")
	sync := fs.String("sync", "always", "NATS JetStream sync_interval: always, default (2m) or a duration")
	tuning := registerBridgeFlags(fs)
	jsonOut := fs.String("json", "", "also write the results as JSON to this file")
	bridgeProfile := fs.String("cpuprofile-bridge", "", "write a CPU profile of the bridge process to this file")
	natsProfile := fs.String("cpuprofile-nats", "", "write a CPU profile of the NATS process to this file")
	fastRows := fs.Int64("raw-fast-rows", 50_000, "also publish the first this many changes as fast (non-atomic, flow-controlled) batches, for comparison (0: skip)")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *rows < 1 || *rows > 100_000_000 {
		return usageError{"--rows must be 1 to 100000000"}
	}
	if *payload < 0 || *payload > 100000 {
		return usageError{"--payload must be 0 to 100000"}
	}
	tune, err := tuning()
	if err != nil {
		return err
	}
	if err := validSync(*sync); err != nil {
		return err
	}
	batchSize := tune.BatchSize // the raw publisher's batches are the bridge's
	rep := drainReport{reportHead: newReportHead("drain", args, *sync), Rows: *rows, Payload: *payload, BridgeConf: tune}

	pg, err := startBenchPG(ctx, stdout)
	if err != nil {
		return err
	}
	defer pg.Close()
	rep.PostgreSQL, rep.PGSettings = pg.version, pg.settings
	conn, err := pgx.Connect(ctx, pg.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	// The backlog: a watched table filled while no bridge runs.
	if _, err := conn.Exec(ctx, `CREATE TABLE bench_drain (id bigint PRIMARY KEY, k int NOT NULL, v text NOT NULL)`); err != nil {
		return err
	}
	if _, err := schema.WatchTable(ctx, conn, schema.WatchOptions{Table: drainTable}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "building a backlog of %d changes …\n", *rows)
	t0 := time.Now()
	const chunk = 100_000
	for lo := int64(1); lo <= *rows; lo += chunk {
		hi := min(lo+chunk-1, *rows)
		if _, err := conn.Exec(ctx, `INSERT INTO bench_drain SELECT g, g % 1000, repeat('x', $3) FROM generate_series($1::bigint, $2::bigint) g`, lo, hi, *payload); err != nil {
			return fmt.Errorf("filling the backlog: %w", err)
		}
	}
	rep.BacklogSeconds = time.Since(t0).Seconds()
	for _, q := range []string{`VACUUM ANALYZE herald.log`, `VACUUM ANALYZE bench_drain`, `CHECKPOINT`} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "  built in %.1fs\n", rep.BacklogSeconds)

	fmt.Fprintf(stdout, "starting NATS (own process, sync_interval %s) …\n", *sync)
	rig, err := startNATSRig(ctx, *sync, *natsProfile)
	if err != nil {
		return err
	}
	defer rig.Close()

	// Raw: the same messages, built as the bridge builds them, published as
	// atomic batches of the bridge's size, timing only the publishing.
	fmt.Fprintf(stdout, "raw atomic batches of %d …\n", batchSize)
	rep.RawLoad = loadAvg()
	if rep.Raw, err = rawDrain(ctx, conn, rig, batchSize, "atomic", 0); err != nil {
		return err
	}
	rep.AvgMsgBytes = float64(rep.Raw.Bytes) / float64(max(rep.Raw.Msgs, 1))
	fmt.Fprintf(stdout, "  %d messages (%.0f bytes on average) in %.2fs: %.0f msg/s\n", rep.Raw.Msgs, rep.AvgMsgBytes, rep.Raw.Seconds, rep.Raw.Rate)
	if err := rig.js.DeleteStream(ctx, "HERALD"); err != nil {
		return fmt.Errorf("deleting the raw run's stream: %w", err)
	}
	if *fastRows > 0 {
		fmt.Fprintf(stdout, "raw fast batches of %d, for comparison …\n", batchSize)
		fr, err := rawDrain(ctx, conn, rig, batchSize, "fast", *fastRows)
		if err != nil {
			return err
		}
		rep.RawFast = &fr
		fmt.Fprintf(stdout, "  %d messages in %.2fs: %.0f msg/s\n", fr.Msgs, fr.Seconds, fr.Rate)
		if err := rig.js.DeleteStream(ctx, "HERALD"); err != nil {
			return fmt.Errorf("deleting the raw run's stream: %w", err)
		}
	}
	if _, err := conn.Exec(ctx, `CHECKPOINT`); err != nil {
		return err
	}

	// The bridge, from a fresh stream.
	fmt.Fprintln(stdout, "the bridge (own process) drains the backlog …")
	b := drainBridge{Batch: batchSize, LoadStart: loadAvg()}
	meter := startCPUMeter()
	start := time.Now()
	br, err := startBridgeProc(ctx, pg.dsn, rig.proc.url, *bridgeProfile, tune)
	if err != nil {
		return err
	}
	defer br.stop()
	pids := rigPIDs{postmaster: pg.cluster.PID(), bridge: br.pid(), nats: rig.proc.pid(), bridgeBackend: bridgeBackendPID(ctx, conn)}
	lastPrint := time.Now()
	for {
		if exited, why := br.exited(); exited {
			return fmt.Errorf("the bridge stopped while draining: %s", why)
		}
		var msgs uint64
		if s, err := rig.js.Stream(ctx, "HERALD"); err == nil {
			if info, err := s.Info(ctx); err == nil {
				msgs = info.State.Msgs
			}
		}
		if msgs > 0 && b.FirstMsgS == 0 {
			b.FirstMsgS = time.Since(start).Seconds()
		}
		if int64(msgs) >= *rows {
			break
		}
		if time.Since(lastPrint) > 10*time.Second {
			lastPrint = time.Now()
			fmt.Fprintf(stdout, "  %5.1fs  %d published\n", time.Since(start).Seconds(), msgs)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	b.Seconds = time.Since(start).Seconds()
	meter.stop()
	b.Rate = float64(*rows) / b.Seconds
	b.CPU = meter.shares(pids)
	b.LoadEnd = loadAvg()
	if kib, err := procStatus(br.pid(), "VmHWM"); err == nil {
		b.PeakRSSMiB = mib(kib)
	}
	if b.Stats, err = br.stopStats(nil); err != nil {
		return err
	}
	_ = conn.QueryRow(ctx, `SELECT count(*) FROM herald.log`).Scan(&b.LeftInLog)
	rep.Bridge = b
	rep.Ratio = b.Rate / rep.Raw.Rate
	rep.Machine.LoadEnd = loadAvg()

	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "publisher\tmessages\tseconds\tmsg/s\tpeak RSS\t")
	fmt.Fprintf(tw, "raw atomic batches of %d\t%d\t%.2f\t%.0f\t\t\n", rep.Raw.Batch, rep.Raw.Msgs, rep.Raw.Seconds, rep.Raw.Rate)
	if f := rep.RawFast; f != nil {
		fmt.Fprintf(tw, "raw fast batches of %d (not atomic; first changes only)\t%d\t%.2f\t%.0f\t\t\n", f.Batch, f.Msgs, f.Seconds, f.Rate)
	}
	fmt.Fprintf(tw, "herald bridge (batch %d)\t%d\t%.2f\t%.0f\t%.1f MiB\t\n", b.Batch, rep.Rows, b.Seconds, b.Rate, b.PeakRSSMiB)
	tw.Flush()
	fmt.Fprintf(stdout, "bridge / raw: %.0f%%; first message after %.2fs; %d rows left in the log after stopping\nbridge: %s\ncpu while draining: %s\nNATS sync_interval %s, %s storage, %d replica; load average %s → %s\n",
		100*rep.Ratio, b.FirstMsgS, b.LeftInLog, b.Stats, b.CPU, rep.NATS.SyncInterval, rep.NATS.Storage, rep.NATS.Replicas,
		fmtLoad(rep.Machine.LoadStart), fmtLoad(rep.Machine.LoadEnd))
	return writeBenchJSON(*jsonOut, rep, stdout)
}

// rawDrain reads the whole log in id order, builds each change's message
// exactly as the bridge does (envelope, subject, headers), and publishes
// them in batches of batch messages into a stream configured as the bridge
// configures it: atomic batches (mode "atomic"), or fast batches (mode
// "fast": flow-controlled, acknowledged every hundred messages, stored in
// order but not all or nothing), of the first limit changes (0: all).
// Reading and building are not timed.
func rawDrain(ctx context.Context, conn *pgx.Conn, rig *natsRig, batch int, mode string, limit int64) (drainRaw, error) {
	raw := drainRaw{Mode: mode, Batch: batch}
	sc := bridge.StreamConfig(bridge.Config{})
	sc.AllowBatchPublish = mode == "fast"
	if _, err := rig.js.CreateStream(ctx, sc); err != nil {
		return raw, fmt.Errorf("creating the raw run's stream: %w", err)
	}
	var epoch int64
	var db string
	if err := conn.QueryRow(ctx, schema.Query("log_epoch")).Scan(&epoch, &db); err != nil {
		return raw, err
	}
	const readChunk = 50_000
	var publishing time.Duration
	last := int64(0)
	for limit <= 0 || raw.Msgs < limit {
		n := int64(readChunk)
		if limit > 0 {
			n = min(n, limit-raw.Msgs)
		}
		rows, err := conn.Query(ctx, `SELECT id, txid::text::bigint, at, schema_name, table_name, op, key, old, new FROM herald.log WHERE id > $1 ORDER BY id LIMIT $2`, last, n)
		if err != nil {
			return raw, err
		}
		var msgs []*nats.Msg
		for rows.Next() {
			e := &change.Envelope{V: change.EnvelopeVersion, Source: "bench", Epoch: epoch}
			var op string
			if err := rows.Scan(&e.ID, &e.TxID, &e.At, &e.Schema, &e.Table, &op, &e.Key, &e.Old, &e.New); err != nil {
				rows.Close()
				return raw, err
			}
			e.Op, e.At = change.Op(op), e.At.UTC()
			m, err := change.NewMsg("herald", e)
			if err != nil {
				rows.Close()
				return raw, err
			}
			msgs = append(msgs, m)
			raw.Bytes += int64(len(m.Data))
			last = e.ID
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return raw, err
		}
		if len(msgs) == 0 {
			break
		}
		start := time.Now()
		for len(msgs) > 0 {
			n := min(batch, len(msgs))
			var err error
			if mode == "fast" {
				err = fastBatch(ctx, rig, msgs[:n])
			} else {
				pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err = jetstreamext.PublishMsgBatch(pctx, rig.js, msgs[:n], jetstreamext.BatchFlowControl{AckFirst: false, AckTimeout: 30 * time.Second})
				cancel()
			}
			if err != nil {
				return raw, fmt.Errorf("raw %s batch: %w", mode, err)
			}
			raw.Msgs += int64(n)
			msgs = msgs[n:]
		}
		publishing += time.Since(start)
	}
	raw.Seconds = publishing.Seconds()
	if raw.Seconds > 0 {
		raw.Rate = float64(raw.Msgs) / raw.Seconds
	}
	return raw, nil
}

// fastBatch publishes msgs as one fast batch and waits for its commit.
func fastBatch(ctx context.Context, rig *natsRig, msgs []*nats.Msg) error {
	fp, err := jetstreamext.NewFastPublisher(rig.js, jetstreamext.FastPublishFlowControl{AckTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	for _, m := range msgs[:len(msgs)-1] {
		if _, err := fp.AddMsg(m); err != nil {
			return err
		}
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = fp.CommitMsg(pctx, msgs[len(msgs)-1])
	return err
}
