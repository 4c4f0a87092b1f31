package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

func topicCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "topic",
		Short: "Create, list, inspect and delete topics",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("topic needs a command: create, list, status or delete")
		},
	}
	cmd.AddCommand(topicCreateCmd(g), topicListCmd(g), topicStatusCmd(g), topicDeleteCmd(g))
	return cmd
}

// topicJSON is a topic as topic create and topic list print it with --json.
type topicJSON struct {
	Name   string `json:"name"`
	Queues uint32 `json:"queues"`
}

func topicCreateCmd(g *globals) *cobra.Command {
	var queues int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create T [--queues N]",
		Short: "Create a topic (creating one that exists with the same queues succeeds)",
		Args:  exactArgs(1, "the topic name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if queues < 1 || queues > wire.MaxQueues {
				return usagef("--queues %d: want 1..%d", queues, wire.MaxQueues)
			}
			err := g.withAdmin(cmd, func(ctx context.Context, a *sdk.Admin) error {
				return a.CreateTopic(ctx, args[0], queues)
			})
			if err != nil {
				return err
			}
			t := topicJSON{Name: args[0], Queues: uint32(queues)}
			if asJSON {
				return printJSON(cmd, t)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "topic %s: %d queues\n", t.Name, t.Queues)
			return nil
		},
	}
	cmd.Flags().IntVar(&queues, "queues", 4, "number of queues")
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"name": T, "queues": N} as JSON`)
	return cmd
}

func topicDeleteCmd(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "delete T --yes",
		Short: "Delete a topic: its messages, queue files and consumer groups' offsets (needs --yes)",
		Long: `topic delete removes a topic on every broker group: its messages are no
longer readable and its consume-queue files are removed at once (the log's
records go with retention), the consumer groups' committed offsets of it are
dropped, and its name is free for a new topic. It cannot be undone, so it
needs --yes. Reserved topics (__*) cannot be deleted.`,
		Args: exactArgs(1, "the topic name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				return usagef("deleting topic %s cannot be undone: add --yes", args[0])
			}
			err := g.withAdmin(cmd, func(ctx context.Context, a *sdk.Admin) error {
				return a.DeleteTopic(ctx, args[0])
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "topic %s deleted\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "delete it (it cannot be undone)")
	return cmd
}

func topicListCmd(g *globals) *cobra.Command {
	var asJSON bool
	var from string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the topics and their numbers of queues",
		Long: `List the topics and their numbers of queues, by name: the first --limit
(default 1000; 0 for all) from --from on. With more, it says how many and
where the next page starts.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return usagef("--limit must be 0 (all) or more")
			}
			var topics []sdk.TopicInfo
			err := g.withAdmin(cmd, func(ctx context.Context, a *sdk.Admin) (err error) {
				topics, err = a.Topics(ctx)
				return err
			})
			if err != nil {
				return err
			}
			list := make([]topicJSON, 0, len(topics))
			for _, t := range topics {
				if t.Name >= from {
					list = append(list, topicJSON{Name: t.Name, Queues: t.Queues})
				}
			}
			sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
			var more []topicJSON
			if limit > 0 && len(list) > limit {
				list, more = list[:limit], list[limit:]
			}
			if asJSON {
				return printJSON(cmd, list)
			}
			tw := newTable(cmd, "TOPIC", "QUEUES")
			for _, t := range list {
				tw.row(t.Name, t.Queues)
			}
			if err := tw.flush(); err != nil {
				return err
			}
			if len(more) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "... and %d more topics (--from %s for the next page, --limit 0 for all)\n", len(more), more[0].Name)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print [{"name": T, "queues": N}, ...] as JSON (the page)`)
	cmd.Flags().StringVar(&from, "from", "", "list topics from this name on")
	cmd.Flags().IntVar(&limit, "limit", 1000, "list at most this many topics (0: all)")
	return cmd
}

func topicStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [T]",
		Short: "Show each queue's offsets and newest message, of one topic or all",
		Long: `topic status shows, per queue, the readable offsets [MIN, MAX) and when its
newest message was stored. With --json it prints the topic's status object
(sdk/wire.TopicStatus), or a list of them when no topic is named.`,
		Args: maxArgs(1, "at most one topic name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				st, err := fetchStatusOf(cmd, g, wire.StatusSel{Topic: args[0]})
				if err != nil {
					return err
				}
				if len(st.Topics) == 0 {
					return fmt.Errorf("topic %s does not exist", args[0])
				}
				if asJSON {
					return printJSON(cmd, st.Topics[0])
				}
				return printTopics(cmd, st.Topics)
			}
			st, err := fetchAllTopics(cmd, g)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, st.Topics)
			}
			return printTopics(cmd, st.Topics)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

// printTopics prints a table of every queue of topics.
func printTopics(cmd *cobra.Command, topics []wire.TopicStatus) error {
	tw := newTable(cmd, "TOPIC", "QUEUE", "MIN", "MAX", "LAST STORE", "AGE")
	for _, t := range topics {
		if len(t.Queues) == 0 {
			tw.row(t.Name, "-", "-", "-", "-", "-")
		}
		for _, q := range t.Queues {
			last, age := "-", "-"
			if q.LastStore != "" {
				last, age = q.LastStore, (time.Duration(q.LastStoreAgeMs) * time.Millisecond).String()
			}
			tw.row(t.Name, q.Queue, q.Min, q.Max, last, age)
		}
	}
	return tw.flush()
}

func fetchStatus(cmd *cobra.Command, g *globals) (*sdk.Status, error) {
	return fetchStatusOf(cmd, g, wire.StatusSel{})
}

func fetchStatusOf(cmd *cobra.Command, g *globals, sel wire.StatusSel) (*sdk.Status, error) {
	var st *sdk.Status
	err := g.withAdmin(cmd, func(ctx context.Context, a *sdk.Admin) (err error) {
		st, err = a.StatusOf(ctx, sel)
		return err
	})
	return st, err
}

// fetchAllTopics is the status document with every topic: the broker
// lists them a page at a time (wire.StatusSel).
func fetchAllTopics(cmd *cobra.Command, g *globals) (*sdk.Status, error) {
	st, err := fetchStatusOf(cmd, g, wire.StatusSel{Limit: wire.MaxStatusTopics})
	for err == nil && st.TopicsNext != "" {
		var more *sdk.Status
		more, err = fetchStatusOf(cmd, g, wire.StatusSel{From: st.TopicsNext, Limit: wire.MaxStatusTopics})
		if err == nil {
			st.Topics, st.TopicsNext = append(st.Topics, more.Topics...), more.TopicsNext
		}
	}
	return st, err
}

// exactArgs and maxArgs check positional arguments as usage errors.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %s, got %d argument(s)", cmd.CommandPath(), what, len(args))
		}
		return nil
	}
}

func maxArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > n {
			return usagef("%s takes %s, got %d arguments", cmd.CommandPath(), what, len(args))
		}
		return nil
	}
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		if cmd.HasSubCommands() {
			return usagef("unknown command %s for %s (see %s --help)", strconv.Quote(args[0]), cmd.CommandPath(), cmd.CommandPath())
		}
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}
