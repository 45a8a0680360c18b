package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/anvilproject/anvil/api"
)

func newSubsystemCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "subsystem",
		Short: "Manage NVMe/TCP subsystems, their namespaces and host access through the REST API",
	}
	addClientFlags(cmd, &cf)
	cmd.AddCommand(subsystemListCmd(&cf), subsystemShowCmd(&cf), subsystemCreateCmd(&cf), subsystemDeleteCmd(&cf),
		subsystemAddNamespaceCmd(&cf), subsystemRemoveNamespaceCmd(&cf), subsystemSetHostsCmd(&cf))
	return cmd
}

func subsystemPath(nqn string, rest ...string) string {
	return "/subsystems/" + url.PathEscape(nqn) + strings.Join(rest, "")
}

func hostsText(s api.Subsystem) string {
	if s.AllowAnyHost {
		return "any"
	}
	if len(s.Hosts) == 0 {
		return "none"
	}
	return strings.Join(s.Hosts, ",")
}

func printSubsystems(cmd *cobra.Command, c *client, raw []byte, subs []api.Subsystem) error {
	if c.output == "json" {
		return printJSON(cmd.OutOrStdout(), raw)
	}
	tw := newTable(cmd.OutOrStdout())
	fmt.Fprintln(tw, "NQN\tSERIAL\tNAMESPACES\tHOSTS")
	for _, s := range subs {
		nss := make([]string, 0, len(s.Namespaces))
		for _, n := range s.Namespaces {
			nss = append(nss, fmt.Sprintf("%d=%s", n.NSID, n.Volume))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.NQN, s.Serial, orDash(strings.Join(nss, " ")), hostsText(s))
	}
	return tw.Flush()
}

// subsystemRequest sends one API request that answers with a subsystem
// and prints it.
func subsystemRequest(cmd *cobra.Command, c *client, method, path string, in any) error {
	var s api.Subsystem
	raw, err := c.do(method, path, in, &s)
	if err != nil {
		return err
	}
	return printSubsystems(cmd, c, raw, []api.Subsystem{s})
}

func subsystemListCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List subsystems",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var subs []api.Subsystem
			raw, err := c.do(http.MethodGet, "/subsystems", nil, &subs)
			if err != nil {
				return err
			}
			return printSubsystems(cmd, c, raw, subs)
		},
	}
}

func subsystemShowCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show NQN",
		Short: "Show a subsystem with its namespaces' identifiers",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var s api.Subsystem
			raw, err := c.do(http.MethodGet, subsystemPath(args[0]), nil, &s)
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "NQN:     %s\nSerial:  %s\nHosts:   %s\nCreated: %s\n", s.NQN, s.Serial, hostsText(s), s.Created.Format(time.RFC3339))
			tw := newTable(w)
			fmt.Fprintln(tw, "NSID\tVOLUME\tNGUID\tUUID")
			for _, n := range s.Namespaces {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", n.NSID, n.Volume, n.NGUID, n.UUID)
			}
			return tw.Flush()
		},
	}
}

func subsystemCreateCmd(cf *clientFlags) *cobra.Command {
	var serial string
	var anyHost bool
	var hosts []string
	cmd := &cobra.Command{
		Use:   "create NQN",
		Short: "Create a subsystem (it admits no host until --allow-any-host, --host, or `subsystem set-hosts`)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return subsystemRequest(cmd, c, http.MethodPost, "/subsystems", api.CreateSubsystemRequest{NQN: args[0], Serial: serial, AllowAnyHost: anyHost, Hosts: hosts})
		},
	}
	cmd.Flags().StringVar(&serial, "serial", "", "serial number hosts see (at most 20 characters; default: generated)")
	cmd.Flags().BoolVar(&anyHost, "allow-any-host", false, "admit every host")
	cmd.Flags().StringSliceVar(&hosts, "host", nil, "host NQNs to admit (repeat or comma-separate)")
	return cmd
}

func subsystemDeleteCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NQN",
		Short: "Delete a subsystem (its controllers are disconnected; its volumes are kept)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			if _, err := c.do(http.MethodDelete, subsystemPath(args[0]), nil, nil); err != nil {
				return err
			}
			return done(cmd, c, "deleted subsystem "+args[0])
		},
	}
}

func parseNSID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || n > 1024 {
		return 0, fmt.Errorf("namespace ID %q: want a number 1..1024", s)
	}
	return uint32(n), nil
}

func subsystemAddNamespaceCmd(cf *clientFlags) *cobra.Command {
	var nsid uint32
	cmd := &cobra.Command{
		Use:   "add-namespace NQN VOLUME",
		Short: "Export a volume as a namespace (connected hosts see it without reconnecting)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return subsystemRequest(cmd, c, http.MethodPost, subsystemPath(args[0], "/namespaces"), api.AddNamespaceRequest{NSID: nsid, Volume: args[1]})
		},
	}
	cmd.Flags().Uint32Var(&nsid, "nsid", 0, "namespace ID (default: the lowest free)")
	return cmd
}

func subsystemRemoveNamespaceCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "remove-namespace NQN NSID",
		Short: "Remove a namespace from a subsystem",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			nsid, err := parseNSID(args[1])
			if err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			if _, err := c.do(http.MethodDelete, subsystemPath(args[0], "/namespaces/", strconv.FormatUint(uint64(nsid), 10)), nil, nil); err != nil {
				return err
			}
			return done(cmd, c, fmt.Sprintf("removed namespace %d from %s", nsid, args[0]))
		},
	}
}

func subsystemSetHostsCmd(cf *clientFlags) *cobra.Command {
	var anyHost bool
	cmd := &cobra.Command{
		Use:   "set-hosts NQN [HOST_NQN...]",
		Short: "Replace the hosts a subsystem admits (--allow-any-host for all; no hosts for none); hosts dropped are disconnected",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return subsystemRequest(cmd, c, http.MethodPut, subsystemPath(args[0], "/hosts"), api.HostsRequest{AllowAnyHost: anyHost, Hosts: args[1:]})
		},
	}
	cmd.Flags().BoolVar(&anyHost, "allow-any-host", false, "admit every host")
	return cmd
}

func newControllerCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Show NVMe/TCP controllers (connected hosts) through the REST API",
	}
	addClientFlags(cmd, &cf)
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List NVMe controllers, discovery controllers included",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var ctrls []api.Controller
			raw, err := c.do(http.MethodGet, "/controllers", nil, &ctrls)
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ID\tSUBSYSTEM\tHOST\tQUEUES\tKATO\tLOCAL\tCONNECTED")
			for _, ct := range ctrls {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%s\n", ct.ID, ct.Subsystem, ct.HostNQN, ct.Queues,
					time.Duration(ct.KeepAliveMS)*time.Millisecond, orDash(ct.LocalAddr), ct.Connected.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	})
	return cmd
}
