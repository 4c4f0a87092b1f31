package console

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// What the console costs (make bench-console): the page's weight, the
// bytes it reads while open, and the broker's CPU with a page open on the
// overview against none, idle and under a steady load, in alternating
// windows of QUIVER_CONSOLE_WINDOW (default 30 s).
func TestConsoleCost(t *testing.T) {
	if os.Getenv("QUIVER_CONSOLE_COST") == "" {
		t.Skip("a measurement: make bench-console (QUIVER_CONSOLE_COST=1)")
	}
	window := 30 * time.Second
	if v := os.Getenv("QUIVER_CONSOLE_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		window = d
	}
	b := startBroker(t, "")
	pid := b.p.Pid()

	// The page's weight: what a first visit transfers.
	p := newPageFor(t, 10*window+5*time.Minute)
	p.do(t, "open the overview", chromedp.Navigate(b.url("overview")))
	p.wait(t, "the charts", `+document.querySelector('svg[data-chart=sends]')?.dataset.points >= 1`)
	var w struct{ Transfer, Decoded, Files, API, APIBytes float64 }
	p.eval(t, `(() => {
		const n = performance.getEntriesByType('navigation')[0];
		let tr = n.transferSize, dec = n.decodedBodySize, files = 1, api = 0, apiBytes = 0;
		for (const r of performance.getEntriesByType('resource')) {
			if (r.name.includes('/ui/api/')) { api++; apiBytes += r.transferSize; continue; }
			tr += r.transferSize; dec += r.decodedBodySize; files++;
		}
		return {Transfer: tr, Decoded: dec, Files: files, API: api, APIBytes: apiBytes};
	})()`, &w)
	t.Logf("console: page weight %.1f KiB transferred (%.0f files, %.1f KiB uncompressed)", w.Transfer/1024, w.Files, w.Decoded/1024)

	// What an open page reads: the API requests of one window.
	p.eval(t, `(() => { performance.setResourceTimingBufferSize(100000); performance.clearResourceTimings(); return 1; })()`, new(int))
	cpu := func() time.Duration {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		return time.Duration(ut+st) * 10 * time.Millisecond
	}
	// measure returns the broker's CPU share over one window.
	measure := func() float64 {
		c0, t0 := cpu(), time.Now()
		time.Sleep(window) // the measurement window (not a synchronisation)
		return float64(cpu()-c0) / float64(time.Since(t0))
	}
	open := func(on bool) {
		target := "about:blank"
		if on {
			target = b.url("overview")
		}
		p.do(t, "navigate", chromedp.Navigate(target))
	}
	run := func(label string) {
		var with, without []float64
		for round := 0; round < 2; round++ {
			open(false)
			without = append(without, measure())
			open(true)
			p.wait(t, "the page", `document.querySelector('svg[data-chart=sends]') != null`)
			with = append(with, measure())
		}
		avg := func(xs []float64) float64 {
			s := 0.0
			for _, x := range xs {
				s += x
			}
			return s / float64(len(xs))
		}
		t.Logf("console: broker CPU %s: %.2f %% of a core with the overview open, %.2f %% without (windows of %s: with %v, without %v)",
			label, 100*avg(with), 100*avg(without), window, pct(with), pct(without))
	}
	run("idle")
	var a struct{ N, Bytes float64 }
	p.eval(t, `(() => { let n = 0, b = 0; for (const r of performance.getEntriesByType('resource')) if (r.name.includes('/ui/api/')) { n++; b += r.transferSize; } return {N: n, Bytes: b}; })()`, &a)
	t.Logf("console: an open overview read %.0f API responses, %.1f KiB, in its last %s (%.0f B/s)", a.N, a.Bytes/1024, window, a.Bytes/window.Seconds())

	// Under a steady load: quiver-bench at 2,000 sends/s for the whole run.
	bench := exec.Command(filepath.Join(binDir, "quiver-bench"), "--broker", b.addr, "--ca", b.ca, "--duration", (8*window + 20*time.Second).String(),
		"--warmup", "0s", "--producers", "4", "--topic", "bench", "--rate", "2000")
	var out strings.Builder
	bench.Stdout, bench.Stderr = &out, &out
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	defer bench.Process.Kill()
	p.wait(t, "the load", `JSON.parse(document.querySelector('svg[data-chart=sends]')?.dataset.last || '{}')['sends/s'] > 1000`)
	run("at 2,000 sends/s")
	bench.Process.Kill()
	bench.Wait()
}

func pct(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf("%.2f%%", 100*x))
	}
	return strings.Join(s, " ")
}
