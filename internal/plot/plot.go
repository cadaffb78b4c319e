// Package plot draws small line charts as PNG images with the standard
// library and a fixed bitmap font: several series, axes with ticks, a
// legend, and an optional logarithmic x axis (for latency CDFs). The bench
// command (tools/bench) draws the figures of docs/BENCHMARKS.md with it.
//
// Nothing here starts goroutines or keeps state: a Chart is a value, and
// Render draws it afresh each time.
package plot

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"os"
	"strconv"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Default size of a chart, in pixels.
const (
	DefaultWidth  = 720
	DefaultHeight = 440
)

// Margins around the plot area, in pixels: room for tick labels and axis
// titles on the left and at the bottom, the title at the top.
const (
	marginLeft   = 70
	marginRight  = 20
	marginTop    = 34
	marginBottom = 52
)

// Series is one named line. X and Y have the same length; points are drawn
// in order, joined by straight segments, each marked with a small square.
// On a logarithmic x axis, points with X ≤ 0 are skipped.
type Series struct {
	Name string
	X, Y []float64
}

// Chart is a line chart. The zero value of every field but Series is
// usable: the size defaults to DefaultWidth × DefaultHeight, the ranges to
// the data's (y from 0 when all values are positive).
type Chart struct {
	Title  string
	XLabel string
	YLabel string
	// Width and Height in pixels; 0 means the default, and a chart smaller
	// than 200 × 150 is refused.
	Width, Height int
	// LogX draws the x axis on a base-10 logarithmic scale.
	LogX bool
	// YMin and YMax fix the y range when YMax > YMin; else it is the data's.
	YMin, YMax float64
	// Legend is the corner of the plot area that holds the legend: put it
	// where the data is not (a CDF's tail is at the top right).
	Legend Corner
	Series []Series
}

// Corner is a corner of the plot area.
type Corner int

// The corners; the zero value is TopRight.
const (
	TopRight Corner = iota
	BottomRight
	TopLeft
	BottomLeft
)

// palette holds the series colors, in order; they repeat past its end.
var palette = []color.RGBA{
	{0x1f, 0x77, 0xb4, 0xff}, // blue
	{0xd6, 0x27, 0x28, 0xff}, // red
	{0x2c, 0xa0, 0x2c, 0xff}, // green
	{0xff, 0x7f, 0x0e, 0xff}, // orange
	{0x94, 0x67, 0xbd, 0xff}, // purple
	{0x8c, 0x56, 0x4b, 0xff}, // brown
}

// Color returns the color of the i-th series.
func Color(i int) color.RGBA { return palette[i%len(palette)] }

var (
	white = color.RGBA{0xff, 0xff, 0xff, 0xff}
	black = color.RGBA{0x20, 0x20, 0x20, 0xff}
	grid  = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
)

// ErrNoData is returned when no series has a point that can be drawn.
var ErrNoData = errors.New("plot: no data to draw")

// Render draws the chart. It fails if the size is too small, a series has
// X and Y of different lengths or a value that is not finite, or nothing
// can be drawn.
func (c Chart) Render() (*image.RGBA, error) {
	w, h := c.Width, c.Height
	if w == 0 {
		w = DefaultWidth
	}
	if h == 0 {
		h = DefaultHeight
	}
	if w < 200 || h < 150 {
		return nil, fmt.Errorf("plot: %d×%d is smaller than 200×150", w, h)
	}
	xr, yr, err := c.ranges()
	if err != nil {
		return nil, err
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(white), image.Point{}, draw.Src)
	area := image.Rect(marginLeft, marginTop, w-marginRight, h-marginBottom)
	// pa maps a value in axis units to a pixel column, px one in data
	// units.
	pa := func(a float64) float64 {
		return float64(area.Min.X) + (a-xr.lo)/(xr.hi-xr.lo)*float64(area.Dx())
	}
	px := func(x float64) float64 {
		if c.LogX {
			x = math.Log10(x)
		}
		return pa(x)
	}
	py := func(y float64) float64 {
		return float64(area.Max.Y) - (y-yr.lo)/(yr.hi-yr.lo)*float64(area.Dy())
	}

	// Grid and ticks.
	for _, t := range c.xTicks(xr) {
		x := int(math.Round(pa(t.v)))
		vline(img, x, area.Min.Y, area.Max.Y, grid)
		vline(img, x, area.Max.Y, area.Max.Y+4, black)
		text(img, t.label, x-textWidth(t.label)/2, area.Max.Y+17, black)
	}
	for _, t := range linearTicks(yr.lo, yr.hi, 6) {
		y := int(math.Round(py(t.v)))
		hline(img, area.Min.X, area.Max.X, y, grid)
		hline(img, area.Min.X-4, area.Min.X, y, black)
		text(img, t.label, area.Min.X-7-textWidth(t.label), y+4, black)
	}
	// Axes.
	hline(img, area.Min.X, area.Max.X, area.Max.Y, black)
	vline(img, area.Min.X, area.Min.Y, area.Max.Y, black)
	// Titles.
	text(img, c.Title, (w-textWidth(c.Title))/2, 20, black)
	text(img, c.XLabel, area.Min.X+(area.Dx()-textWidth(c.XLabel))/2, h-12, black)
	verticalText(img, c.YLabel, 8, area.Min.Y+(area.Dy()+textWidth(c.YLabel))/2, black)

	// Series, clipped to the plot area.
	plotArea := img.SubImage(area.Inset(-1)).(*image.RGBA)
	for i, s := range c.Series {
		col := Color(i)
		havePrev := false
		var x0, y0 float64
		for j := range s.X {
			if c.LogX && s.X[j] <= 0 {
				havePrev = false
				continue
			}
			x1, y1 := px(s.X[j]), py(s.Y[j])
			if havePrev {
				line(plotArea, x0, y0, x1, y1, col)
			}
			if len(s.X) <= 40 {
				mark(plotArea, x1, y1, col)
			}
			x0, y0, havePrev = x1, y1, true
		}
	}
	c.legend(img, area)
	return img, nil
}

// WritePNG renders the chart and encodes it as PNG to out.
func (c Chart) WritePNG(out io.Writer) error {
	img, err := c.Render()
	if err != nil {
		return err
	}
	return png.Encode(out, img)
}

// Save renders the chart into the PNG file path, replacing it.
func (c Chart) Save(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := c.WritePNG(f); err != nil {
		f.Close()
		return fmt.Errorf("plot: %s: %w", path, err)
	}
	return f.Close()
}

// span is an axis range, in axis units (log10 of x on a log axis).
type span struct{ lo, hi float64 }

// ranges returns the x and y ranges of the data, widened so that neither
// is empty.
func (c Chart) ranges() (xr, yr span, err error) {
	xr = span{math.Inf(1), math.Inf(-1)}
	yr = xr
	n := 0
	for _, s := range c.Series {
		if len(s.X) != len(s.Y) {
			return xr, yr, fmt.Errorf("plot: series %q has %d x and %d y values", s.Name, len(s.X), len(s.Y))
		}
		for i := range s.X {
			x, y := s.X[i], s.Y[i]
			if math.IsNaN(x) || math.IsInf(x, 0) || math.IsNaN(y) || math.IsInf(y, 0) {
				return xr, yr, fmt.Errorf("plot: series %q has a value that is not finite at %d", s.Name, i)
			}
			if c.LogX {
				if x <= 0 {
					continue
				}
				x = math.Log10(x)
			}
			xr.lo, xr.hi = min(xr.lo, x), max(xr.hi, x)
			yr.lo, yr.hi = min(yr.lo, y), max(yr.hi, y)
			n++
		}
	}
	if n == 0 {
		return xr, yr, ErrNoData
	}
	if c.LogX {
		xr.lo, xr.hi = snapLog(xr.lo, false), snapLog(xr.hi, true)
	}
	if xr.hi <= xr.lo {
		xr.lo, xr.hi = xr.lo-1, xr.hi+1
	}
	// Keep the first and last points off the frame.
	pad := (xr.hi - xr.lo) * 0.03
	xr.lo, xr.hi = xr.lo-pad, xr.hi+pad
	if c.YMax > c.YMin {
		return xr, span{c.YMin, c.YMax}, nil
	}
	if yr.lo > 0 {
		yr.lo = 0
	}
	if yr.hi <= yr.lo {
		yr.hi = yr.lo + 1
	}
	// Round the top up to the next tick.
	ts := linearTicks(yr.lo, yr.hi, 6)
	if step := ts[len(ts)-1].v - ts[0].v; len(ts) > 1 && ts[len(ts)-1].v < yr.hi {
		yr.hi = ts[len(ts)-1].v + step/float64(len(ts)-1)
	}
	return xr, yr, nil
}

// snapLog moves a log10 value down (or up) to the nearest 1, 2 or 5 times
// a power of ten.
func snapLog(a float64, up bool) float64 {
	e := math.Floor(a)
	steps := []float64{0, math.Log10(2), math.Log10(5), 1}
	if up {
		for _, st := range steps {
			if e+st >= a-1e-9 {
				return e + st
			}
		}
	}
	for i := len(steps) - 1; i >= 0; i-- {
		if e+steps[i] <= a+1e-9 {
			return e + steps[i]
		}
	}
	return e
}

// tick is a value on an axis (in axis units) and its label.
type tick struct {
	v     float64
	label string
}

// xTicks returns the ticks of the x axis: 1-2-5 steps on a linear axis;
// on a log axis every power of ten, and 2 and 5 times it when there are
// few decades.
func (c Chart) xTicks(xr span) []tick {
	if !c.LogX {
		return linearTicks(xr.lo, xr.hi, 8)
	}
	var ts []tick
	decades := int(math.Ceil(xr.hi - xr.lo))
	for e := int(math.Floor(xr.lo)); e <= int(math.Ceil(xr.hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			if m != 1 && decades > 3 {
				continue
			}
			v := math.Log10(m) + float64(e)
			if v < xr.lo-1e-9 {
				continue
			}
			if v > xr.hi+1e-9 {
				break
			}
			ts = append(ts, tick{v: v, label: format(m * math.Pow(10, float64(e)))})
		}
	}
	return ts
}

// linearTicks returns about n ticks at 1, 2 or 5 times a power of ten
// between lo and hi.
func linearTicks(lo, hi float64, n int) []tick {
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var ts []tick
	for v := math.Ceil(lo/step-1e-9) * step; v <= hi+step*1e-9; v += step {
		if math.Abs(v) < step*1e-9 {
			v = 0
		}
		ts = append(ts, tick{v: v, label: format(v)})
	}
	return ts
}

// format prints a tick value briefly: 0.5, 2, 1500, 10000, 1e+08.
func format(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e7 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// legend draws the series names in a box at the top right of the area.
func (c Chart) legend(img *image.RGBA, area image.Rectangle) {
	named := 0
	width := 0
	for _, s := range c.Series {
		if s.Name != "" {
			named++
			width = max(width, textWidth(s.Name))
		}
	}
	if named == 0 {
		return
	}
	const lineH, swatch = 16, 18
	box := image.Rect(area.Max.X-width-swatch-22, area.Min.Y+6, area.Max.X-6, area.Min.Y+12+named*lineH)
	if c.Legend == BottomRight || c.Legend == BottomLeft {
		box = box.Add(image.Pt(0, area.Dy()-box.Dy()-12))
	}
	if c.Legend == TopLeft || c.Legend == BottomLeft {
		box = box.Add(image.Pt(area.Min.X+6-box.Min.X, 0))
	}
	draw.Draw(img, box, image.NewUniform(white), image.Point{}, draw.Src)
	rect(img, box, black)
	y := box.Min.Y + 13
	for i, s := range c.Series {
		if s.Name == "" {
			continue
		}
		x := box.Min.X + 6
		for d := -1; d <= 1; d++ {
			hline(img, x, x+swatch, y-4+d, Color(i))
		}
		text(img, s.Name, x+swatch+6, y, black)
		y += lineH
	}
}

// Drawing primitives.

func hline(img *image.RGBA, x0, x1, y int, c color.RGBA) {
	for x := x0; x <= x1; x++ {
		img.SetRGBA(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.RGBA) {
	for y := y0; y <= y1; y++ {
		img.SetRGBA(x, y, c)
	}
}

func rect(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	hline(img, r.Min.X, r.Max.X, r.Min.Y, c)
	hline(img, r.Min.X, r.Max.X, r.Max.Y, c)
	vline(img, r.Min.X, r.Min.Y, r.Max.Y, c)
	vline(img, r.Max.X, r.Min.Y, r.Max.Y, c)
}

// line draws a segment two pixels wide. SetRGBA ignores points outside
// img's bounds, which clips the segment.
func line(img *image.RGBA, x0, y0, x1, y1 float64, c color.RGBA) {
	steps := int(math.Ceil(math.Max(math.Abs(x1-x0), math.Abs(y1-y0))))
	for i := 0; i <= steps; i++ {
		t := 0.0
		if steps > 0 {
			t = float64(i) / float64(steps)
		}
		x := int(math.Round(x0 + t*(x1-x0)))
		y := int(math.Round(y0 + t*(y1-y0)))
		img.SetRGBA(x, y, c)
		img.SetRGBA(x+1, y, c)
		img.SetRGBA(x, y+1, c)
	}
}

// mark draws a 5×5 square centred on a point.
func mark(img *image.RGBA, x, y float64, c color.RGBA) {
	cx, cy := int(math.Round(x)), int(math.Round(y))
	for dy := -2; dy <= 2; dy++ {
		for dx := -2; dx <= 2; dx++ {
			img.SetRGBA(cx+dx, cy+dy, c)
		}
	}
}

// face is the fixed 7×13 font of every label.
var face = basicfont.Face7x13

func textWidth(s string) int {
	return font.MeasureString(face, s).Round()
}

// text draws s with its baseline at y, starting at x.
func text(img draw.Image, s string, x, y int, c color.RGBA) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: face, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// verticalText draws s rotated a quarter turn counter-clockwise, reading
// upwards, with the top of its letters at x and its first letter at y.
func verticalText(img *image.RGBA, s string, x, y int, c color.RGBA) {
	if s == "" {
		return
	}
	w, h := textWidth(s), face.Height
	tmp := image.NewRGBA(image.Rect(0, 0, w, h))
	text(tmp, s, 0, face.Ascent, c)
	for ty := range h {
		for tx := range w {
			p := tmp.RGBAAt(tx, ty)
			if p.A == 0 {
				continue
			}
			img.SetRGBA(x+ty, y-tx, p)
		}
	}
}
