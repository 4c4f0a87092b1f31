package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/daemon/certs"
)

// certificateCmd creates (once) the broker's self-signed certificate
// without starting it, so that it can be given to peers and clients first
// (a broker group's peer_ca bundle).
func certificateCmd() *cobra.Command {
	var dir string
	var hosts []string
	cmd := &cobra.Command{
		Use:   "certificate",
		Short: "Create (once) and show the broker's self-signed certificate, without starting it",
		Long: `certificate creates DATA/tls/cert.pem and key.pem as the broker would at its
first start (for localhost, 127.0.0.1, ::1 and --host), or keeps the ones
there, and prints the certificate's path and SHA-256 fingerprint. Hand the
certificate (or a bundle of a group's certificates) to clients (--ca) and to
the group's other brokers (peer_ca).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			tlsDir := filepath.Join(dir, "tls")
			_, fp, err := certs.LoadOrCreate(tlsDir, hosts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\nsha256 fingerprint: %s\n", filepath.Join(tlsDir, certs.CertFile), fp)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data", "./quiver-data", "data directory")
	cmd.Flags().StringSliceVar(&hosts, "host", nil, "extra host names or addresses for a new certificate")
	return cmd
}
