package main

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/anvilproject/anvil/api"
)

func newVolumeCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "volume",
		Short: "Manage volumes through the REST API",
	}
	addClientFlags(cmd, &cf)
	cmd.AddCommand(
		volumeListCmd(&cf), volumeShowCmd(&cf), volumeCreateCmd(&cf), volumeResizeCmd(&cf),
		volumeSetCmd(&cf), volumeDeleteCmd(&cf), volumeImportCmd(&cf),
		volumeFaultsCmd(&cf), volumeClearErrorCmd(&cf), volumeRecheckCmd(&cf),
	)
	return cmd
}

func printVolumes(cmd *cobra.Command, c *client, raw []byte, vols []api.Volume) error {
	if c.output == "json" {
		return printJSON(cmd.OutOrStdout(), raw)
	}
	tw := newTable(cmd.OutOrStdout())
	fmt.Fprintln(tw, "NAME\tSIZE\tBLOCK\tWRITE CACHE\tREAD-ONLY\tREADS\tWRITES\tMAPPED BY")
	for _, v := range vols {
		reads, writes := "-", "-"
		if v.Stats != nil {
			reads, writes = strconv.FormatUint(v.Stats.Read.Ops, 10), strconv.FormatUint(v.Stats.Write.Ops, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%v\t%s\t%s\t%s\n", v.Name, humanSize(v.SizeBytes), v.BlockSize,
			onOff(v.WriteCache), v.ReadOnly, reads, writes, orDash(strings.Join(v.MappedBy, ",")))
	}
	return tw.Flush()
}

func volumeListCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List volumes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var vols []api.Volume
			raw, err := c.do(http.MethodGet, "/volumes", nil, &vols)
			if err != nil {
				return err
			}
			return printVolumes(cmd, c, raw, vols)
		},
	}
}

func volumeShowCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show one volume with its live statistics",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var v api.Volume
			raw, err := c.do(http.MethodGet, "/volumes/"+url.PathEscape(args[0]), nil, &v)
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintf(tw, "Name:\t%s\nSize:\t%s (%d bytes)\nBlock size:\t%d\nWrite cache:\t%s\nRead-only:\t%v\n", v.Name, humanSize(v.SizeBytes), v.SizeBytes, v.BlockSize, onOff(v.WriteCache), v.ReadOnly)
			fmt.Fprintf(tw, "Backend:\t%s\nPath:\t%s\nSerial:\t%s\nNAA:\t%s\nCreated:\t%s\nMapped by:\t%s\n", v.Backend, v.Path, v.Serial, v.NAA, v.Created.Format(time.RFC3339), orDash(strings.Join(v.MappedBy, ", ")))
			if v.State != "" && v.State != "online" {
				fmt.Fprintf(tw, "State:\t%s (%s)\n", v.State, v.Reason)
			}
			if v.Error != "" {
				fmt.Fprintf(tw, "Error:\t%s\n", v.Error)
			}
			if st := v.Stats; st != nil {
				fmt.Fprintf(tw, "Reads:\t%d (%s)\nWrites:\t%d (%s)\nFlushes:\t%d\nUnmaps:\t%d\n", st.Read.Ops, humanSize(int64(st.Read.Bytes)), st.Write.Ops, humanSize(int64(st.Write.Bytes)), st.Flush.Ops, st.Unmap.Ops)
				if st.DirtyBytes != nil {
					fmt.Fprintf(tw, "Dirty:\t%s\n", humanSize(*st.DirtyBytes))
				}
			}
			return tw.Flush()
		},
	}
}

func volumeCreateCmd(cf *clientFlags) *cobra.Command {
	var size, backend, device string
	var blockSize int
	var noCache, readOnly bool
	cmd := &cobra.Command{
		Use:   "create NAME (--size SIZE | --backend block --device DEV)",
		Short: "Create a volume: thin on a raw image, or on a block device",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var n int64
			if size != "" {
				var err error
				if n, err = parseSize(size); err != nil {
					return err
				}
			} else if backend != "block" {
				return fmt.Errorf("--size is required (except for --backend block, which takes the device's size)")
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			req := api.CreateVolumeRequest{Name: args[0], SizeBytes: n, BlockSize: blockSize, ReadOnly: readOnly, Backend: backend, Device: device}
			if noCache {
				off := false
				req.WriteCache = &off
			}
			var v api.Volume
			raw, err := c.do(http.MethodPost, "/volumes", req, &v)
			if err != nil {
				return err
			}
			return printVolumes(cmd, c, raw, []api.Volume{v})
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "size, e.g. 10G (binary units)")
	cmd.Flags().IntVar(&blockSize, "block-size", 0, "logical block size, 512 (default) or 4096")
	cmd.Flags().BoolVar(&noCache, "no-write-cache", false, "make every write durable before it is acknowledged")
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "refuse writes")
	cmd.Flags().StringVar(&backend, "backend", "", "data backend: file (pread/pwrite), mmap, or block (default: the daemon's volume.default_backend)")
	cmd.Flags().StringVar(&device, "device", "", "block device of a --backend block volume")
	return cmd
}

// volumeFaultsCmd sets a volume's fault injection, for testing initiators
// (and Anvil) against a failing disk.
func volumeFaultsCmd(cf *clientFlags) *cobra.Command {
	var rate int
	var errName string
	var seed uint64
	cmd := &cobra.Command{
		Use:   "faults NAME --rate N [--seed S]",
		Short: "Fail N of every 10,000 backing I/Os with EIO (seeded, repeatable); --rate 0 stops",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return volumeRequest(cmd, cf, http.MethodPut, "/volumes/"+url.PathEscape(args[0])+"/faults", api.FaultRequest{Rate: rate, Seed: seed, Error: errName})
		},
	}
	cmd.Flags().IntVar(&rate, "rate", 0, "failures per 10,000 backing I/Os (0..10000)")
	cmd.Flags().StringVar(&errName, "error", "eio", "failure to inject: eio (any I/O) or enospc (writes, as on a full file system)")
	cmd.Flags().Uint64Var(&seed, "seed", 1, "seed of the failure pattern")
	cmd.MarkFlagRequired("rate")
	return cmd
}

// volumeClearErrorCmd returns a volume frozen by a failed commit to service.
func volumeClearErrorCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "clear-error NAME",
		Short: "Accept writes again on a volume a failed commit made read-only",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return volumeRequest(cmd, cf, http.MethodPost, "/volumes/"+url.PathEscape(args[0])+"/clear-error", nil)
		},
	}
}

// volumeRecheckCmd brings an offline volume back once its files are restored.
func volumeRecheckCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "recheck NAME",
		Short: "Check an offline volume's files again and serve it if they match the catalog",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return volumeRequest(cmd, cf, http.MethodPost, "/volumes/"+url.PathEscape(args[0])+"/recheck", nil)
		},
	}
}

func volumeResizeCmd(cf *clientFlags) *cobra.Command {
	var size string
	cmd := &cobra.Command{
		Use:   "resize NAME --size SIZE",
		Short: "Grow a volume online; initiators are told the capacity changed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(size)
			if err != nil {
				return err
			}
			return patchVolume(cmd, cf, args[0], api.PatchVolumeRequest{SizeBytes: &n})
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "new size, e.g. 20G")
	cmd.MarkFlagRequired("size")
	return cmd
}

func volumeSetCmd(cf *clientFlags) *cobra.Command {
	var writeCache, readOnly string
	cmd := &cobra.Command{
		Use:   "set NAME [--write-cache on|off] [--read-only true|false]",
		Short: "Change a volume's write cache or read-only setting live",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req api.PatchVolumeRequest
			if writeCache != "" {
				b, err := parseOnOff(writeCache)
				if err != nil {
					return fmt.Errorf("--write-cache: %w", err)
				}
				req.WriteCache = &b
			}
			if readOnly != "" {
				b, err := parseOnOff(readOnly)
				if err != nil {
					return fmt.Errorf("--read-only: %w", err)
				}
				req.ReadOnly = &b
			}
			if req.WriteCache == nil && req.ReadOnly == nil {
				return fmt.Errorf("nothing to change: give --write-cache or --read-only")
			}
			return patchVolume(cmd, cf, args[0], req)
		},
	}
	cmd.Flags().StringVar(&writeCache, "write-cache", "", "on or off")
	cmd.Flags().StringVar(&readOnly, "read-only", "", "true or false")
	return cmd
}

func parseOnOff(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "on", "true", "yes", "1":
		return true, nil
	case "off", "false", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("%q: want on or off", s)
}

func patchVolume(cmd *cobra.Command, cf *clientFlags, name string, req api.PatchVolumeRequest) error {
	return volumeRequest(cmd, cf, http.MethodPatch, "/volumes/"+url.PathEscape(name), req)
}

// volumeRequest sends one API request whose answer is a volume, and prints
// that volume.
func volumeRequest(cmd *cobra.Command, cf *clientFlags, method, path string, in any) error {
	c, err := cf.client()
	if err != nil {
		return err
	}
	var v api.Volume
	raw, err := c.do(method, path, in, &v)
	if err != nil {
		return err
	}
	return printVolumes(cmd, c, raw, []api.Volume{v})
}

func volumeDeleteCmd(cf *clientFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a volume and its data (refused while mapped unless --force)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			path := "/volumes/" + url.PathEscape(args[0])
			if force {
				path += "?force=true"
			}
			if _, err := c.do(http.MethodDelete, path, nil, nil); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), []byte(fmt.Sprintf(`{"deleted":%q}`, args[0])))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted volume %s\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "unmap the volume from every target first")
	return cmd
}

func volumeImportCmd(cf *clientFlags) *cobra.Command {
	var blockSize int
	var serverSide, readOnly, quiet bool
	cmd := &cobra.Command{
		Use:   "import NAME FILE",
		Short: "Create a volume from a raw image (uploaded, with a progress bar, or read by the daemon with --server-side)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			name, file := args[0], args[1]
			var v api.Volume
			var raw []byte
			if serverSide {
				abs, err := filepath.Abs(file)
				if err != nil {
					return err
				}
				raw, err = c.do(http.MethodPost, "/volumes/import", api.ImportPathRequest{Name: name, Path: abs, BlockSize: blockSize, ReadOnly: readOnly}, &v)
				if err != nil {
					return err
				}
				return printVolumes(cmd, c, raw, []api.Volume{v})
			}
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			q := url.Values{"name": {name}}
			if blockSize != 0 {
				q.Set("block_size", strconv.Itoa(blockSize))
			}
			if readOnly {
				q.Set("read_only", "true")
			}
			p := &progress{w: cmd.ErrOrStderr(), total: st.Size(), start: time.Now(), label: "importing " + filepath.Base(file)}
			var body = &progressReader{r: f, p: p}
			if quiet {
				p.w = discard{}
			}
			req, err := http.NewRequest(http.MethodPost, c.base+"/volumes/import?"+q.Encode(), body)
			if err != nil {
				return err
			}
			req.ContentLength = st.Size()
			req.Header.Set("Content-Type", "application/octet-stream")
			raw, err = c.send(req, &v)
			p.finish()
			if err != nil {
				return err
			}
			return printVolumes(cmd, c, raw, []api.Volume{v})
		},
	}
	cmd.Flags().IntVar(&blockSize, "block-size", 0, "logical block size, 512 (default) or 4096")
	cmd.Flags().BoolVar(&serverSide, "server-side", false, "FILE is a path on the daemon's machine, in its volume.import_dirs (or a device in volume.block_devices); the daemon reads it directly")
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "make the new volume read-only")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress bar")
	return cmd
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
