package main

// Plots for docs/BENCHMARKS.md, drawn as plain SVG from the JSON the
// latency and sustained scenarios write: no plotting dependency, and the
// files diff as text.

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

func benchPlot(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("bench plot", "bench plot [--latency FILE] [--sustained FILE] --out DIR", stdout)
	latFile := fs.String("latency", "", "JSON written by `herald bench latency --json`")
	susFile := fs.String("sustained", "", "JSON written by `herald bench sustained --json`")
	out := fs.String("out", "docs/plots", "directory the SVG files are written to")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *latFile == "" && *susFile == "" {
		return usageError{"give --latency FILE, --sustained FILE or both"}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", *out, err)
	}
	if *latFile != "" {
		var rep latencyReport
		if err := readJSON(*latFile, &rep); err != nil {
			return err
		}
		if len(rep.Phases) == 0 {
			return fmt.Errorf("%s holds no latency phases; is it the JSON of `herald bench latency`?", *latFile)
		}
		if err := writeSVG(filepath.Join(*out, "latency.svg"), plotLatency(&rep), stdout); err != nil {
			return err
		}
	}
	if *susFile != "" {
		var rep sustainedReport
		if err := readJSON(*susFile, &rep); err != nil {
			return err
		}
		if len(rep.Samples) == 0 {
			return fmt.Errorf("%s holds no samples; is it the JSON of `herald bench sustained`?", *susFile)
		}
		if err := writeSVG(filepath.Join(*out, "sustained.svg"), plotSustained(&rep), stdout); err != nil {
			return err
		}
	}
	return nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	return nil
}

func writeSVG(path, svg string, stdout io.Writer) error {
	if err := os.WriteFile(path, []byte(svg), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	fmt.Fprintf(stdout, "plot written to %s\n", path)
	return nil
}

// svgDoc accumulates SVG elements.
type svgDoc struct {
	b    strings.Builder
	w, h float64
}

func newSVG(w, h float64) *svgDoc {
	d := &svgDoc{w: w, h: h}
	fmt.Fprintf(&d.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" viewBox="0 0 %g %g" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&d.b, `<rect x="0" y="0" width="%g" height="%g" fill="white"/>`+"\n", w, h)
	return d
}

func (d *svgDoc) String() string { return d.b.String() + "</svg>\n" }

func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

func (d *svgDoc) line(x1, y1, x2, y2 float64, stroke string, width float64, dash string) {
	extra := ""
	if dash != "" {
		extra = ` stroke-dasharray="` + dash + `"`
	}
	fmt.Fprintf(&d.b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="%g"%s/>`+"\n", f1(x1), f1(y1), f1(x2), f1(y2), stroke, width, extra)
}

func (d *svgDoc) text(x, y float64, s, anchor string, size float64, fill string) {
	fmt.Fprintf(&d.b, `<text x="%s" y="%s" text-anchor="%s" font-size="%g" fill="%s">%s</text>`+"\n", f1(x), f1(y), anchor, size, fill, html.EscapeString(s))
}

func (d *svgDoc) polyline(pts [][2]float64, stroke string, width float64, dash string) {
	if len(pts) == 0 {
		return
	}
	var sb strings.Builder
	for i, p := range pts {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(f1(p[0]) + "," + f1(p[1]))
	}
	extra := ""
	if dash != "" {
		extra = ` stroke-dasharray="` + dash + `"`
	}
	fmt.Fprintf(&d.b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="%g"%s/>`+"\n", sb.String(), stroke, width, extra)
}

// marker draws a point: circle, square, diamond or cross.
func (d *svgDoc) marker(x, y float64, shape, color string) {
	const r = 4.5
	switch shape {
	case "square":
		fmt.Fprintf(&d.b, `<rect x="%s" y="%s" width="%g" height="%g" fill="%s"/>`+"\n", f1(x-r), f1(y-r), 2*r, 2*r, color)
	case "diamond":
		fmt.Fprintf(&d.b, `<polygon points="%s,%s %s,%s %s,%s %s,%s" fill="%s"/>`+"\n", f1(x), f1(y-r-1), f1(x+r+1), f1(y), f1(x), f1(y+r+1), f1(x-r-1), f1(y), color)
	case "cross":
		d.line(x-r, y-r, x+r, y+r, color, 2, "")
		d.line(x-r, y+r, x+r, y-r, color, 2, "")
	default:
		fmt.Fprintf(&d.b, `<circle cx="%s" cy="%s" r="%g" fill="%s"/>`+"\n", f1(x), f1(y), r, color)
	}
}

// scale maps data values onto pixels, linearly or logarithmically.
type scale struct {
	lo, hi   float64
	p0, p1   float64
	log      bool
	floorLog float64 // values below are drawn at it (log scales only)
	step     float64 // tick step (linear scales only)
}

func (s scale) pos(v float64) float64 {
	if s.log {
		v = math.Max(v, s.floorLog)
		return s.p0 + (math.Log10(v)-math.Log10(s.lo))/(math.Log10(s.hi)-math.Log10(s.lo))*(s.p1-s.p0)
	}
	if s.hi == s.lo {
		return s.p0
	}
	return s.p0 + (v-s.lo)/(s.hi-s.lo)*(s.p1-s.p0)
}

// logScale spans [lo, hi] rounded out to powers of ten.
func logScale(lo, hi, p0, p1 float64) scale {
	lo = math.Max(lo, 0.01)
	hi = math.Max(hi, lo*10)
	l := math.Pow(10, math.Floor(math.Log10(lo)))
	h := math.Pow(10, math.Ceil(math.Log10(hi)))
	return scale{lo: l, hi: h, p0: p0, p1: p1, log: true, floorLog: l}
}

// linScale spans [0, hi], hi rounded up to a multiple of a nice tick step
// (about five ticks).
func linScale(hi, p0, p1 float64) scale {
	step := niceCeil(math.Max(hi, 1e-9) / 5)
	return scale{lo: 0, hi: math.Max(step, math.Ceil(hi/step-1e-9)*step), p0: p0, p1: p1, step: step}
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v <= m*e*(1+1e-9) {
			return m * e
		}
	}
	return 10 * e
}

// ticks returns the values to label: 1-2-5 steps on a log scale, five
// even steps on a linear one.
func (s scale) ticks() []float64 {
	var out []float64
	if s.log {
		steps := []float64{1, 2, 5}
		if s.hi/s.lo > 1e4 {
			steps = []float64{1} // wide: powers of ten only
		}
		for e := s.lo; e <= s.hi*1.0001; e *= 10 {
			for _, m := range steps {
				if v := e * m; v <= s.hi*1.0001 {
					out = append(out, v)
				}
			}
		}
		return out
	}
	for v := s.lo; v <= s.hi*(1+1e-9); v += s.step {
		out = append(out, v)
	}
	return out
}

func fmtTick(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 3, 64) + "M"
	case v >= 1e4:
		return strconv.FormatFloat(v/1e3, 'g', 3, 64) + "k"
	default:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
}

var plotColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"}

// plotLatency draws, for every rate and path, p50, p90, p99 and max on a
// log axis of milliseconds, with the goals as dashed lines.
func plotLatency(rep *latencyReport) string {
	const left, right, top, rowH = 400.0, 30.0, 90.0, 24.0
	rows := 0
	lo, hi := math.Inf(1), 0.0
	for _, ph := range rep.Phases {
		for p := range numPaths {
			s := ph.Paths[probePathNames[p]]
			if s.Count == 0 {
				continue
			}
			rows++
			lo = math.Min(lo, math.Max(s.P50, 0.01))
			hi = math.Max(hi, s.Max)
		}
	}
	if rows == 0 {
		lo, hi = 0.1, 10
	}
	hi = math.Max(hi, 5)
	w := 1000.0
	h := top + float64(rows)*rowH + 80
	d := newSVG(w, h)
	x := logScale(math.Min(lo, 0.1), hi, left, w-right)
	d.text(w/2, 22, "Herald latency from COMMIT, paced open-loop writers", "middle", 15, "black")
	d.text(w/2, 40, fmt.Sprintf("NATS sync_interval %s, %s storage, %d replica · %d cores, load %s", rep.NATS.SyncInterval, rep.NATS.Storage, rep.NATS.Replicas, rep.Machine.NProc, fmtLoad(rep.Machine.LoadStart)), "middle", 11, "#555")
	bottom := top + float64(rows)*rowH
	for _, t := range x.ticks() {
		px := x.pos(t)
		d.line(px, top-6, px, bottom, "#ddd", 1, "")
		d.text(px, bottom+16, fmtTick(t), "middle", 11, "#333")
	}
	d.text((left+w-right)/2, bottom+34, "milliseconds (log scale)", "middle", 12, "#333")
	goals := []struct {
		v     float64
		label string
	}{{1.34, "peer p99 1.34 ms"}, {5, "file p99 goal 5 ms"}}
	for i, g := range goals {
		px := x.pos(g.v)
		d.line(px, top-10-float64(i)*12, px, bottom, "#888", 1, "4,3")
		d.text(px, top-14-float64(i)*12, g.label, "middle", 10, "#555")
	}
	y := top
	for _, ph := range rep.Phases {
		for p := range numPaths {
			s := ph.Paths[probePathNames[p]]
			if s.Count == 0 {
				continue
			}
			cy := y + rowH/2
			if p%2 == 0 {
				fmt.Fprintf(&d.b, `<rect x="0" y="%s" width="%g" height="%g" fill="#f6f6f6"/>`+"\n", f1(y), w, rowH)
			}
			d.text(left-10, cy+4, fmt.Sprintf("%.0f/s, %s: %s", ph.Rate, phaseWhat(ph.Filesync), probePathTitles[p]), "end", 12, "black")
			d.line(x.pos(s.P50), cy, x.pos(s.Max), cy, "#999", 1.5, "")
			d.marker(x.pos(s.P50), cy, "circle", plotColors[0])
			d.marker(x.pos(s.P90), cy, "square", plotColors[2])
			d.marker(x.pos(s.P99), cy, "diamond", plotColors[1])
			d.marker(x.pos(s.Max), cy, "cross", "#333")
			y += rowH
		}
	}
	lx := left
	for i, l := range []struct{ shape, color, label string }{
		{"circle", plotColors[0], "p50"}, {"square", plotColors[2], "p90"}, {"diamond", plotColors[1], "p99"}, {"cross", "#333", "max"},
	} {
		px := lx + float64(i)*80
		d.marker(px, h-18, l.shape, l.color)
		d.text(px+10, h-14, l.label, "start", 12, "black")
	}
	return d.String()
}

// plotSustained draws three panels over the run's time: latency
// percentiles per window, the backlog's rows, and the age of its oldest
// change.
func plotSustained(rep *sustainedReport) string {
	const w, left, right, panelH, gap, top = 900.0, 80.0, 170.0, 200.0, 60.0, 60.0
	h := top + 3*panelH + 2*gap + 50
	d := newSVG(w, h)
	d.text(w/2, 22, fmt.Sprintf("Herald sustained at %.0f changes/s for %s", rep.Rate, rep.Duration), "middle", 15, "black")
	d.text(w/2, 40, fmt.Sprintf("NATS sync_interval %s, %s storage, %d replica · %d cores, load %s", rep.NATS.SyncInterval, rep.NATS.Storage, rep.NATS.Replicas, rep.Machine.NProc, fmtLoad(rep.Machine.LoadStart)), "middle", 11, "#555")
	tEnd := 0.0
	for _, s := range rep.Samples {
		tEnd = math.Max(tEnd, s.T)
	}
	for _, win := range rep.Windows {
		tEnd = math.Max(tEnd, win.T)
	}
	x := linScale(tEnd, left, w-right)

	type series struct {
		label, color, dash string
		pts                [][2]float64 // data values
	}
	panel := func(y0 float64, title, unit string, ss []series, logY bool) {
		y1 := y0 + panelH
		ymax, ymin := 0.0, math.Inf(1)
		for _, s := range ss {
			for _, p := range s.pts {
				ymax = math.Max(ymax, p[1])
				if p[1] > 0 {
					ymin = math.Min(ymin, p[1])
				}
			}
		}
		var y scale
		if logY {
			if math.IsInf(ymin, 1) {
				ymin = 0.1
			}
			y = logScale(ymin, ymax, y1, y0)
		} else {
			y = linScale(ymax, y1, y0)
		}
		d.text(left, y0-8, title, "start", 13, "black")
		for _, t := range y.ticks() {
			py := y.pos(t)
			d.line(left, py, w-right, py, "#e3e3e3", 1, "")
			d.text(left-6, py+4, fmtTick(t), "end", 11, "#333")
		}
		for _, t := range x.ticks() {
			px := x.pos(t)
			d.line(px, y0, px, y1, "#eee", 1, "")
			d.text(px, y1+15, fmtTick(t), "middle", 11, "#333")
		}
		d.line(left, y1, w-right, y1, "#333", 1, "")
		d.line(left, y0, left, y1, "#333", 1, "")
		fmt.Fprintf(&d.b, `<text x="0" y="0" transform="translate(24 %s) rotate(-90)" text-anchor="middle" font-size="11" fill="#333">%s</text>`+"\n", f1((y0+y1)/2), html.EscapeString(unit))
		for i, s := range ss {
			var px [][2]float64
			for _, p := range s.pts {
				px = append(px, [2]float64{x.pos(p[0]), y.pos(p[1])})
			}
			d.polyline(px, s.color, 1.6, s.dash)
			ly := y0 + 12 + float64(i)*16
			d.line(w-right+10, ly-4, w-right+34, ly-4, s.color, 2, s.dash)
			d.text(w-right+38, ly, s.label, "start", 11, "black")
		}
	}

	var lat []series
	for i, p := range []probePath{pathStream, pathFile} {
		name := probePathNames[p]
		for _, q := range []struct {
			label, dash string
			get         func(latencyStats) float64
		}{{"p50", "", func(s latencyStats) float64 { return s.P50 }}, {"p99", "5,3", func(s latencyStats) float64 { return s.P99 }}} {
			s := series{label: name + " " + q.label, color: plotColors[i], dash: q.dash}
			for j, win := range rep.Windows {
				if st := win.Paths[name]; st.Count > 0 {
					s.pts = append(s.pts, [2]float64{win.T + windowLen(rep.Windows, j)/2, q.get(st)})
				}
			}
			lat = append(lat, s)
		}
	}
	panel(top+10, "latency from COMMIT per window (stream = ordered consumer; file = renamed by filesync)", "ms (log)", lat, true)

	rows := series{label: "rows in herald.log", color: plotColors[3]}
	age := series{label: "oldest change", color: plotColors[4]}
	for _, s := range rep.Samples {
		rows.pts = append(rows.pts, [2]float64{s.T, float64(s.BacklogRows)})
		age.pts = append(age.pts, [2]float64{s.T, s.BacklogAge})
	}
	panel(top+10+panelH+gap, "backlog (sampled)", "rows", []series{rows}, false)
	panel(top+10+2*(panelH+gap), "age of the oldest unpublished change (sampled)", "ms", []series{age}, false)
	d.text((left+w-right)/2, h-12, "seconds into the run", "middle", 12, "#333")
	return d.String()
}

// windowLen is the length of window j, from its neighbours' start times.
func windowLen(ws []sustainedWindow, j int) float64 {
	switch {
	case j+1 < len(ws):
		return ws[j+1].T - ws[j].T
	case j > 0:
		return ws[j].T - ws[j-1].T
	}
	return 0
}
