package main

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// warmLine is one fill method's median warm-up time per pool size.
type warmLine struct {
	name  string
	sizes []int
	ms    []float64
}

// bar is one variant's throughput over the repetitions.
type bar struct {
	name   string
	warmpg bool // one of warmpg's modes: drawn in warmpg's colour, peers in another
	qps    spread
}

// chart is what bench draws: warm-up time against pool size (a line per
// method), select 1 throughput per variant (a bar each, min to max as
// whiskers) and, when it ran, TPC-B transactions per second per variant
// (bars too).
type chart struct {
	title string
	warm  []warmLine
	bars  []bar
	tpcb  []bar
}

var (
	warmpgColor = color.RGBA{R: 0xd9, G: 0x5f, B: 0x02, A: 0xff}
	peerColor   = color.RGBA{R: 0x75, G: 0x70, B: 0xb3, A: 0xff}
)

// writeSVG draws the chart, the two plots side by side, into an SVG file.
func (ch chart) writeSVG(path string) error {
	// Liberation Sans has Arial's metrics: where a viewer lacks it, the
	// fallbacks added below take the same room.
	plot.DefaultFont = font.Font{Typeface: "Liberation", Variant: "Sans"}
	warm, err := ch.warmPlot()
	if err != nil {
		return err
	}
	tput, err := barPlot("select 1 throughput (median, min-max)", "queries/s", ch.bars)
	if err != nil {
		return err
	}
	row := []*plot.Plot{warm, tput}
	if len(ch.tpcb) > 0 {
		tpcb, err := barPlot("TPC-B read-write (median, min-max)", "transactions/s", ch.tpcb)
		if err != nil {
			return err
		}
		row = append(row, tpcb)
	}
	w, h := vg.Length(len(row))*13*vg.Centimeter, 11*vg.Centimeter
	c := vgsvg.New(w, h)
	dc := draw.New(c)
	// A line of title above both plots.
	titleFont := plot.DefaultFont
	titleFont.Size = 11
	ts := draw.TextStyle{Color: color.Black, Font: titleFont, Handler: plot.DefaultTextHandler, XAlign: draw.XCenter, YAlign: draw.YTop}
	dc.FillText(ts, vg.Point{X: w / 2, Y: h - 0.2*vg.Centimeter}, ch.title)
	body := draw.Crop(dc, 0, 0, 0, -0.8*vg.Centimeter)
	tiles := draw.Tiles{Rows: 1, Cols: len(row), PadX: vg.Centimeter, PadLeft: 0.3 * vg.Centimeter, PadRight: 0.5 * vg.Centimeter,
		PadBottom: 0.2 * vg.Centimeter}
	cs := plot.Align([][]*plot.Plot{row}, tiles, body)
	for i, pl := range row {
		pl.Draw(cs[0][i])
	}

	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return fmt.Errorf("-svg: %w", err)
	}
	out := bytes.ReplaceAll(buf.Bytes(), []byte("font-family:Liberation Sans;"),
		[]byte("font-family:'Liberation Sans',Arial,Helvetica,sans-serif;"))
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return fmt.Errorf("-svg: %w", err)
	}
	return nil
}

// plainTicks labels about five round values (0, 500, 1000, ...) without
// trailing zeros.
var plainTicks = plot.TickerFunc(func(min, max float64) []plot.Tick {
	raw := (max - min) / 5
	if raw <= 0 {
		return []plot.Tick{{Value: min, Label: strconv.FormatFloat(min, 'f', -1, 64)}}
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var ticks []plot.Tick
	for v := math.Ceil(min/step) * step; v <= max+step/1e6; v += step {
		ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
	}
	return ticks
})

func (ch chart) warmPlot() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Warm-up time (median)"
	p.X.Label.Text = "pool size (connections)"
	p.Y.Label.Text = "ms"
	p.Y.Min = 0
	p.Y.Tick.Marker = plainTicks
	p.X.Tick.Marker = plot.TickerFunc(func(float64, float64) []plot.Tick {
		var ticks []plot.Tick
		for _, n := range ch.warm[0].sizes {
			ticks = append(ticks, plot.Tick{Value: float64(n), Label: strconv.Itoa(n)})
		}
		return ticks
	})
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(6)
	p.Add(plotter.NewGrid())
	for i, l := range ch.warm {
		xys := make(plotter.XYs, len(l.sizes))
		for j := range l.sizes {
			xys[j] = plotter.XY{X: float64(l.sizes[j]), Y: l.ms[j]}
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, fmt.Errorf("chart: %s: %w", l.name, err)
		}
		line.Color = plotutil.Color(i)
		line.Width = vg.Points(1.5)
		points.Color = plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(l.name, line, points)
	}
	return p, nil
}

// minMax is the whiskers of the bars: XY is the median, XError how far
// below and above it the minimum and maximum are.
type minMax struct {
	plotter.XYs
	plotter.XErrors
}

// barPlot draws bars, one per variant, top to bottom in their order.
func barPlot(title, unit string, bars []bar) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = unit
	p.X.Min = 0
	p.X.Tick.Marker = plainTicks
	p.Add(plotter.NewGrid())
	names := make([]string, len(bars))
	var whiskers minMax
	// Top to bottom in the order given: the y axis grows upwards.
	for i, b := range bars {
		y := float64(len(bars) - 1 - i)
		names[len(bars)-1-i] = b.name
		bc, err := plotter.NewBarChart(plotter.Values{b.qps.med}, vg.Points(11))
		if err != nil {
			return nil, fmt.Errorf("chart: %s: %w", b.name, err)
		}
		bc.Horizontal = true
		bc.XMin = y
		bc.LineStyle.Width = 0
		bc.Color = peerColor
		if b.warmpg {
			bc.Color = warmpgColor
		}
		p.Add(bc)
		whiskers.XYs = append(whiskers.XYs, plotter.XY{X: b.qps.med, Y: y})
		whiskers.XErrors = append(whiskers.XErrors, struct{ Low, High float64 }{b.qps.med - b.qps.min, b.qps.max - b.qps.med})
	}
	eb, err := plotter.NewXErrorBars(whiskers)
	if err != nil {
		return nil, fmt.Errorf("chart: %w", err)
	}
	p.Add(eb)
	p.NominalY(names...)
	return p, nil
}
