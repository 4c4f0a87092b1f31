package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Describe is one line saying what ran, on what, with which durability.
func (r *Result) Describe() string {
	return fmt.Sprintf("%s: %s; durability: %s", r.Label, r.Workload(), r.Durability)
}

// Workload says what load ran, whatever the system.
func (r *Result) Workload() string {
	var b strings.Builder
	switch r.Mode {
	case "open":
		fmt.Fprintf(&b, "open loop at %s msgs/s", thousands(r.Rate))
		if r.Window > 0 {
			fmt.Fprintf(&b, " (window %d)", r.Window)
		}
	case "pipelined":
		fmt.Fprintf(&b, "pipelined, window %d", r.Window)
	default:
		b.WriteString("closed loop")
	}
	fmt.Fprintf(&b, ", %s, %d B bodies", plural(r.Producers, "producer"), r.Size)
	if r.Batch > 1 {
		fmt.Fprintf(&b, " in batches of %d", r.Batch)
		if r.Compression != "" && r.Compression != "none" {
			fmt.Fprintf(&b, " (%s)", r.Compression)
		}
	}
	if r.Compressible {
		b.WriteString(", compressible")
	}
	if r.Consumers > 0 {
		fmt.Fprintf(&b, ", %s", plural(r.Consumers, "consumer"))
	}
	if r.Config.Count > 0 {
		fmt.Fprintf(&b, ", %d messages", r.Config.Count)
	} else {
		fmt.Fprintf(&b, ", %s", r.Config.Duration)
	}
	fmt.Fprintf(&b, " after %s warmup", time.Duration(r.WarmupS*float64(time.Second)))
	return b.String()
}

// WriteTable writes one result as a table, people's form of --json.
func WriteTable(w io.Writer, r *Result) {
	fmt.Fprintln(w, r.Describe())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	latency := "latency per send"
	if r.Batch > 1 {
		latency = "latency per batch"
	}
	if r.Mode == "open" {
		latency += ", from when it was due"
	}
	fmt.Fprintf(tw, "msgs/s\tMB/s\tp50\tp90\tp99\tp99.9\tmax\terrors\t\n")
	fmt.Fprintf(tw, "%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t%d\t\n", thousands(r.MsgsPerSec), r.MBPerSec,
		FormatUs(r.P50us), FormatUs(r.P90us), FormatUs(r.P99us), FormatUs(r.P999us), FormatUs(r.MaxUs), r.Errors)
	tw.Flush()
	fmt.Fprintf(w, "(%d messages in %.3fs; %s)\n", r.Count, r.DurationS, latency)
	if r.OpenLoop != nil {
		fmt.Fprintf(w, "open loop: the generator woke late by p50 %s, p99 %s, max %s; %d sends were already due when their producer got to them\n",
			FormatUs(r.SendLagP50us), FormatUs(r.SendLagP99us), FormatUs(r.SendLagMaxUs), r.BehindSchedule)
	}
	if e := r.E2E; e != nil {
		fmt.Fprintf(w, "publish to consume (%s, one group): p50 %s, p90 %s, p99 %s, p99.9 %s, max %s; %d consumed, %d missing\n",
			plural(r.Consumers, "consumer"), FormatUs(e.E2EP50us), FormatUs(e.E2EP90us), FormatUs(e.E2EP99us), FormatUs(e.E2EP999us), FormatUs(e.E2EMaxUs),
			e.E2ECount, e.E2EMissing)
	}
	writeNotes(w, r)
}

func writeNotes(w io.Writer, r *Result) {
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error (%s): %s\n", r.Label, r.FirstError)
	}
	if r.Interrupted {
		fmt.Fprintf(w, "interrupted (%s): the figures cover the part that ran\n", r.Label)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note (%s): %s\n", r.Label, n)
	}
}

// WriteComparison writes one row per system and each row's ratios to
// the baseline row (baseline < 0: none).
func WriteComparison(w io.Writer, rs []*Result, baseline int) {
	if len(rs) == 0 {
		return
	}
	fmt.Fprintln(w, rs[0].Workload())
	if baseline >= 0 && baseline < len(rs) {
		fmt.Fprintf(w, "base: %s (the ÷ base columns divide each row's figure by its)\n", rs[baseline].Label)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "system\tdurability\tmsgs/s\tp50\tp99\tp99.9\terrors\tmsgs/s ÷ base\tp50 ÷ base\tp99 ÷ base\n")
	for _, r := range rs {
		ratios := ""
		if baseline >= 0 && baseline < len(rs) {
			b := rs[baseline]
			ratios = fmt.Sprintf("%s\t%s\t%s", ratio(r.MsgsPerSec, b.MsgsPerSec), ratio(float64(r.P50us), float64(b.P50us)),
				ratio(float64(r.P99us), float64(b.P99us)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Label, r.Durability, thousands(r.MsgsPerSec),
			FormatUs(r.P50us), FormatUs(r.P99us), FormatUs(r.P999us), r.Errors, ratios)
	}
	tw.Flush()
	if baseline >= 0 && baseline < len(rs) {
		b := rs[baseline]
		fmt.Fprintln(w)
		for _, r := range rs {
			if r.System != "nats" {
				continue
			}
			fmt.Fprintf(w, "%s ÷ %s: msgs/s %s, p50 %s, p99 %s\n", b.Label, r.Label,
				ratio(b.MsgsPerSec, r.MsgsPerSec), ratio(float64(b.P50us), float64(r.P50us)), ratio(float64(b.P99us), float64(r.P99us)))
		}
	}
	var e2e bool
	for _, r := range rs {
		e2e = e2e || r.E2E != nil
	}
	if e2e {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "publish to consume\tp50\tp99\tp99.9\tmax\tconsumed\tmissing\n")
		for _, r := range rs {
			if e := r.E2E; e != nil {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", r.Label, FormatUs(e.E2EP50us), FormatUs(e.E2EP99us),
					FormatUs(e.E2EP999us), FormatUs(e.E2EMaxUs), e.E2ECount, e.E2EMissing)
			}
		}
		tw.Flush()
	}
	for _, r := range rs {
		writeNotes(w, r)
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// FormatUs formats microseconds for people: µs, ms or s.
func FormatUs(us int64) string {
	switch {
	case us < 1000:
		return fmt.Sprintf("%dµs", us)
	case us < 1_000_000:
		return fmt.Sprintf("%.2fms", float64(us)/1e3)
	}
	return fmt.Sprintf("%.2fs", float64(us)/1e6)
}

// thousands formats a rate with thousands separators, no decimals.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
