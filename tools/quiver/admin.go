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
		Short: "Operate a broker group: change its leader",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("admin needs a command: promote or elect")
		},
	}
	cmd.AddCommand(promoteCmd(g), electCmd(g))
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
none of them. Promoting a leader changes nothing. Groups run by a controller
use elect instead.`,
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

func electCmd(g *globals) *cobra.Command {
	var group, brokerID string
	var unclean, asJSON bool
	cmd := &cobra.Command{
		Use:   "elect",
		Short: "Have the controller elect a new leader of the group given by --group, in a new epoch",
		Long: `elect asks the controller, through any broker that answers, to elect a new
leader of --group in a new epoch: the broker with the id --broker-id, which
must be in the group's in-sync set, else the in-sync member with the most data
(never the current leader). --broker still says where to send the request.
Groups run without a controller use promote.

--unclean lets the controller elect a member outside the in-sync set, which
may lose sends the set acknowledged: a last resort for a group whose in-sync
members are all gone.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if group == "" {
				return usagef("elect: --group is required (quiver status shows the controller's groups)")
			}
			if unclean {
				// Before the request: once sent, the election may happen
				// even if the answer never arrives.
				fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: --unclean: group %s may get a leader from outside its in-sync set, which may LOSE\n"+
					"sends the in-sync set acknowledged. Use it only as a last resort, when every in-sync member is gone.\n", group)
			}
			var info sdk.EpochInfo
			err := g.withAdmin(cmd, func(ctx context.Context, a *sdk.Admin) (err error) {
				info, err = a.Elect(ctx, group, brokerID, unclean)
				return err
			})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, map[string]any{"epoch": info.Epoch, "leader": info.Leader, "leader_addr": info.LeaderAddr})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s leads group %s in epoch %d at %s\n", orDash(info.Leader), group, info.Epoch, orDash(info.LeaderAddr))
			return nil
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "the group whose leader to elect (required)")
	cmd.Flags().StringVar(&brokerID, "broker-id", "", "the id of the broker to elect (default: the controller's choice)")
	cmd.Flags().BoolVar(&unclean, "unclean", false, "allow a leader outside the in-sync set, which may lose acknowledged sends (last resort)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the epoch and leader as JSON")
	return cmd
}
