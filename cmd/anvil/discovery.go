package main

import (
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/anvilproject/anvil/api"
)

func newDiscoveryCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "discovery",
		Short: "Manage iSCSI discovery (SendTargets) sessions through the REST API",
	}
	addClientFlags(cmd, &cf)
	cmd.AddCommand(discoveryCHAPCmd(&cf))
	return cmd
}

func discoveryCHAPCmd(cf *clientFlags) *cobra.Command {
	var cfl chapFlags
	var show bool
	cmd := &cobra.Command{
		Use:   "chap --user USER [--mutual-user USER] | --disable | --show",
		Short: "Require CHAP for discovery sessions; secrets come from ANVIL_CHAP_SECRET / ANVIL_CHAP_MUTUAL_SECRET or stdin, never the command line",
		Long: `Require CHAP authentication for discovery sessions (SendTargets), or with
--disable let them log in without it. The change applies to new logins at
once and drops discovery sessions logged in under the old setting.

` + chapSecretHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var st api.CHAPStatus
			var raw []byte
			switch {
			case show:
				raw, err = c.do(http.MethodGet, "/discovery/chap", nil, &st)
			case cfl.disable:
				if _, err := c.do(http.MethodDelete, "/discovery/chap", nil, nil); err != nil {
					return err
				}
				return done(cmd, c, "CHAP disabled for discovery sessions")
			default:
				req, rerr := cfl.request(cmd)
				if rerr != nil {
					return rerr
				}
				raw, err = c.do(http.MethodPut, "/discovery/chap", req, &st)
			}
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			msg := "discovery CHAP: off"
			if st.Enabled {
				msg = "discovery CHAP: user " + st.User
				if st.Mutual {
					msg += ", mutual " + st.MutualUser
				}
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), msg)
			return err
		},
	}
	cfl.add(cmd, "let discovery sessions log in without CHAP")
	cmd.Flags().BoolVar(&show, "show", false, "show whether discovery needs CHAP")
	return cmd
}
