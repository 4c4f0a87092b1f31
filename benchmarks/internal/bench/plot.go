package bench

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"

	"github.com/HdrHistogram/hdrhistogram-go"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Series is one line of a latency plot.
type Series struct {
	Label string
	Hist  *hdrhistogram.Histogram
}

// SeriesOf returns the lines for results: each result's send latency, and
// its publish-to-consume latency when it has one.
func SeriesOf(rs []*Result) []Series {
	var out []Series
	for _, r := range rs {
		if r.Latency != nil && r.Latency.TotalCount() > 0 {
			out = append(out, Series{Label: r.Label, Hist: r.Latency})
		}
		if r.E2ELatency != nil && r.E2ELatency.TotalCount() > 0 {
			out = append(out, Series{Label: r.Label + " (publish to consume)", Hist: r.E2ELatency})
		}
	}
	return out
}

// percentileTicks label the x axis: x = 1/(1-p).
var percentileTicks = []struct {
	x     float64
	label string
}{{1, "0%"}, {2, "50%"}, {10, "90%"}, {100, "99%"}, {1e3, "99.9%"}, {1e4, "99.99%"}, {1e5, "99.999%"}, {1e6, "99.9999%"}}

// Points returns a latency-by-percentile curve of h: x is 1/(1-p) on a
// log scale (so that 90%, 99%, 99.9% are evenly spaced), y the latency in
// ms. It stops at the last percentile the sample count resolves.
func Points(h *hdrhistogram.Histogram) plotter.XYs {
	n := float64(h.TotalCount())
	var pts plotter.XYs
	for k := 0; ; k++ {
		x := math.Pow(10, float64(k)/20)
		if x > n {
			break
		}
		q := 100 * (1 - 1/x)
		pts = append(pts, plotter.XY{X: x, Y: float64(h.ValueAtQuantile(q)) / 1e3})
	}
	if n >= 1 && (len(pts) == 0 || pts[len(pts)-1].X < n) {
		pts = append(pts, plotter.XY{X: n, Y: float64(h.Max()) / 1e3})
	}
	return pts
}

// Plot draws the series' latency-by-percentile curves, HdrHistogram
// style, to file: PNG or SVG by its extension.
func Plot(file, title string, series []Series) error {
	ext := strings.ToLower(filepath.Ext(file))
	if ext != ".png" && ext != ".svg" {
		return fmt.Errorf("plot %s: the file must end in .png or .svg", file)
	}
	if len(series) == 0 {
		return errors.New("plot: no latencies to draw")
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency (ms)"
	p.X.Scale = plot.LogScale{}
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	maxX := 2.0
	for i, s := range series {
		pts := Points(s.Hist)
		if len(pts) == 0 {
			continue
		}
		maxX = max(maxX, pts[len(pts)-1].X)
		l, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.Label, err)
		}
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i / len(plotutil.DefaultColors))
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(s.Label, l)
	}
	var ticks []plot.Tick
	for _, t := range percentileTicks {
		if t.x <= maxX*1.0001 {
			ticks = append(ticks, plot.Tick{Value: t.x, Label: t.label})
		}
	}
	p.X.Min, p.X.Max = 1, maxX
	p.Y.Max *= 1.05 // the maxima below the top edge, not on it
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	return p.Save(10*vg.Inch, 6*vg.Inch, file)
}
