package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/benchmarks/internal/bench"
	"github.com/quivermq/quiver/benchmarks/internal/natsjs"
	"github.com/quivermq/quiver/benchmarks/internal/quiver"
)

// system is one row of compare.
type system struct {
	name, label string
	nats        bool
	engine      string // Quiver: --engine
	durability  string // Quiver: sync or async
	syncAlways  bool   // NATS: sync_interval always
	tls         bool   // NATS: clients connect with TLS 1.3
}

// systems are compare's rows, in order; the first is the default baseline.
var systems = []system{
	{name: "quiver-sync-io_uring", label: "Quiver sync (io_uring)", engine: "io_uring", durability: "sync"},
	{name: "quiver-sync-portable", label: "Quiver sync (portable)", engine: "portable", durability: "sync"},
	{name: "quiver-async", label: "Quiver async", engine: "auto", durability: "async"},
	{name: "nats-default", label: "NATS JetStream (default)", nats: true},
	{name: "nats-default-tls", label: "NATS JetStream (default, TLS)", nats: true, tls: true},
	{name: "nats-sync-always", label: "NATS JetStream (sync always)", nats: true, syncAlways: true},
}

func systemNames() []string {
	var out []string
	for _, s := range systems {
		out = append(out, s.name)
	}
	return out
}

func compareCmd() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "compare",
		Short: "Run the same workload against Quiver and NATS JetStream, one after the other",
		Long: `compare runs one workload (the main command's flags) against each system in
turn, never two at once, each started here on loopback as a child process with
its own temporary data directory, and prints one table: a row per system with
its durability, and its ratios to the baseline row.

Systems (--systems, in this order):
  quiver-sync-io_uring   quiverd --engine io_uring, sync: acknowledged after fsync (group commit)
  quiver-sync-portable   quiverd --engine portable, sync
  quiver-async           quiverd --durability async: acknowledged after the write,
                         synced within --async-interval (100ms)
  nats-default           nats-server with JetStream, file store, default
                         sync_interval: the store is fsynced every 2 minutes
  nats-default-tls       nats-default, clients connecting with TLS 1.3 (as
                         Quiver's QUIC does) to a self-signed certificate
                         made for the run, verified
  nats-sync-always       nats-server with sync_interval: always: every write synced

nats-server (github.com/nats-io/nats-server/v2) is built into quiver-bench and
runs as "quiver-bench nats-server" in a child process. Quiver's clients use QUIC,
always with TLS 1.3; NATS clients plaintext TCP, except nats-default-tls's. NATS
producers publish to a stream with file storage and one replica: synchronous
ones call js.Publish (waits for the PubAck), pipelined ones PublishAsync with
the same window.
--json prints an array of the per-system objects; --plot draws one line per system.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(cmd); err != nil {
				return err
			}
			return runCompare(cmd, o)
		},
	}
	addWorkloadFlags(cmd, o)
	cmd.Flags().StringSliceVar(&o.systems, "systems", systemNames(), "systems to run, comma-separated: "+strings.Join(systemNames(), ", "))
	cmd.Flags().StringVar(&o.baseline, "baseline", systems[0].name, "the row the ratios compare to (if not run: the first Quiver row run)")
	return cmd
}

func runCompare(cmd *cobra.Command, o *options) error {
	var chosen []system
	for _, s := range systems {
		if slices.Contains(o.systems, s.name) {
			chosen = append(chosen, s)
		}
	}
	for _, n := range o.systems {
		if !slices.Contains(systemNames(), n) {
			return usagef("--systems: no system %q (there are %s)", n, strings.Join(systemNames(), ", "))
		}
	}
	if len(chosen) == 0 {
		return usagef("--systems: none chosen")
	}
	var (
		results []*bench.Result
		failed  []error
	)
	for _, s := range chosen {
		if err := cmd.Context().Err(); err != nil {
			failed = append(failed, fmt.Errorf("%s: not run: %w", s.name, err))
			continue
		}
		res, err := runSystem(cmd, o, s)
		if err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", s.name, err))
			fmt.Fprintf(cmd.ErrOrStderr(), "quiver-bench: %s failed: %v\n", s.name, err)
			continue
		}
		results = append(results, res)
	}
	baseline := -1
	for i, r := range results {
		if r.Name == o.baseline {
			baseline = i
		}
	}
	if baseline < 0 {
		baseline = slices.IndexFunc(results, func(r *bench.Result) bool { return r.System == "quiver" })
	}
	out := cmd.OutOrStdout()
	if o.json {
		if results == nil {
			results = []*bench.Result{}
		}
		if err := writeJSON(out, results); err != nil {
			return err
		}
	} else {
		bench.WriteComparison(out, results, baseline)
	}
	if o.plot != "" && len(results) > 0 {
		if err := bench.Plot(o.plot, results[0].Workload(), bench.SeriesOf(results)); err != nil {
			failed = append(failed, err)
		}
	}
	if slices.ContainsFunc(results, func(r *bench.Result) bool { return r.Interrupted }) {
		failed = append(failed, errors.New("interrupted"))
	}
	return errors.Join(failed...)
}

// runSystem starts one system, runs the workload, and stops it.
func runSystem(cmd *cobra.Command, o *options, s system) (*bench.Result, error) {
	ctx := cmd.Context()
	var (
		t   target
		err error
	)
	label := s.label
	if s.nats {
		no, nerr := o.natsOptions(s.syncAlways, s.tls)
		if nerr != nil {
			return nil, nerr
		}
		var nt *natsjs.Target
		nt, err = natsjs.Open(ctx, no)
		if nt != nil {
			t = nt
		}
	} else {
		qo := o.quiverOptions(s.engine, s.durability)
		var qt *quiver.Target
		qt, err = quiver.Open(ctx, qo)
		if qt != nil {
			t = qt
			if s.engine == "auto" {
				label = "" // named by the engine the broker chose
			}
		}
	}
	if err != nil {
		return nil, err
	}
	res, err := measure(ctx, cmd, o, t, s.name, label)
	closeErr := t.Close()
	if err != nil {
		return nil, err
	}
	if closeErr != nil {
		res.Notes = append(res.Notes, "stopping it: "+closeErr.Error())
	}
	return res, nil
}

// plotCmd draws results saved with --json.
func plotCmd() *cobra.Command {
	var out, title string
	cmd := &cobra.Command{
		Use:   "plot --out FILE.svg RESULT.json...",
		Short: "Draw latency by percentile from results saved with --json",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usagef("--out is required")
			}
			var all []*bench.Result
			for _, file := range args {
				rs, err := readResults(file)
				if err != nil {
					return err
				}
				all = append(all, rs...)
			}
			return bench.Plot(out, title, bench.SeriesOf(all))
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "the plot (.png or .svg)")
	cmd.Flags().StringVar(&title, "title", "Latency by percentile", "the plot's title")
	return cmd
}

// readResults reads a file of quiver-bench --json: one object or an array.
func readResults(file string) ([]*bench.Result, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var rs []*bench.Result
	if err := json.Unmarshal(data, &rs); err != nil {
		var r bench.Result
		if err2 := json.Unmarshal(data, &r); err2 != nil {
			return nil, fmt.Errorf("%s: neither a result nor an array of them: %v", file, err)
		}
		rs = []*bench.Result{&r}
	}
	for _, r := range rs {
		if err := r.Histograms(); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
	}
	return rs, nil
}
