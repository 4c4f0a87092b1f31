package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

func consumeCmd(g *globals) *cobra.Command {
	var (
		topic, group, from, format string
		tags                       string
		count                      int
	)
	cmd := &cobra.Command{
		Use:   "consume --topic T --group G [--count N] [--from earliest|latest|TIME] [--format F]",
		Short: "Print a topic's messages, one body per line, as a member of a consumer group",
		Long: `consume joins consumer group --group on --topic and prints each message's body
followed by a newline (--format changes that). A message is committed only once
it was written to stdout. With --count it exits after exactly N messages;
otherwise it runs until interrupted (SIGINT or SIGTERM), then commits everything
it printed, leaves the group and exits 0. A group that has not committed an
offset in a queue starts there from the oldest stored message (--from earliest,
the default), from the messages stored after it joined (--from latest), or from
the first message stored at or after a time (RFC 3339, e.g.
2026-12-01T09:30:00Z, or a duration ago, e.g. -15m). To move a group that did
commit, see quiver group reset.

--format, in kcat's -f convention: ` + formatHelp + `;
\n, \t and \\ are escapes (default "%s\n").`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireTopic(topic); err != nil {
				return err
			}
			if group == "" {
				return usagef("--group is required")
			}
			if len(group) > wire.MaxGroupLen {
				return usagef("--group of %d bytes: at most %d", len(group), wire.MaxGroupLen)
			}
			if cmd.Flags().Changed("count") && count < 1 {
				return usagef("--count %d: must be at least 1", count)
			}
			start, err := parseStartFrom(from, time.Now())
			if err != nil {
				return err
			}
			f, err := parseFormat(format)
			if err != nil {
				return err
			}
			var opts []sdk.ConsumerOpt
			if tags != "" {
				if _, err := wire.ParseTagFilter(tags); err != nil {
					return usagef("--tags: %v", err)
				}
				opts = append(opts, sdk.WithTagFilter(tags))
			}
			return consume(cmd, g, topic, group, count, append(opts, start), f)
		},
	}
	f := cmd.Flags()
	f.StringVar(&topic, "topic", "", "topic to consume (required)")
	f.StringVar(&group, "group", "", "consumer group (required)")
	f.IntVar(&count, "count", 0, "exit after this many messages (default: until interrupted)")
	f.StringVar(&from, "from", "earliest", "where a queue the group never committed starts: earliest, latest, or a time (RFC 3339 or -DURATION ago)")
	f.StringVar(&format, "format", `%s\n`, "how to print each message (see --help)")
	f.StringVar(&tags, "tags", "", `only the messages with one of these tags: "a || b" (the brokers filter)`)
	return cmd
}

func parseStartFrom(s string, now time.Time) (sdk.ConsumerOpt, error) {
	switch s {
	case "earliest":
		return sdk.WithStartFrom(sdk.Earliest), nil
	case "latest":
		return sdk.WithStartFrom(sdk.Latest), nil
	}
	if t, ok := parseTime(s, now); ok {
		return sdk.WithStartAt(t), nil
	}
	return nil, usagef("--from %q: want earliest, latest or a time (RFC 3339, or -DURATION ago)", s)
}

// commitTimeout bounds a commit; it is not cut short by an interrupt, so
// that what was printed gets committed.
const commitTimeout = 5 * time.Second

func consume(cmd *cobra.Command, g *globals, topic, group string, count int, opts []sdk.ConsumerOpt, f format) error {
	sigCtx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A broker that refuses the session (certificate, credentials) will
	// not change its mind while we wait: stop with its error.
	ctx, cancel := context.WithCancelCause(sigCtx)
	defer cancel(nil)
	cl, err := g.client(cmd, sdk.WithErrorHandler(func(err error) { cancel(err) }))
	if err != nil {
		return err
	}
	defer cl.Close()

	// One request first, so that a wrong address or certificate fails now
	// instead of leaving the consumer retrying in the background.
	var topics []sdk.TopicInfo
	err = g.admin(ctx, cl, func(ctx context.Context, a *sdk.Admin) (err error) {
		topics, err = a.Topics(ctx, topic)
		return err
	})
	if err != nil {
		if sigCtx.Err() != nil {
			return nil
		}
		return err
	}
	if len(topics) == 0 || topics[0].Queues == 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "quiver: topic %s does not exist yet; waiting for it\n", topic)
	}

	c, err := cl.NewConsumer(group, []string{topic}, append(opts, sdk.WithManualCommit())...)
	if err != nil {
		return err
	}
	err = printMessages(ctx, cmd, c, count, f)
	stop() // a second interrupt while closing ends the process at once
	// Close commits what was marked processed and not yet committed, and
	// leaves the group so that its queues go to other members at once.
	if cerr := c.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("committing on exit (what was printed may be delivered again): %w", cerr)
	}
	if cause := context.Cause(ctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	return err
}

// printMessages prints messages as f says until count were printed (count
// 0: until ctx ends), committing each batch once it is on stdout.
func printMessages(ctx context.Context, cmd *cobra.Command, c *sdk.Consumer, count int, f format) error {
	out := bufio.NewWriterSize(cmd.OutOrStdout(), 64<<10)
	var line []byte
	printed := 0
	for count == 0 || printed < count {
		msgs, err := c.Poll(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted: everything printed is committed
			}
			return err
		}
		if count > 0 && len(msgs) > count-printed {
			msgs = msgs[:count-printed] // the rest stays uncommitted for the next reader
		}
		for _, m := range msgs {
			line = f.format(line[:0], m)
			out.Write(line)
		}
		if err := out.Flush(); err != nil {
			return fmt.Errorf("writing stdout: %w", err)
		}
		printed += len(msgs)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
		err = c.Commit(cctx, msgs...)
		cancel()
		if err != nil {
			// Marked processed all the same: the next commit (at the latest
			// Close's) retries it. A queue that moved to another member
			// is re-read there from its last commit.
			fmt.Fprintf(cmd.ErrOrStderr(), "quiver: commit failed, retrying later: %v\n", err)
		}
	}
	return nil
}
