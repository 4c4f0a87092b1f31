// Command quiver is Quiver's command-line client: it produces stdin lines
// as messages, consumes a topic to stdout as a member of a consumer group,
// creates and lists topics, and shows a broker's status.
//
// Scripts rely on its output: produce --acks prints "<line> <queue>
// <offset>" per acknowledged line, consume prints one body per line, and
// every listing has a --json form. It exits 0 on success, 1 when an
// operation fails and 2 when the command line is wrong.
//
// # Design
//
//   - Trust: --fingerprint, --ca, $QUIVER_CA, then ./quiver-data/tls/cert.pem
//     (where quiverd run from the same directory keeps it), in that order.
//     With none of them it fails and names the flags: certificate
//     verification is never skipped.
//   - produce uses the synchronous Send, one line at a time, so acks come
//     in line order and a failure stops at the line that failed, with the
//     SDK's error naming every attempt.
//   - consume uses Poll with manual commits rather than Run: it writes a
//     batch, flushes stdout, then commits exactly the messages it wrote.
//     A message counts as processed only once it is on stdout, --count N
//     leaves the messages fetched past N uncommitted for the next reader,
//     and a signal never finds a printed message uncommitted (the commit
//     runs on a context the signal does not cancel; Close commits again).
//   - Admin requests go to the first broker that answers (the SDK tries
//     each in turn), within --timeout; the dial timeout is --timeout shared
//     among the brokers (at most 5s), so that one silent broker leaves
//     time for the others.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/internal/buildinfo"
	"github.com/quivermq/quiver/sdk"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.LookupEnv))
}

// run executes one command line and returns the exit status; main and the
// in-process tests share it.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) int {
	root := newRoot(lookupEnv)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	// SDK errors already start with "quiver: ".
	fmt.Fprintln(stderr, "quiver:", strings.TrimPrefix(err.Error(), "quiver: "))
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// usageError is a command line that is wrong (exit status 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// defaultCA is trusted when neither --ca, --fingerprint nor QUIVER_CA is
// given: the certificate quiverd creates in its default data directory.
var defaultCA = filepath.Join("quiver-data", "tls", "cert.pem")

// globals are the flags every command shares.
type globals struct {
	brokers     []string
	ca          string
	fingerprint string
	timeout     time.Duration
	token       string
	cert, key   string
	lookupEnv   func(string) (string, bool)
}

func newRoot(lookupEnv func(string) (string, bool)) *cobra.Command {
	g := &globals{lookupEnv: lookupEnv}
	root := &cobra.Command{
		Use:   "quiver",
		Short: "Quiver command-line client",
		Long: `quiver produces, consumes and administers topics on Quiver brokers.

The broker's certificate is always verified: with --ca (or QUIVER_CA) naming
a PEM file that holds it (a self-signed broker keeps it in DATA/tls/cert.pem),
or with --fingerprint, the SHA-256 fingerprint quiverd prints when it starts.
Without either, ./quiver-data/tls/cert.pem is trusted if it exists.

A broker that checks who calls (tokens, acl) takes --token (or QUIVER_TOKEN),
or a client certificate (--cert and --cert-key) where it has client_ca.

Exit status: 0 on success, 1 when an operation fails, 2 for a wrong command line.`,
		Version:       buildinfo.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("a command is required (see quiver --help)")
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usagef("%v (see %s --help)", err, cmd.CommandPath())
	})
	pf := root.PersistentFlags()
	pf.StringSliceVar(&g.brokers, "broker", []string{"127.0.0.1:7420"}, "broker address host:port (repeat or comma-separate for several)")
	pf.StringVar(&g.ca, "ca", "", "PEM file with the broker's certificate or its CA (default $QUIVER_CA, else ./quiver-data/tls/cert.pem)")
	pf.StringVar(&g.fingerprint, "fingerprint", "", "trust exactly the broker certificate with this SHA-256 fingerprint (hex)")
	pf.DurationVar(&g.timeout, "timeout", 10*time.Second, "how long a send or an admin request may take, retries included")
	pf.StringVar(&g.token, "token", "", "the credentials to present (default $QUIVER_TOKEN): a token the broker's tokens or ACL accepts")
	pf.StringVar(&g.cert, "cert", "", "client certificate (PEM) to present, for a broker with client_ca (mutual TLS; with --key)")
	pf.StringVar(&g.key, "cert-key", "", "private key (PEM) of --cert")
	root.AddCommand(produceCmd(g), consumeCmd(g), topicCmd(g), statusCmd(g), clusterCmd(g), adminCmd(g), dlqCmd(g), groupCmd(g), lookupCmd(g))
	return root
}

// trust returns how to verify brokers: --fingerprint, --ca, $QUIVER_CA,
// then ./quiver-data/tls/cert.pem; never no verification.
func (g *globals) trust() (sdk.Opt, error) {
	switch {
	case g.ca != "" && g.fingerprint != "":
		return nil, usagef("--ca and --fingerprint both given: use one")
	case g.fingerprint != "":
		return sdk.WithFingerprint(g.fingerprint), nil
	case g.ca != "":
		return sdk.WithCAFile(g.ca), nil
	}
	if v, ok := g.lookupEnv("QUIVER_CA"); ok && v != "" {
		return sdk.WithCAFile(v), nil
	}
	// Anything but its absence (a permission, say) is the SDK's to report.
	if _, err := os.Stat(defaultCA); !errors.Is(err, fs.ErrNotExist) {
		return sdk.WithCAFile(defaultCA), nil
	}
	return nil, fmt.Errorf("no way to verify the broker's certificate: pass --ca FILE (the broker's DATA/tls/cert.pem, "+
		"or set QUIVER_CA) or --fingerprint HEX (printed by quiverd at startup); %s does not exist here", defaultCA)
}

// client connects to the brokers given by the flags. SDK warnings go to
// the command's stderr.
func (g *globals) client(cmd *cobra.Command, opts ...sdk.Opt) (*sdk.Client, error) {
	var addrs []string
	for _, a := range g.brokers {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, usagef("--broker %q: want host:port", a)
		}
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return nil, usagef("--broker: no address given")
	}
	if g.timeout <= 0 {
		return nil, usagef("--timeout %v: must be positive", g.timeout)
	}
	trust, err := g.trust()
	if err != nil {
		return nil, err
	}
	logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelError}))
	// Every request's deadline bounds its dials; one broker that does not
	// answer must leave time for the others.
	opts = append([]sdk.Opt{sdk.WithBrokers(addrs...), trust, sdk.WithLogger(logger),
		sdk.WithDialTimeout(min(g.timeout/time.Duration(len(addrs)), 5*time.Second))}, opts...)
	token := g.token
	if token == "" {
		token, _ = g.lookupEnv("QUIVER_TOKEN")
	}
	if token != "" {
		opts = append(opts, sdk.WithCredentials([]byte(token)))
	}
	switch {
	case (g.cert == "") != (g.key == ""):
		return nil, usagef("--cert and --cert-key go together")
	case g.cert != "":
		opts = append(opts, sdk.WithClientCertificateFiles(g.cert, g.key))
	}
	return sdk.NewClient(opts...)
}

// withAdmin connects, makes one admin request (see admin) and disconnects.
func (g *globals) withAdmin(cmd *cobra.Command, call func(context.Context, *sdk.Admin) error) error {
	cl, err := g.client(cmd)
	if err != nil {
		return err
	}
	defer cl.Close()
	return g.admin(cmd.Context(), cl, call)
}

// admin makes one admin request within --timeout (the SDK tries each
// broker in turn while the failure is the network's).
func (g *globals) admin(ctx context.Context, cl *sdk.Client, call func(context.Context, *sdk.Admin) error) error {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	return call(ctx, cl.Admin())
}

// requireTopic checks a --topic flag.
func requireTopic(topic string) error {
	if topic == "" {
		return usagef("--topic is required")
	}
	return nil
}
