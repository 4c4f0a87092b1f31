package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

func statusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a broker's status: positions, lag, warnings, replication, topics, groups, connections",
		Long: `status shows the status document of one broker (the first that answers):
its log positions and how far durability and visibility lag behind writes,
warnings, the send queue, the disk's free space against its reserve, its replication (role, in-sync set, followers),
under a controller the controller quorum and the groups it runs, every
topic's queues, every consumer group's committed offsets and lag, and its
connections, failed handshakes included. With --json it prints the document
itself (sdk.Status, as /status serves it).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := fetchStatus(cmd, g)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, st)
			}
			return printStatus(cmd, st)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status document as JSON")
	return cmd
}

func printStatus(cmd *cobra.Command, st *sdk.Status) error {
	w := cmd.OutOrStdout()
	b, p, l := st.Broker, st.Positions, st.Lag
	kv := newTable(cmd)
	kv.row("broker", fmt.Sprintf("%s (version %s, up %v)", b.ID, b.Version, time.Duration(b.UptimeSec)*time.Second))
	kv.row("engine", b.Engine)
	kv.row("durability", b.Durability)
	kv.row("positions", fmt.Sprintf("start %d  written %d  durable %d  dispatched %d", p.Start, p.Written, p.Durable, p.Dispatched))
	kv.row("not durable", fmt.Sprintf("%d bytes, oldest %v", l.WrittenNotDurable, ms(l.NotDurableMs)))
	kv.row("not visible", fmt.Sprintf("%d bytes, oldest %v", l.WrittenNotVisible, ms(l.NotVisibleMs)))
	kv.row("send queue", fmt.Sprintf("depth %d  busy %d  max wait %v", st.SendQueue.Depth, st.SendQueue.BusyTotal, ms(st.SendQueue.MaxWaitMs)))
	disk := fmt.Sprintf("%s free of %s (+%s preallocated for the log), sends refused below %s",
		mib(st.Disk.FreeBytes), mib(st.Disk.TotalBytes), mib(st.Disk.LogRoomBytes), mib(st.Disk.ReserveBytes))
	if st.Disk.Full {
		disk = "FULL: " + disk
	}
	kv.row("disk", disk)
	if len(st.Warnings) == 0 {
		kv.row("warnings", "none")
	}
	for _, warn := range st.Warnings {
		kv.row("WARNING", warn)
	}
	if c := st.Connections; c != nil {
		kv.row("connections", fmt.Sprintf("open %d (GSO on %d)  sessions %d  accepted %d  failed handshakes from %d source(s)",
			c.Open, c.GSO, c.Sessions, c.AcceptedTotal, len(c.FailedHandshakes)))
	}
	if r := st.Replication; r != nil {
		kv.row("replication", fmt.Sprintf("%s, epoch %d led by %s, min-insync %d, %d follower(s) in sync",
			r.Role, r.Epoch, orDash(r.Leader), r.MinInsync, r.InSync))
		if r.Note != "" {
			kv.row("no writes", r.Note)
		}
		// Only a leader keeps an in-sync set.
		if r.Role == "leader" || len(r.ISR) > 0 || r.Proposal != "" {
			kv.row("in-sync set", fmt.Sprintf("%s (version %d)", orDash(strings.Join(r.ISR, ",")), r.ISRVersion))
		}
		if r.Proposal != "" {
			kv.row("proposed", r.Proposal)
		}
		if f := r.Following; f != nil {
			kv.row("following", fmt.Sprintf("%s  connected %v  durable %d  leader end %d  lag %d bytes  last heard %v ago  reconnects %d  truncations %d",
				f.LeaderAddr, f.Connected, f.Durable, f.LeaderEnd, f.LagBytes, ms(f.LastDataMs), f.Reconnects, f.Truncations))
			if f.LastClose != "" {
				kv.row("last close", fmt.Sprintf("by the %s, %v ago: %s", f.LastCloseBy, ms(f.LastCloseAgo), f.LastClose))
			}
		}
	}
	if err := kv.flush(); err != nil {
		return err
	}
	if r := st.Replication; r != nil && len(r.Followers) > 0 {
		fmt.Fprintln(w)
		tw := newTable(cmd, "FOLLOWER", "ADDR", "CONNECTED", "IN SYNC", "ACKED", "LAG BYTES", "LAG", "LAST ACK", "RECONNECTS", "LAST CLOSE")
		for _, f := range r.Followers {
			last := "-"
			if f.LastClose != "" {
				last = fmt.Sprintf("by the %s, %v ago: %s", f.LastCloseBy, ms(f.LastCloseAgo), f.LastClose)
			}
			lag := ms(f.LagMs).String()
			if f.LagMs < 0 {
				lag = "never caught up"
			}
			// A proposed change already counts for acknowledgements, so
			// it shows next to the committed state.
			inSync := fmt.Sprint(f.InSync)
			if f.Proposed {
				inSync += ", joining (proposed)"
			}
			if f.Leaving != "" {
				inSync += ", leaving (proposed): " + f.Leaving
			}
			tw.row(f.ID, f.Addr, f.Connected, inSync, f.Acked, f.LagBytes, lag, ms(f.LastAckMs).String()+" ago", f.Reconnects, last)
		}
		if err := tw.flush(); err != nil {
			return err
		}
	}
	if r := st.Replication; r != nil && r.Controller != nil {
		fmt.Fprintln(w)
		if err := printController(cmd, r.Controller); err != nil {
			return err
		}
	}

	if len(st.Cluster) > 0 {
		fmt.Fprintln(w)
		if err := brokerTable(cmd, "CLUSTER", st.Cluster); err != nil {
			return err
		}
	}

	fmt.Fprintln(w)
	if len(st.Topics) == 0 {
		fmt.Fprintln(w, "no topics")
	} else if err := printTopics(cmd, st.Topics); err != nil {
		return err
	}
	if n := st.TopicsTotal - len(st.Topics); n > 0 {
		fmt.Fprintf(w, "... and %d more topics (%d in all, %d queues): quiver topic status [T]\n", n, st.TopicsTotal, st.QueuesTotal)
	}

	fmt.Fprintln(w)
	if len(st.Groups) == 0 {
		fmt.Fprintln(w, "no consumer groups")
	} else {
		tw := newTable(cmd, "GROUP", "TOPIC", "QUEUE", "COMMITTED", "MAX", "LAG")
		for _, gr := range st.Groups {
			if len(gr.Offsets) == 0 {
				tw.row(gr.Name, "-", "-", "-", "-", "-")
			}
			for _, o := range gr.Offsets {
				tw.row(gr.Name, o.Topic, o.Queue, o.Committed, o.Max, o.Lag)
			}
		}
		if err := tw.flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
		tw = newTable(cmd, "GROUP", "GENERATION", "MEMBER", "QUEUES", "LAST SEEN")
		for _, gr := range st.Groups {
			if len(gr.Members) == 0 {
				tw.row(gr.Name, gr.Generation, "-", "-", "-")
			}
			for _, m := range gr.Members {
				qs := make([]string, 0, len(m.Queues))
				for _, q := range m.Queues {
					qs = append(qs, fmt.Sprintf("%s/%d", q.Topic, q.Queue))
				}
				tw.row(gr.Name, gr.Generation, m.ID, orDash(strings.Join(qs, ",")), ms(m.LastSeenMs).String()+" ago")
			}
		}
		if err := tw.flush(); err != nil {
			return err
		}
	}

	if c := st.Connections; c != nil && len(c.FailedHandshakes) > 0 {
		fmt.Fprintln(w)
		tw := newTable(cmd, "FAILED HANDSHAKES FROM", "CLIENT", "COUNT", "LAST MINUTE", "LAST", "LAST REASON")
		for _, f := range c.FailedHandshakes {
			tw.row(f.Source, orDash(f.ClientID), f.Count, f.PerMinute, orDash(f.Last), orDash(f.LastReason))
		}
		if err := tw.flush(); err != nil {
			return err
		}
	}
	if c := st.Connections; c != nil && len(c.Forbidden) > 0 {
		fmt.Fprintln(w)
		tw := newTable(cmd, "REFUSED (FORBIDDEN) PRINCIPAL", "RIGHT", "COUNT", "LAST", "LAST REASON")
		for _, f := range c.Forbidden {
			tw.row(f.Principal, f.Right, f.Count, orDash(f.Last), orDash(f.LastReason))
		}
		return tw.flush()
	}
	return nil
}

// printController prints the controller quorum as the broker knows it,
// then the groups it runs.
func printController(cmd *cobra.Command, c *wire.ControllerStatus) error {
	fmt.Fprintln(cmd.OutOrStdout(), "CONTROLLER")
	kv := newTable(cmd)
	kv.row("voters", orDash(strings.Join(c.Voters, ",")))
	if c.Leader == "" {
		kv.row("quorum", fmt.Sprintf("no leader (term %d)", c.Term))
	} else {
		kv.row("quorum", fmt.Sprintf("led by %s in term %d", c.Leader, c.Term))
	}
	session := "no session"
	if c.Connected {
		session = "connected"
	}
	lease := fmt.Sprintf("lease %v left", ms(c.LeaseMs))
	if c.LeaseMs < 0 {
		lease = fmt.Sprintf("LEASE LAPSED %v ago", ms(-c.LeaseMs))
	}
	kv.row("session", fmt.Sprintf("%s, %s, state version %d", session, lease, c.Version))
	if c.RaftState != "" {
		kv.row("raft", fmt.Sprintf("%s, last contact %s", c.RaftState, orDash(c.LastContact)))
	}
	if err := kv.flush(); err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout())
	return controllerGroups(cmd, c.Groups)
}

// controllerGroups prints the groups a controller runs: leader, in-sync
// set and members, why a group has no leader, and each group's last
// election. status and cluster share it.
func controllerGroups(cmd *cobra.Command, groups []wire.GroupControl) error {
	if len(groups) == 0 {
		fmt.Fprintln(cmd.OutOrStdout(), "the controller runs no groups yet")
		return nil
	}
	t := newTable(cmd, "GROUP", "LEADER", "EPOCH", "IN SYNC", "MEMBERS")
	var waiting []string
	for _, gr := range groups {
		leader := orDash(gr.Leader)
		if gr.LeaderAddr != "" {
			leader += " at " + gr.LeaderAddr
		}
		members := make([]string, 0, len(gr.Members))
		for _, m := range gr.Members {
			s := m.ID + " live"
			if !m.Live {
				s = m.ID + " not live"
			}
			switch {
			case m.InSync:
			case m.Left != "":
				s += fmt.Sprintf(" (left the set %v ago: %s)", ms(m.LeftAgoMs), m.Left)
			default:
				s += " (not in the set)"
			}
			members = append(members, s)
		}
		isr := fmt.Sprintf("%s (version %d)", orDash(strings.Join(gr.ISR, ",")), gr.ISRVersion)
		if len(gr.Eligible) > 0 {
			isr += "; eligible " + strings.Join(gr.Eligible, ",")
		}
		t.row(gr.Name, leader, gr.Epoch, isr, orDash(strings.Join(members, ", ")))
		if gr.Waiting != "" {
			waiting = append(waiting, gr.Name+": "+gr.Waiting)
		}
	}
	if err := t.flush(); err != nil {
		return err
	}
	for _, wt := range waiting {
		fmt.Fprintln(cmd.OutOrStdout(), "WAITING", wt)
	}

	elected := false
	for _, gr := range groups {
		elected = elected || len(gr.Elections) > 0
	}
	if !elected {
		return nil
	}
	fmt.Fprintln(cmd.OutOrStdout())
	t = newTable(cmd, "GROUP", "LAST ELECTION", "FROM -> TO", "REASON", "LEADERLESS", "AT")
	for _, gr := range groups {
		if len(gr.Elections) == 0 {
			continue
		}
		e := gr.Elections[len(gr.Elections)-1]
		to := fmt.Sprintf("%s -> %s", orDash(e.From), e.To)
		if e.Unclean {
			to += " UNCLEAN"
		}
		leaderless := "-" // none measured (a first election)
		if e.LeaderlessMs > 0 {
			leaderless = ms(e.LeaderlessMs).String()
		}
		t.row(gr.Name, fmt.Sprintf("epoch %d", e.Epoch), to, orDash(e.Reason), leaderless, orDash(e.At))
	}
	return t.flush()
}

func ms(n int64) time.Duration { return time.Duration(n) * time.Millisecond }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// table is a text/tabwriter table on the command's stdout.
type table struct{ tw *tabwriter.Writer }

// newTable starts a table; with no header it is a two-column key/value list.
func newTable(cmd *cobra.Command, header ...string) table {
	t := table{tw: tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)}
	if len(header) > 0 {
		fmt.Fprintln(t.tw, strings.Join(header, "\t"))
	}
	return t
}

func (t table) row(cells ...any) {
	for i, c := range cells {
		if i > 0 {
			io.WriteString(t.tw, "\t")
		}
		fmt.Fprint(t.tw, c)
	}
	io.WriteString(t.tw, "\n")
}

func (t table) flush() error { return t.tw.Flush() }

func printJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// mib formats a byte count in MiB (GiB from 10 GiB on).
func mib(n int64) string {
	if n >= 10<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
