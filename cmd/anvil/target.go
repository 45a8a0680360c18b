package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/anvilproject/anvil/api"
)

func newTargetCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "target",
		Short: "Manage iSCSI targets, LUN mappings, ACLs and CHAP through the REST API",
	}
	addClientFlags(cmd, &cf)
	cmd.AddCommand(targetListCmd(&cf), targetCreateCmd(&cf), targetDeleteCmd(&cf), targetMapCmd(&cf),
		targetUnmapCmd(&cf), targetACLCmd(&cf), targetCHAPCmd(&cf))
	return cmd
}

func targetPath(iqn string, rest ...string) string {
	return "/targets/" + url.PathEscape(iqn) + strings.Join(rest, "")
}

func printTargets(cmd *cobra.Command, c *client, raw []byte, tgts []api.Target) error {
	if c.output == "json" {
		return printJSON(cmd.OutOrStdout(), raw)
	}
	tw := newTable(cmd.OutOrStdout())
	fmt.Fprintln(tw, "IQN\tALIAS\tLUNS\tACL\tCHAP")
	for _, t := range tgts {
		luns := make([]string, 0, len(t.LUNs))
		for _, l := range t.LUNs {
			luns = append(luns, fmt.Sprintf("%d=%s", l.LUN, l.Volume))
		}
		acl := "closed"
		if t.ACL.Open {
			acl = "open"
		} else if len(t.ACL.Initiators) > 0 {
			acl = strings.Join(t.ACL.Initiators, ",")
		}
		chap := "off"
		if t.CHAP.Enabled {
			chap = "user " + t.CHAP.User
			if t.CHAP.Mutual {
				chap += ", mutual " + t.CHAP.MutualUser
			}
		}
		for _, ic := range t.InitiatorCHAP {
			chap += "; " + ic.Initiator + ": user " + ic.User
			if ic.Mutual {
				chap += ", mutual " + ic.MutualUser
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.IQN, orDash(t.Alias), orDash(strings.Join(luns, " ")), acl, chap)
	}
	return tw.Flush()
}

func targetListCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List targets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var tgts []api.Target
			raw, err := c.do(http.MethodGet, "/targets", nil, &tgts)
			if err != nil {
				return err
			}
			return printTargets(cmd, c, raw, tgts)
		},
	}
}

func targetCreateCmd(cf *clientFlags) *cobra.Command {
	var alias string
	var open bool
	var allow []string
	cmd := &cobra.Command{
		Use:   "create IQN",
		Short: "Create a target (it admits nobody until --open or --allow, or `target acl`)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			req := api.CreateTargetRequest{IQN: args[0], Alias: alias}
			if open || len(allow) > 0 {
				req.ACL = &api.ACLRequest{Open: open, Initiators: allow}
			}
			return targetRequest(cmd, c, http.MethodPost, "/targets", req)
		},
	}
	cmd.Flags().StringVar(&alias, "alias", "", "target alias shown to initiators")
	cmd.Flags().BoolVar(&open, "open", false, "admit every initiator")
	cmd.Flags().StringSliceVar(&allow, "allow", nil, "initiator IQNs to admit (repeat or comma-separate)")
	return cmd
}

func targetDeleteCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "delete IQN",
		Short: "Delete a target (its volumes are kept)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			if _, err := c.do(http.MethodDelete, targetPath(args[0]), nil, nil); err != nil {
				return err
			}
			return done(cmd, c, "deleted target "+args[0])
		},
	}
}

func done(cmd *cobra.Command, c *client, msg string) error {
	if c.output == "json" {
		return printJSON(cmd.OutOrStdout(), []byte(fmt.Sprintf(`{"ok":true,"message":%q}`, msg)))
	}
	_, err := fmt.Fprintln(cmd.OutOrStdout(), msg)
	return err
}

// targetRequest sends one API request that answers with a target and
// prints that target.
func targetRequest(cmd *cobra.Command, c *client, method, path string, in any) error {
	var t api.Target
	raw, err := c.do(method, path, in, &t)
	if err != nil {
		return err
	}
	return printTargets(cmd, c, raw, []api.Target{t})
}

func parseLUN(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("LUN %q: want a number 0..16383", s)
	}
	return n, nil
}

func targetMapCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "map IQN LUN VOLUME",
		Short: "Export a volume as a LUN of a target",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			lun, err := parseLUN(args[1])
			if err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			return targetRequest(cmd, c, http.MethodPost, targetPath(args[0], "/luns"), api.MapLUNRequest{LUN: &lun, Volume: args[2]})
		},
	}
}

func targetUnmapCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "unmap IQN LUN",
		Short: "Remove a LUN from a target",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			lun, err := parseLUN(args[1])
			if err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			if _, err := c.do(http.MethodDelete, targetPath(args[0], "/luns/", strconv.FormatUint(lun, 10)), nil, nil); err != nil {
				return err
			}
			return done(cmd, c, fmt.Sprintf("unmapped LUN %d from %s", lun, args[0]))
		},
	}
}

func targetACLCmd(cf *clientFlags) *cobra.Command {
	var open bool
	cmd := &cobra.Command{
		Use:   "acl IQN [--open | INITIATOR...]",
		Short: "Replace a target's access list (no initiators and no --open: nobody may log in)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			req := api.ACLRequest{Open: open, Initiators: args[1:]}
			return targetRequest(cmd, c, http.MethodPut, targetPath(args[0], "/acl"), req)
		},
	}
	cmd.Flags().BoolVar(&open, "open", false, "admit every initiator")
	return cmd
}

func targetCHAPCmd(cf *clientFlags) *cobra.Command {
	var cfl chapFlags
	var initiator string
	cmd := &cobra.Command{
		Use:   "chap IQN [--initiator INITIATOR_IQN] --user USER [--mutual-user USER] | --disable",
		Short: "Require CHAP on a target (or for one initiator of it); secrets come from ANVIL_CHAP_SECRET / ANVIL_CHAP_MUTUAL_SECRET or stdin, never the command line",
		Long: `Require CHAP authentication for logins to a target.

With --initiator, the credentials are that initiator's own: it logs in with
them instead of the target-wide ones, and --disable removes them (the
initiator falls back to the target-wide credentials). Sessions logged in
under credentials that change are dropped.

` + chapSecretHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			path, what := targetPath(args[0], "/chap"), args[0]
			if initiator != "" {
				path = targetPath(args[0], "/initiators/", url.PathEscape(initiator), "/chap")
				what = initiator + " on " + args[0]
			}
			if cfl.disable {
				if _, err := c.do(http.MethodDelete, path, nil, nil); err != nil {
					return err
				}
				return done(cmd, c, "CHAP disabled for "+what)
			}
			req, err := cfl.request(cmd)
			if err != nil {
				return err
			}
			return targetRequest(cmd, c, http.MethodPut, path, req)
		},
	}
	cfl.add(cmd, "stop requiring CHAP (with --initiator: remove that initiator's own credentials)")
	cmd.Flags().StringVar(&initiator, "initiator", "", "set the credentials of this initiator only")
	return cmd
}

const chapSecretHelp = `The secret is read from the ANVIL_CHAP_SECRET environment variable or, with
--secret-stdin, from the first line of standard input (the mutual secret from
ANVIL_CHAP_MUTUAL_SECRET or the second line), so that it never shows in the
process list. Secrets are write-only: the API never returns them.`

// chapFlags are the flags shared by the commands that set CHAP.
type chapFlags struct {
	user, mutualUser     string
	secretStdin, disable bool
}

func (f *chapFlags) add(cmd *cobra.Command, disableHelp string) {
	cmd.Flags().StringVar(&f.user, "user", "", "CHAP user name the initiator logs in with")
	cmd.Flags().StringVar(&f.mutualUser, "mutual-user", "", "user name the target answers with (mutual CHAP)")
	cmd.Flags().BoolVar(&f.secretStdin, "secret-stdin", false, "read the secret (and mutual secret) from stdin, one per line")
	cmd.Flags().BoolVar(&f.disable, "disable", false, disableHelp)
}

// request builds the API request from the flags and the secrets in the
// environment or on stdin.
func (f *chapFlags) request(cmd *cobra.Command) (api.CHAPRequest, error) {
	secret, mutual := os.Getenv("ANVIL_CHAP_SECRET"), os.Getenv("ANVIL_CHAP_MUTUAL_SECRET")
	if f.secretStdin {
		lines, err := readLines(cmd.InOrStdin(), 2)
		if err != nil {
			return api.CHAPRequest{}, err
		}
		secret = lines[0]
		if len(lines) > 1 && lines[1] != "" {
			mutual = lines[1]
		}
	}
	req := api.CHAPRequest{User: f.user, Secret: secret}
	if f.mutualUser != "" {
		req.MutualUser, req.MutualSecret = f.mutualUser, mutual
	}
	return req, nil
}

func readLines(r io.Reader, n int) ([]string, error) {
	sc := bufio.NewScanner(r)
	var out []string
	for len(out) < n && sc.Scan() {
		out = append(out, strings.TrimRight(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no secret on stdin")
	}
	return out, nil
}
