// Command anvil is the Anvil storage target: `anvil serve` runs the daemon,
// and the other subcommands are a client of its REST API.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "anvil",
		Short:         "Anvil: an iSCSI storage target",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd())
	root.AddCommand(newVolumeCmd())
	root.AddCommand(newTargetCmd())
	root.AddCommand(newSubsystemCmd())
	root.AddCommand(newControllerCmd())
	root.AddCommand(newDiscoveryCmd())
	root.AddCommand(newSessionCmd())
	root.AddCommand(newHealthCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "anvil:", err)
		os.Exit(1)
	}
}
