package plot

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// decode encodes c as PNG and decodes it back, as a reader of the file
// would.
func decode(t *testing.T, c Chart) image.Image {
	t.Helper()
	var buf bytes.Buffer
	if err := c.WritePNG(&buf); err != nil {
		t.Fatalf("WritePNG: %v", err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("the output does not decode as PNG: %v", err)
	}
	return img
}

// count returns how many pixels of img inside r have exactly the color c.
func count(img image.Image, r image.Rectangle, c color.RGBA) int {
	n := 0
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if color.RGBAModel.Convert(img.At(x, y)).(color.RGBA) == c {
				n++
			}
		}
	}
	return n
}

func TestRenderSizeAndSeries(t *testing.T) {
	tests := []struct {
		name          string
		chart         Chart
		wantW, wantH  int
		wantSeriesPix []bool // per series: drawn inside the plot area
	}{
		{
			name: "default size, two series",
			chart: Chart{Title: "t", XLabel: "x", YLabel: "y", Series: []Series{
				{Name: "a", X: []float64{0, 1, 2}, Y: []float64{0, 1, 4}},
				{Name: "b", X: []float64{0, 1, 2}, Y: []float64{4, 2, 0}},
			}},
			wantW: DefaultWidth, wantH: DefaultHeight,
			wantSeriesPix: []bool{true, true},
		},
		{
			name: "log x, given size, points at or below zero skipped",
			chart: Chart{Width: 400, Height: 300, LogX: true, YMin: 0, YMax: 1, Legend: BottomLeft, Series: []Series{
				{Name: "cdf", X: []float64{0, 1, 10, 100}, Y: []float64{0, 0.2, 0.9, 1}},
			}},
			wantW: 400, wantH: 300,
			wantSeriesPix: []bool{true},
		},
		{
			name: "one point, marked",
			chart: Chart{Series: []Series{
				{Name: "anchor", X: []float64{10000}, Y: []float64{18.6}},
				{Name: "own connection", X: []float64{1000, 10000}, Y: []float64{40, 38}},
			}},
			wantW: DefaultWidth, wantH: DefaultHeight,
			wantSeriesPix: []bool{true, true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := decode(t, tt.chart)
			if b := img.Bounds(); b.Dx() != tt.wantW || b.Dy() != tt.wantH {
				t.Fatalf("size %d×%d, want %d×%d", b.Dx(), b.Dy(), tt.wantW, tt.wantH)
			}
			area := image.Rect(marginLeft, marginTop, tt.wantW-marginRight, tt.wantH-marginBottom)
			for i, want := range tt.wantSeriesPix {
				// The legend (top right) uses the colors too: count
				// outside it.
				legend := image.Rect(area.Max.X-200, area.Min.Y, area.Max.X, area.Min.Y+14+16*len(tt.chart.Series))
				if tt.chart.Legend == BottomLeft {
					legend = image.Rect(area.Min.X, area.Max.Y-14-16*len(tt.chart.Series)-12, area.Min.X+200, area.Max.Y)
				}
				got := count(img, area, Color(i))-count(img, legend, Color(i)) > 0
				if got != want {
					t.Errorf("series %d (%s) drawn in the plot area: %v, want %v", i, tt.chart.Series[i].Name, got, want)
				}
			}
			if n := count(img, img.Bounds(), black); n < 100 {
				t.Errorf("%d black pixels (axes, ticks, labels), want at least 100", n)
			}
		})
	}
}

// TestRenderPlacesPoints: a horizontal series at the top of a fixed range
// is drawn near the top of the area, and one at the bottom near its
// bottom: values map to the right pixels, not just somewhere.
func TestRenderPlacesPoints(t *testing.T) {
	c := Chart{YMin: 0, YMax: 10, Series: []Series{
		{X: []float64{0, 10}, Y: []float64{10, 10}},
		{X: []float64{0, 10}, Y: []float64{0, 0}},
	}}
	img := decode(t, c)
	top := image.Rect(marginLeft+10, marginTop-2, DefaultWidth-marginRight-10, marginTop+3)
	bottom := image.Rect(marginLeft+10, DefaultHeight-marginBottom-2, DefaultWidth-marginRight-10, DefaultHeight-marginBottom+3)
	if n := count(img, top, Color(0)); n < 100 {
		t.Errorf("series at y=10: %d pixels along the top of the area, want a line", n)
	}
	if n := count(img, bottom, Color(1)); n < 100 {
		t.Errorf("series at y=0: %d pixels along the bottom of the area, want a line", n)
	}
	if n := count(img, top, Color(1)); n != 0 {
		t.Errorf("series at y=0 has %d pixels at the top", n)
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		name  string
		chart Chart
		is    error
	}{
		{"no series", Chart{}, ErrNoData},
		{"only non-positive x on a log axis", Chart{LogX: true, Series: []Series{{X: []float64{0, -1}, Y: []float64{1, 2}}}}, ErrNoData},
		{"lengths differ", Chart{Series: []Series{{X: []float64{1, 2}, Y: []float64{1}}}}, nil},
		{"NaN", Chart{Series: []Series{{X: []float64{1}, Y: []float64{math.NaN()}}}}, nil},
		{"too small", Chart{Width: 100, Height: 100, Series: []Series{{X: []float64{1}, Y: []float64{1}}}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.chart.Render()
			if err == nil {
				t.Fatal("Render succeeded, want an error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v, want %v", err, tt.is)
			}
		})
	}
}

func TestSave(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.png")
	c := Chart{Series: []Series{{Name: "a", X: []float64{1, 2}, Y: []float64{1, 2}}}}
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil {
		t.Fatalf("saved file: %v", err)
	}
	if cfg.Width != DefaultWidth || cfg.Height != DefaultHeight {
		t.Errorf("saved %d×%d, want %d×%d", cfg.Width, cfg.Height, DefaultWidth, DefaultHeight)
	}
}

func TestLinearTicks(t *testing.T) {
	tests := []struct {
		lo, hi float64
		n      int
		want   []string
	}{
		{0, 10, 5, []string{"0", "2", "4", "6", "8", "10"}},
		{0, 1, 4, []string{"0", "0.5", "1"}},
		{0, 37, 6, []string{"0", "10", "20", "30"}},
	}
	for _, tt := range tests {
		var got []string
		for _, tk := range linearTicks(tt.lo, tt.hi, tt.n) {
			got = append(got, tk.label)
		}
		if len(got) != len(tt.want) {
			t.Errorf("linearTicks(%v, %v, %d) = %v, want %v", tt.lo, tt.hi, tt.n, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("linearTicks(%v, %v, %d) = %v, want %v", tt.lo, tt.hi, tt.n, got, tt.want)
				break
			}
		}
	}
}
