package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/anvilproject/anvil/api"
)

func newSessionCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "session",
		Short: "List iSCSI sessions and force logouts through the REST API",
	}
	addClientFlags(cmd, &cf)
	cmd.AddCommand(sessionListCmd(&cf), sessionLogoutCmd(&cf))
	return cmd
}

func sessionListCmd(cf *clientFlags) *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List logged-in sessions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			path := "/sessions"
			if target != "" {
				path += "?target=" + url.QueryEscape(target)
			}
			var list []api.Session
			raw, err := c.do(http.MethodGet, path, nil, &list)
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "TSIH\tINITIATOR\tTARGET\tREMOTE\tAUTH\tIN FLIGHT\tESTABLISHED")
			for _, s := range list {
				tgt := s.Target
				if s.Discovery {
					tgt = "(discovery)"
				}
				auth := orDash(s.AuthMethod)
				if s.CHAPAlgorithm != "" {
					auth += " " + s.CHAPAlgorithm
				}
				if s.MutualCHAP {
					auth += " mutual"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", s.TSIH, s.InitiatorName, tgt, s.RemoteAddr, auth, s.InFlight, s.Established.Format("2006-01-02 15:04:05"))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&target, "target", "", "only sessions logged in to this target")
	return cmd
}

func sessionLogoutCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "logout TSIH",
		Short: "Ask an initiator to log out, dropping the session if it does not",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tsih, err := strconv.ParseUint(args[0], 10, 16)
			if err != nil {
				return fmt.Errorf("TSIH %q: want a number 1..65535", args[0])
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			if _, err := c.do(http.MethodDelete, "/sessions/"+strconv.FormatUint(tsih, 10), nil, nil); err != nil {
				return err
			}
			return done(cmd, c, fmt.Sprintf("logout requested for session %d", tsih))
		},
	}
}
