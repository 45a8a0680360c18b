package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"
)

// newHealthCmd checks a daemon's health endpoint. It needs no token, so a
// container HEALTHCHECK or a load balancer script can run it as is; the
// exit status is 0 only for a healthy daemon.
func newHealthCmd() *cobra.Command {
	var addr string
	var timeout time.Duration
	var insecure bool
	var caCert, dataDir string
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Check that a daemon answers GET /api/v1/health (exit status 0 if healthy)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" {
				addr = os.Getenv("ANVIL_API")
			}
			if addr == "" {
				addr = os.Getenv("ANVIL_API_LISTEN")
			}
			if addr == "" {
				addr = "127.0.0.1:8080"
			}
			a, err := baseURL(addr)
			if err != nil {
				return err
			}
			tr, err := apiTransport(caCert, insecure, dataDirs(dataDir))
			if err != nil {
				return err
			}
			hc := &http.Client{Timeout: timeout, Transport: tr}
			base := a.resolve(hc)
			resp, err := hc.Get(base + "/api/v1/health")
			if err != nil {
				return fmt.Errorf("health: %w", explain(err, base))
			}
			defer resp.Body.Close()
			var body map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				return fmt.Errorf("health: HTTP %d, undecodable answer: %w", resp.StatusCode, err)
			}
			if resp.StatusCode != http.StatusOK || body["status"] != "ok" {
				return fmt.Errorf("health: HTTP %d: %v", resp.StatusCode, body)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %v volumes, %v targets, %v sessions\n", body["volumes"], body["targets"], body["sessions"])
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "api", "", "API address, host:port or URL (env ANVIL_API, else ANVIL_API_LISTEN, else 127.0.0.1:8080)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "daemon data directory whose api.crt verifies an https API (env ANVIL_DATA_DIR, else ./anvil-data, then /var/lib/anvil)")
	cmd.Flags().StringVar(&caCert, "ca-cert", "", "PEM CA certificate to verify an https API with (default: the system roots and DATA_DIR/api.crt)")
	cmd.Flags().BoolVar(&insecure, "insecure-skip-verify", false, "do not verify an https API's certificate")
	return cmd
}
