// Command quiverd is the Quiver broker daemon.
//
// With no command it runs the broker: QUIC on 127.0.0.1:7420, admin HTTP
// on 127.0.0.1:7421, data in ./quiver-data, a self-signed certificate kept
// there. Flags, QUIVER_* environment variables and a TOML file (--config)
// change that. The storage commands verify, repair and demo work on a data
// directory directly.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/internal/buildinfo"
)

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "quiverd:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "quiverd",
		Short: "Quiver message-storage daemon",
		Long: `quiverd runs a Quiver broker. With no flags it keeps its data in ./quiver-data,
listens for QUIC on 127.0.0.1:7420 and serves /healthz, /metrics and /status on
http://127.0.0.1:7421. Every setting can come from a TOML file (--config), a
QUIVER_* environment variable or a flag, later ones overriding earlier ones.`,
		Version:       buildinfo.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
	}
	load := serveFlags(root)
	root.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := load()
		if err != nil {
			return err
		}
		return serve(c)
	}
	root.AddCommand(demoCmd(), verifyCmd(), repairCmd(), certificateCmd())
	return root
}

func newLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
