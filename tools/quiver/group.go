package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

func groupCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "group",
		Short: "Consumer groups: list, describe, reset offsets",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("a group command is required: list, describe or reset")
		},
	}
	cmd.AddCommand(groupListCmd(g), groupDescribeCmd(g), groupResetCmd(g))
	return cmd
}

type groupJSON struct {
	Name    string   `json:"name"`
	Members int      `json:"members"`
	Topics  []string `json:"topics"`
	Lag     uint64   `json:"lag"`
}

func groupListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the consumer groups the broker asked coordinates, with members, topics and lag",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := fetchStatus(cmd, g)
			if err != nil {
				return err
			}
			var list []groupJSON
			for _, gs := range st.Groups {
				gj := groupJSON{Name: gs.Name, Members: len(gs.Members), Topics: []string{}}
				seen := map[string]bool{}
				for _, m := range gs.Members {
					for _, t := range m.Topics {
						seen[t] = true
					}
				}
				for _, o := range gs.Offsets {
					seen[o.Topic] = true
					gj.Lag += o.Lag
				}
				for t := range seen {
					gj.Topics = append(gj.Topics, t)
				}
				sort.Strings(gj.Topics)
				list = append(list, gj)
			}
			sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
			if asJSON {
				return printJSON(cmd, list)
			}
			tw := newTable(cmd, "GROUP", "MEMBERS", "LAG", "TOPICS")
			for _, gj := range list {
				tw.row(gj.Name, gj.Members, gj.Lag, strings.Join(gj.Topics, ","))
			}
			return tw.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the groups as JSON")
	return cmd
}

type queueJSON struct {
	Topic       string `json:"topic"`
	BrokerGroup string `json:"broker_group"`
	Queue       uint32 `json:"queue"`
	Committed   int64  `json:"committed"` // -1: none
	Min         uint64 `json:"min"`
	Max         uint64 `json:"max"`
	Lag         uint64 `json:"lag"`
}

type describeJSON struct {
	Group   string      `json:"group"`
	Members int         `json:"members"` // live, over the broker groups asked
	Queues  []queueJSON `json:"queues"`
}

func groupDescribeCmd(g *globals) *cobra.Command {
	var (
		group  string
		topics []string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "describe --group G [--topic T]...",
		Short: "Show a consumer group's committed offset and lag in every queue of its topics",
		Long: `group describe shows, for every queue of the topics (--topic, repeatable; by
default those the group's members subscribe to or it committed in, as the
broker asked knows them) in every broker group that hosts them: the group's
committed offset ("-": none), the queue's readable offsets and the lag.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := wire.ValidName("group", group); err != nil {
				return usagef("--group: %v", err)
			}
			cl, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cl.Close()
			if len(topics) == 0 {
				err := g.admin(cmd.Context(), cl, func(ctx context.Context, a *sdk.Admin) error {
					st, err := a.Status(ctx)
					if err != nil {
						return err
					}
					topics = groupTopics(st, group)
					return nil
				})
				if err != nil {
					return err
				}
				if len(topics) == 0 {
					return fmt.Errorf("group %s has no members and no committed offsets on the broker asked: name its topics with --topic", group)
				}
			}
			out := describeJSON{Group: group, Queues: []queueJSON{}}
			for _, t := range topics {
				err := g.admin(cmd.Context(), cl, func(ctx context.Context, a *sdk.Admin) error {
					offs, err := a.Offsets(ctx, group, t, time.Time{})
					out.Members = max(out.Members, offs.Members)
					out.Queues = append(out.Queues, queuesJSON(t, offs)...)
					return err
				})
				if err != nil {
					return err
				}
			}
			if asJSON {
				return printJSON(cmd, out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "group %s: %d live member(s)\n", group, out.Members)
			return printQueues(cmd, out.Queues)
		},
	}
	f := cmd.Flags()
	f.StringVar(&group, "group", "", "consumer group (required)")
	f.StringSliceVar(&topics, "topic", nil, "topic (repeatable; default: the group's, as the broker asked knows them)")
	f.BoolVar(&asJSON, "json", false, "print the description as JSON")
	return cmd
}

// groupTopics are the topics a group's members subscribe to or it
// committed in, in a broker's status (its redelivery topic left out).
func groupTopics(st *sdk.Status, group string) []string {
	seen := map[string]bool{}
	for _, gs := range st.Groups {
		if gs.Name != group {
			continue
		}
		for _, m := range gs.Members {
			for _, t := range m.Topics {
				seen[t] = true
			}
		}
		for _, o := range gs.Offsets {
			seen[o.Topic] = true
		}
	}
	delete(seen, wire.RetryTopic(group))
	var out []string
	for t := range seen {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

func queuesJSON(topic string, offs sdk.GroupOffsets) []queueJSON {
	var out []queueJSON
	for _, q := range offs.Queues {
		out = append(out, queueJSON{Topic: topic, BrokerGroup: q.Group, Queue: q.Queue, Committed: q.Committed, Min: q.Min, Max: q.Max, Lag: q.Lag()})
	}
	return out
}

func printQueues(cmd *cobra.Command, qs []queueJSON) error {
	tw := newTable(cmd, "TOPIC", "BROKER GROUP", "QUEUE", "COMMITTED", "MIN", "MAX", "LAG")
	for _, q := range qs {
		committed := "-"
		if q.Committed != sdk.NoOffset {
			committed = strconv.FormatInt(q.Committed, 10)
		}
		tw.row(q.Topic, q.BrokerGroup, q.Queue, committed, q.Min, q.Max, q.Lag)
	}
	return tw.flush()
}

func groupResetCmd(g *globals) *cobra.Command {
	var (
		group, topic, to string
		asJSON, force    bool
	)
	cmd := &cobra.Command{
		Use:   "reset --group G --topic T --to earliest|latest|TIME|OFFSET [--force]",
		Short: "Move a consumer group's committed offsets in every queue of a topic",
		Long: `group reset sets the committed offset of consumer group --group in every queue of
--topic, in every broker group that hosts it: to each queue's oldest stored
message (earliest), its end (latest: only messages stored from now on), the
first message stored at or after TIME (RFC 3339, e.g. 2026-12-01T09:30:00Z, or
a duration ago, e.g. -15m), or OFFSET in every queue (within its bounds). The
group's consumers read from there when they next start. It is refused while
the group has live members (they read from the positions they hold and would
commit over it), unless --force: then the brokers take the topic's queues back
from the live members and hand them out again, read from the new offsets
(what a member was handling then is delivered again). It prints the new
committed offsets.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := wire.ValidName("group", group); err != nil {
				return usagef("--group: %v", err)
			}
			if err := requireTopic(topic); err != nil {
				return err
			}
			target, err := parseResetTo(to, time.Now())
			if err != nil {
				return err
			}
			target.Force = force
			var offs sdk.GroupOffsets
			err = g.withAdmin(cmd, func(ctx context.Context, a *sdk.Admin) (err error) {
				offs, err = a.ResetOffsets(ctx, group, topic, target)
				return err
			})
			if err != nil {
				return err
			}
			qs := queuesJSON(topic, offs)
			if asJSON {
				return printJSON(cmd, describeJSON{Group: group, Queues: qs})
			}
			return printQueues(cmd, qs)
		},
	}
	f := cmd.Flags()
	f.StringVar(&group, "group", "", "consumer group (required)")
	f.StringVar(&topic, "topic", "", "topic (required)")
	f.StringVar(&to, "to", "", "earliest, latest, a time (RFC 3339, or -DURATION ago) or an offset (required)")
	f.BoolVar(&asJSON, "json", false, "print the new offsets as JSON")
	f.BoolVar(&force, "force", false, "reset even while the group has live members (they are moved to the new offsets)")
	return cmd
}

// parseResetTo reads --to.
func parseResetTo(s string, now time.Time) (sdk.ResetTo, error) {
	switch s {
	case "":
		return sdk.ResetTo{}, usagef("--to is required: earliest, latest, a time or an offset")
	case "earliest":
		return sdk.ResetTo{Earliest: true}, nil
	case "latest":
		return sdk.ResetTo{Latest: true}, nil
	}
	if t, ok := parseTime(s, now); ok {
		return sdk.ResetTo{Time: t}, nil
	}
	if n, err := strconv.ParseUint(s, 10, 63); err == nil {
		return sdk.ResetTo{Offset: &n}, nil
	}
	return sdk.ResetTo{}, usagef("--to %q: want earliest, latest, a time (RFC 3339 or -DURATION) or an offset", s)
}

// parseTime reads an RFC 3339 time or a duration before now ("-15m").
func parseTime(s string, now time.Time) (time.Time, bool) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, true
	}
	if strings.HasPrefix(s, "-") {
		if d, err := time.ParseDuration(s[1:]); err == nil && d > 0 {
			return now.Add(-d), true
		}
	}
	return time.Time{}, false
}

func lookupCmd(g *globals) *cobra.Command {
	var (
		topic, key string
		maxN       int
		format     string
	)
	cmd := &cobra.Command{
		Use:   "lookup --topic T --key K [--max N]",
		Short: "Print a topic's messages with a key, newest first (the brokers' key indexes)",
		Long: `lookup finds the messages of --topic whose key is --key through the key index of
every broker group that hosts the topic (up to --max in each, newest first)
and prints each one (--format, as consume's).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireTopic(topic); err != nil {
				return err
			}
			if key == "" {
				return usagef("--key is required")
			}
			if maxN < 1 || maxN > 65535 {
				return usagef("--max %d: 1..65535", maxN)
			}
			f, err := parseFormat(format)
			if err != nil {
				return err
			}
			var msgs []*sdk.Message
			err = g.withAdmin(cmd, func(ctx context.Context, a *sdk.Admin) (err error) {
				msgs, err = a.Lookup(ctx, topic, []byte(key), maxN)
				return err
			})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for _, m := range msgs {
				if _, err := w.Write(f.format(nil, m)); err != nil {
					return err
				}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&topic, "topic", "", "topic (required)")
	fl.StringVar(&key, "key", "", "key (required)")
	fl.IntVar(&maxN, "max", 100, "at most this many per broker group")
	fl.StringVar(&format, "format", defaultLookupFormat, "how to print each message (see quiver consume --help)")
	return cmd
}

const defaultLookupFormat = `%g/%p@%o %T key=%k %s\n`
