package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// dlqCmd looks at consumer groups' dead letters and sends them back.
func dlqCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Dead letters: messages a consumer group gave up on (list, show, replay)",
		Long: `A consumer whose handler fails on a message sets it aside and has it
redelivered later, with growing pauses; after the maximum redeliveries (16 by
default) the message goes to its group's dead-letter topic, __dlq.<group>, with
headers saying where it came from, how many deliveries failed and the last
error. These commands list the groups that have dead letters, show them, and
replay them: send each back to the topic it came from, where the group consumes
it again.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("a dlq command is required: list, show or replay")
		},
	}
	cmd.AddCommand(dlqListCmd(g), dlqShowCmd(g), dlqReplayCmd(g))
	return cmd
}

// replayGroup is the consumer group whose committed offsets say how far
// `dlq replay` got in group's dead letters. Named after group, so that a
// principal allowed group's name pattern (groups = ["billing*"]) may use it.
func replayGroup(group string) string { return group + ".dlq-replay" }

type dlqJSON struct {
	Group    string `json:"group"`
	Stored   uint64 `json:"stored"`   // dead letters stored (not yet removed by retention)
	Replayed uint64 `json:"replayed"` // of those, sent back by dlq replay
}

func dlqListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the consumer groups with dead letters, as the broker asked stores them",
		Long: `dlq list shows, for each consumer group with a dead-letter topic on the broker
asked (its broker group), the dead letters stored and how many of them dlq
replay has sent back.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := fetchAllTopics(cmd, g)
			if err != nil {
				return err
			}
			list := deadLetters(st)
			if asJSON {
				return printJSON(cmd, list)
			}
			tw := newTable(cmd, "GROUP", "DEAD LETTERS", "REPLAYED", "WAITING")
			for _, d := range list {
				tw.row(d.Group, d.Stored, d.Replayed, d.Stored-min(d.Replayed, d.Stored))
			}
			return tw.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print [{"group": G, "stored": N, "replayed": M}, ...] as JSON`)
	return cmd
}

// deadLetters counts each group's dead letters in a broker's status.
func deadLetters(st *sdk.Status) []dlqJSON {
	by := map[string]*dlqJSON{}
	for _, t := range st.Topics {
		if !strings.HasPrefix(t.Name, wire.DeadLetterTopicPrefix) {
			continue
		}
		group := strings.TrimPrefix(t.Name, wire.DeadLetterTopicPrefix)
		d := &dlqJSON{Group: group}
		for _, q := range t.Queues {
			d.Stored += q.Max - q.Min
		}
		by[group] = d
	}
	// Replayed: what the replay group committed past each queue's start.
	mins := map[wire.QueueRef]uint64{}
	for _, t := range st.Topics {
		for _, q := range t.Queues {
			mins[wire.QueueRef{Topic: t.Name, Queue: q.Queue}] = q.Min
		}
	}
	for _, gs := range st.Groups {
		for _, o := range gs.Offsets {
			group, ok := strings.CutPrefix(o.Topic, wire.DeadLetterTopicPrefix)
			if d := by[group]; ok && d != nil && gs.Name == replayGroup(group) {
				if lo := mins[wire.QueueRef{Topic: o.Topic, Queue: o.Queue}]; o.Committed > lo {
					d.Replayed += o.Committed - lo
				}
			}
		}
	}
	out := make([]dlqJSON, 0, len(by))
	for _, d := range by {
		out = append(out, *d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Group < out[j].Group })
	return out
}

// deadLetter is one dead letter as show prints it.
type deadLetter struct {
	Offset       uint64            `json:"offset"` // in the dead-letter topic's queue
	Queue        uint32            `json:"queue"`
	Stored       string            `json:"stored"`
	OriginTopic  string            `json:"origin_topic"`
	OriginGroup  string            `json:"origin_broker_group"`
	OriginQueue  string            `json:"origin_queue"`
	OriginOffset string            `json:"origin_offset"`
	Attempts     string            `json:"attempts"`
	Error        string            `json:"error"`
	Key          string            `json:"key,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	Headers      map[string]string `json:"headers,omitempty"`
	Body         string            `json:"body"`
}

func describe(m *sdk.Message) deadLetter {
	d := deadLetter{Offset: m.Offset, Queue: m.Queue, Stored: m.StoreTime.UTC().Format(time.RFC3339Nano),
		Key: printable(m.Key), Tags: printable(m.Tags), Body: printable(m.Body)}
	for _, h := range m.Headers {
		v := printable(h.Value)
		switch h.Key {
		case sdk.HeaderOriginTopic:
			d.OriginTopic = v
		case sdk.HeaderOriginGroup:
			d.OriginGroup = v
		case sdk.HeaderOriginQueue:
			d.OriginQueue = v
		case sdk.HeaderOriginOffset:
			d.OriginOffset = v
		case sdk.HeaderAttempts:
			d.Attempts = v
		case sdk.HeaderError:
			d.Error = v
		default:
			if d.Headers == nil {
				d.Headers = map[string]string{}
			}
			d.Headers[h.Key] = v
		}
	}
	return d
}

// printable is b as text, or quoted when it is not valid UTF-8.
func printable(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strconv.Quote(string(b))
}

// readDeadLetters reads group's dead letters as consumer group reader (from
// its last commit, or the start), calling fn for each batch, until count
// were read (0: all), nothing came for idle, or ctx ends. fn's error stops
// it. commit: fn's batches are committed once fn returns.
func readDeadLetters(ctx context.Context, cmd *cobra.Command, g *globals, group, reader string, count int, idle time.Duration, commit bool,
	fn func(ctx context.Context, cl *sdk.Client, msgs []*sdk.Message) error) (int, error) {
	cl, err := g.client(cmd)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	c, err := cl.NewConsumer(reader, []string{wire.DeadLetterTopic(group)}, sdk.WithoutRedelivery(), sdk.WithManualCommit(),
		sdk.WithStartFrom(sdk.Earliest))
	if err != nil {
		return 0, err
	}
	done := 0
	for count == 0 || done < count {
		pctx, cancel := context.WithTimeout(ctx, idle)
		msgs, err := c.Poll(pctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				break // idle: every dead letter was read
			}
			c.Close()
			if ctx.Err() != nil {
				return done, nil
			}
			return done, err
		}
		if count > 0 && len(msgs) > count-done {
			msgs = msgs[:count-done]
		}
		if err := fn(ctx, cl, msgs); err != nil {
			c.Close()
			return done, err
		}
		done += len(msgs)
		if commit {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
			err = c.Commit(cctx, msgs...)
			cancel()
			if err != nil {
				c.Close()
				return done, fmt.Errorf("committing the replay (the last %d may be replayed again): %w", len(msgs), err)
			}
		}
	}
	return done, c.Close()
}

func dlqShowCmd(g *globals) *cobra.Command {
	var (
		group  string
		count  int
		idle   time.Duration
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "show --group G [--count N] [--json]",
		Short: "Print a consumer group's dead letters: where each came from, its tries, its last error",
		Long: `dlq show prints the dead letters of consumer group --group, oldest first, with
where each came from, how many deliveries failed, the last error, and the
message itself. It stops after --count messages, or once none came for --idle.
It reads as a consumer group of its own that never commits, <group>.dlq-show-<random>:
with an ACL, the principal needs the groups right on both names.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := dlqFlags(group, count, idle); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var rnd [4]byte
			rand.Read(rnd[:])
			reader := fmt.Sprintf("%s.dlq-show-%x", group, rnd)
			if err := wire.ValidName("group", reader); err != nil {
				return usagef("--group %q: %v", group, err)
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			_, err := readDeadLetters(ctx, cmd, g, group, reader, count, idle, false, func(_ context.Context, _ *sdk.Client, msgs []*sdk.Message) error {
				for _, m := range msgs {
					d := describe(m)
					if asJSON {
						if err := enc.Encode(d); err != nil {
							return err
						}
						continue
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%d/%d stored %s: from %s/%s offset %s (broker group %s), %s deliveries failed, last error: %s\n  key %q tags %q body %s\n",
						d.Queue, d.Offset, d.Stored, d.OriginTopic, d.OriginQueue, d.OriginOffset, d.OriginGroup, d.Attempts, d.Error, d.Key, d.Tags, d.Body)
				}
				return nil
			})
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&group, "group", "", "consumer group (required)")
	f.IntVar(&count, "count", 0, "print at most this many (default: all)")
	f.DurationVar(&idle, "idle", 2*time.Second, "stop once no dead letter came for this long")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per dead letter")
	return cmd
}

func dlqReplayCmd(g *globals) *cobra.Command {
	var (
		group string
		count int
		idle  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "replay --group G [--count N]",
		Short: "Send a consumer group's dead letters back to the topics they came from",
		Long: `dlq replay sends each dead letter of consumer group --group back to the topic it
came from (key, tags, headers and body as they were; the dead-letter headers
dropped), oldest first, where the group consumes it again as a new message.
Its progress is the committed offset of consumer group <group>.dlq-replay: a
second replay goes on from where the first stopped (a message sent just
before an interruption may be sent twice). It stops after --count messages,
or once none came for --idle, and prints how many it replayed. With an ACL,
the principal needs the groups right on both group names and the produce
right on the topics the dead letters came from.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := dlqFlags(group, count, idle); err != nil {
				return err
			}
			if err := wire.ValidName("group", replayGroup(group)); err != nil {
				return usagef("--group %q: %v", group, err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var p *sdk.Producer
			n, err := readDeadLetters(ctx, cmd, g, group, replayGroup(group), count, idle, true, func(ctx context.Context, cl *sdk.Client, msgs []*sdk.Message) error {
				if p == nil {
					var err error
					if p, err = cl.NewProducer(sdk.WithSendTimeout(g.timeout)); err != nil {
						return err
					}
				}
				for _, m := range msgs {
					d := describe(m)
					if d.OriginTopic == "" {
						return fmt.Errorf("dead letter %d/%d has no %s header: not written by a consumer", m.Queue, m.Offset, sdk.HeaderOriginTopic)
					}
					var hs []sdk.Header
					for _, h := range m.Headers {
						if !strings.HasPrefix(h.Key, "quiver-") {
							hs = append(hs, h)
						}
					}
					if _, err := p.Send(ctx, &sdk.Message{Topic: d.OriginTopic, Key: m.Key, Tags: m.Tags, Headers: hs, Body: m.Body}); err != nil {
						return fmt.Errorf("replaying dead letter %d/%d to %s: %w", m.Queue, m.Offset, d.OriginTopic, err)
					}
				}
				return nil
			})
			if p != nil {
				p.Close()
			}
			fmt.Fprintf(cmd.OutOrStdout(), "replayed %d dead letter(s) of group %s\n", n, group)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&group, "group", "", "consumer group (required)")
	f.IntVar(&count, "count", 0, "replay at most this many (default: all)")
	f.DurationVar(&idle, "idle", 2*time.Second, "stop once no dead letter came for this long")
	return cmd
}

func dlqFlags(group string, count int, idle time.Duration) error {
	switch {
	case group == "":
		return usagef("--group is required")
	case wire.ValidName("group", group) != nil:
		return usagef("--group: %v", wire.ValidName("group", group))
	case count < 0:
		return usagef("--count %d: must not be negative", count)
	case idle <= 0:
		return usagef("--idle %v: must be positive", idle)
	}
	return nil
}
