package main

import (
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// validSVG fails the test unless path holds well-formed XML whose root
// element is <svg>.
func validSVG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := xml.NewDecoder(f)
	root := ""
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s is not well-formed XML: %v", path, err)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Fatalf("%s: root element <%s>, want <svg>", path, root)
	}
}

func TestChartSVG(t *testing.T) {
	ch := chart{
		title: "warmpg bench: test data",
		warm: []warmLine{
			{"one-by-one", []int{10, 50, 100}, []float64{260, 1300, 2600}},
			{"warmpg.WarmDB", []int{10, 50, 100}, []float64{40, 180, 330}},
			{"pgxpool MinConns", []int{10, 50, 100}, []float64{42, 190, 360}},
		},
		bars: []bar{
			{"warmpg check", true, spread{2900, 3000, 3100}},
			{"warmpg ping", true, spread{1400, 1500, 1550}},
			{"pgx-never-ping", false, spread{2950, 3010, 3090}},
			{"pgxpool", false, spread{2800, 2950, 3000}},
		},
		tpcb: []bar{
			{"warmpg", true, spread{230, 235, 240}},
			{"pgx-stdlib", false, spread{195, 200, 203}},
			{"pgxpool", false, spread{200, 204, 207}},
			{"pq", false, spread{115, 118, 120}},
		},
	}
	path := filepath.Join(t.TempDir(), "chart.svg")
	if dir := os.Getenv("WARMPG_CHART_DIR"); dir != "" {
		path = filepath.Join(dir, "chart.svg") // to look at it
	}
	if err := ch.writeSVG(path); err != nil {
		t.Fatal(err)
	}
	validSVG(t, path)
	b, _ := os.ReadFile(path)
	for _, want := range []string{"warmpg check", "pgxpool MinConns", "Warm-up time", "queries/s", "sans-serif", "TPC-B", "transactions/s", "pgx-stdlib"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("chart has no %q", want)
		}
	}
	if err := (chart{warm: ch.warm, bars: ch.bars}).writeSVG(filepath.Join(t.TempDir(), "no", "such", "dir.svg")); err == nil {
		t.Error("writing into a missing directory: no error")
	}
}
