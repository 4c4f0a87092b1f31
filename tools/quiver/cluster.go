package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

func clusterCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Show the cluster as the brokers know it: groups, leaders, followers, topics, brokers",
		Long: `cluster shows the broker groups the brokers know of (from any --broker that
answers): each group's leader and epoch, its followers and the topics it hosts
with their queues there; then every broker with its role, how long ago the
answering broker heard from it, and its last error. This is what clients route
by. Under a controller it then shows the groups as the controller runs them:
leader, in-sync set, members and last election. With --json it prints
{"groups": [...], "brokers": [...], "controller": {...}} (controller null
without one).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var groups []sdk.GroupInfo
			var brokers []wire.RouteBroker
			var ctl *wire.ControllerStatus
			err := g.withAdmin(cmd, func(ctx context.Context, a *sdk.Admin) (err error) {
				if groups, brokers, err = a.Cluster(ctx); err != nil {
					return err
				}
				// The routes do not carry the controller's view (in-sync
				// sets, elections): a broker's status document does.
				st, err := a.Status(ctx)
				if err != nil {
					return fmt.Errorf("status, for the controller's groups: %w", err)
				}
				if st.Replication != nil {
					ctl = st.Replication.Controller
				}
				return nil
			})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, map[string]any{"groups": groups, "brokers": brokers, "controller": ctl})
			}
			t := newTable(cmd, "GROUP", "LEADER", "EPOCH", "FOLLOWERS", "TOPICS")
			for _, gr := range groups {
				var topics []string
				for _, ti := range gr.Topics {
					topics = append(topics, fmt.Sprintf("%s(%d)", ti.Name, ti.Queues))
				}
				t.row(gr.Name, orDash(gr.Leader), gr.Epoch, orDash(strings.Join(gr.Followers, ",")), orDash(strings.Join(topics, " ")))
			}
			if err := t.flush(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout())
			if err := brokerTable(cmd, "BROKER", brokers); err != nil {
				return err
			}
			if ctl == nil {
				return nil
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return controllerGroups(cmd, ctl.Groups)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the groups and brokers as JSON")
	return cmd
}

// brokerTable prints brokers as a broker heard from them.
func brokerTable(cmd *cobra.Command, title string, brokers []wire.RouteBroker) error {
	t := newTable(cmd, title, "ID", "GROUP", "ROLE", "EPOCH", "HEARD", "LAST ERROR")
	for _, b := range brokers {
		heard := "never"
		if b.AgeMs != ^uint32(0) {
			heard = ms(int64(b.AgeMs)).String() + " ago"
		}
		t.row(b.Addr, orDash(b.ID), orDash(b.Group), orDash(b.Role), b.Epoch, heard, orDash(b.Err))
	}
	return t.flush()
}
