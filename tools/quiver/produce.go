package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

func produceCmd(g *globals) *cobra.Command {
	var (
		topic      string
		acks       bool
		durability string
		spec       sendSpec
		headers    []string
		delay      time.Duration
		deliverAt  string
	)
	cmd := &cobra.Command{
		Use:   "produce --topic T [--key K | --key-delim D] [--tag T] [--header k=v]... [--delay D | --deliver-at TIME] [--acks] [--durability sync|async]",
		Short: "Send each line of stdin as one message",
		Long: `produce sends each line of stdin (without its newline) as one message to
--topic, one at a time: a line is sent once the previous one was acknowledged.
Every message gets the key --key, or, with --key-delim D, each line is
"<key>D<body>" (split at the first D; a line without D is refused); the tags
--tag; and the headers --header k=v (repeatable, in order). A message with a
key goes to its key's queue, and a key's messages are consumed in order.
With --delay or --deliver-at consumers see each message only from then on
(the broker keeps it until its time; --acks then prints the position of that
scheduled copy).
With --acks it prints "<line number> <queue> <offset>" for each acknowledged
line as soon as the acknowledgement arrives (line numbers start at 1). A send
that fails stops it with the error, which names every attempt.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireTopic(topic); err != nil {
				return err
			}
			dur, err := parseDurability(durability)
			if err != nil {
				return err
			}
			if err := spec.check(headers); err != nil {
				return err
			}
			switch {
			case delay != 0 && deliverAt != "":
				return usagef("--delay and --deliver-at: give one")
			case delay < 0 || delay > 30*24*time.Hour:
				return usagef("--delay %v: 1s to 30 days", delay)
			case delay > 0:
				spec.delay = delay
			case deliverAt != "":
				t, err := time.Parse(time.RFC3339Nano, deliverAt)
				if err != nil {
					return usagef("--deliver-at %q: want an RFC 3339 time", deliverAt)
				}
				spec.at = t
			}
			cl, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cl.Close()
			p, err := cl.NewProducer(sdk.WithDurability(dur), sdk.WithSendTimeout(g.timeout))
			if err != nil {
				return err
			}
			defer p.Close()
			return produce(cmd, p, topic, acks, &spec)
		},
	}
	f := cmd.Flags()
	f.StringVar(&topic, "topic", "", "topic to send to (required)")
	f.StringVar(&spec.key, "key", "", "the key of every message")
	f.StringVar(&spec.delim, "key-delim", "", `each line is "<key><delim><body>"`)
	f.StringVar(&spec.tags, "tag", "", "the tags of every message")
	f.StringArrayVar(&headers, "header", nil, "a header k=v of every message (repeatable)")
	f.DurationVar(&delay, "delay", 0, "make each message visible to consumers this long after it is sent (1s to 30 days)")
	f.StringVar(&deliverAt, "deliver-at", "", "make the messages visible to consumers at this time (RFC 3339, up to 30 days ahead)")
	f.BoolVar(&acks, "acks", false, `print "<line> <queue> <offset>" for each acknowledged line`)
	f.StringVar(&durability, "durability", "", "sync (acknowledged once on disk) or async (once written); default: the broker's setting")
	return cmd
}

func parseDurability(s string) (sdk.Durability, error) {
	switch s {
	case "":
		return sdk.DurabilityDefault, nil
	case "sync":
		return sdk.Sync, nil
	case "async":
		return sdk.Async, nil
	}
	return 0, usagef("--durability %q: want sync or async", s)
}

// maxLine is the longest line produce reads: a message body at its limit
// and its newline.
const maxLine = wire.MaxBodyLen + 1

// sendSpec is what produce adds to each line.
type sendSpec struct {
	key, delim, tags string
	headers          []sdk.Header
	delay            time.Duration // from each line's send
	at               time.Time
}

// check validates the flags and parses the headers.
func (s *sendSpec) check(headers []string) error {
	switch {
	case s.key != "" && s.delim != "":
		return usagef("--key and --key-delim: give one")
	case len(s.key) > wire.MaxKeyLen:
		return usagef("--key of %d bytes: at most %d", len(s.key), wire.MaxKeyLen)
	case len(s.tags) > wire.MaxTagsLen:
		return usagef("--tag of %d bytes: at most %d", len(s.tags), wire.MaxTagsLen)
	}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, "=")
		if !ok || k == "" {
			return usagef("--header %q: want key=value", h)
		}
		s.headers = append(s.headers, sdk.Header{Key: k, Value: []byte(v)})
	}
	if n := len(wire.AppendHeaders(nil, s.headers)); n > wire.MaxHeadersLen {
		return usagef("--header: %d bytes of headers, at most %d", n, wire.MaxHeadersLen)
	}
	return nil
}

// message is the message of one input line.
func (s *sendSpec) message(topic string, line []byte) (*sdk.Message, error) {
	m := &sdk.Message{Topic: topic, Body: line, Headers: s.headers, DeliverAt: s.at}
	if s.delay > 0 {
		m.DeliverAt = time.Now().Add(s.delay)
	}
	if s.tags != "" {
		m.Tags = []byte(s.tags)
	}
	switch {
	case s.key != "":
		m.Key = []byte(s.key)
	case s.delim != "":
		k, body, ok := bytes.Cut(line, []byte(s.delim))
		if !ok {
			return nil, fmt.Errorf("no key delimiter %q in the line", s.delim)
		}
		if len(k) == 0 || len(k) > wire.MaxKeyLen {
			return nil, fmt.Errorf("a key of %d bytes (1..%d)", len(k), wire.MaxKeyLen)
		}
		m.Key, m.Body = k, body
	}
	return m, nil
}

func produce(cmd *cobra.Command, p *sdk.Producer, topic string, acks bool, spec *sendSpec) error {
	in := bufio.NewScanner(cmd.InOrStdin())
	in.Buffer(make([]byte, 64<<10), maxLine)
	in.Split(scanLines)
	out := bufio.NewWriter(cmd.OutOrStdout())
	line := 0
	for in.Scan() {
		line++
		// Send is synchronous and keeps no slice of the message once it
		// returns, so the body may alias the scanner's buffer.
		m, err := spec.message(topic, in.Bytes())
		if err != nil {
			return lineError{line, err}
		}
		res, err := p.Send(cmd.Context(), m)
		if err != nil {
			return lineError{line, err}
		}
		if acks {
			fmt.Fprintf(out, "%d %d %d\n", line, res.Queue, res.Offset)
			if err := out.Flush(); err != nil {
				return fmt.Errorf("writing stdout: %w", err)
			}
		}
	}
	if err := in.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return lineError{line + 1, fmt.Errorf("longer than a message body may be (%d bytes)", wire.MaxBodyLen)}
		}
		return fmt.Errorf("reading stdin: %w", err)
	}
	return nil
}

// lineError is an input line that could not be sent.
type lineError struct {
	line int
	err  error
}

func (e lineError) Error() string {
	return fmt.Sprintf("line %d: %s", e.line, strings.TrimPrefix(e.err.Error(), "quiver: "))
}

func (e lineError) Unwrap() error { return e.err }

// scanLines splits at '\n' and keeps everything else, '\r' included, so
// that a body is exactly its line; a last line without a newline counts.
func scanLines(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}
