package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/sdk"
)

func adminCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Operate a broker group",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("admin needs a command: promote")
		},
	}
	cmd.AddCommand(promoteCmd(g))
	return cmd
}

func promoteCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "promote",
		Short: "Make the follower given by --broker the leader of its group, with a new epoch",
		Long: `promote makes the follower at --broker (exactly one address) the leader of its
group: it stops following, starts a new epoch at the end of its log, and tells
the group's other brokers (its configured peers), so that an old leader stops
taking writes and the other followers follow it. Every message acknowledged
with min-insync >= 1 is on every in-sync follower, so promoting one loses
none of them. Promoting a leader changes nothing.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var addrs []string
			for _, a := range g.brokers {
				for _, p := range strings.Split(a, ",") {
					if p = strings.TrimSpace(p); p != "" {
						addrs = append(addrs, p)
					}
				}
			}
			if !cmd.Flags().Changed("broker") {
				// Promotion fences the group's leader: never on a default.
				return usagef("promote: give the follower to promote with --broker (the default address is not used)")
			}
			if len(addrs) != 1 {
				return usagef("promote: give exactly one --broker, the follower to promote (got %d)", len(addrs))
			}
			var info sdk.EpochInfo
			err := g.withAdmin(cmd, func(ctx context.Context, a *sdk.Admin) (err error) {
				info, err = a.Promote(ctx, addrs[0])
				return err
			})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, map[string]any{"epoch": info.Epoch, "leader": info.Leader, "leader_addr": info.LeaderAddr})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s leads epoch %d at %s\n", info.Leader, info.Epoch, info.LeaderAddr)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the epoch and leader as JSON")
	return cmd
}
