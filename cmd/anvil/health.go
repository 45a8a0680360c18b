package main

import (
	"crypto/tls"
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
			base, err := baseURL(addr)
			if err != nil {
				return err
			}
			tr := http.DefaultTransport.(*http.Transport).Clone()
			if insecure {
				tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
			}
			hc := &http.Client{Timeout: timeout, Transport: tr}
			resp, err := hc.Get(base + "/api/v1/health")
			if err != nil {
				return fmt.Errorf("health: %w", err)
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
	cmd.Flags().BoolVar(&insecure, "insecure-skip-verify", false, "do not verify an https API's certificate (self-signed in a container)")
	return cmd
}
