package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/anvilproject/anvil/api"
	"github.com/anvilproject/anvil/config"
	"github.com/anvilproject/anvil/engine"
	"github.com/anvilproject/anvil/internal/netguard"
	"github.com/anvilproject/anvil/service"
	"github.com/anvilproject/anvil/target/iscsi"
	"github.com/anvilproject/anvil/web"
)

func newServeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Anvil daemon",
		Long: `Run the Anvil daemon: the iSCSI portal, the REST API and web UI.

Settings come from flags, then ANVIL_* environment variables, then anvil.yaml,
then the embedded defaults. On an empty data directory the daemon creates a
1 GiB thin demo volume exported as iqn.2026-11.io.anvil:demo LUN 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, v, err := config.Load(cmd.Flags())
			if err != nil {
				return err
			}
			if p, _ := cmd.Flags().GetBool("print-config"); p {
				return printConfig(cmd.OutOrStdout(), v, cmd.Flags())
			}
			return serve(cfg)
		},
	}
	config.AddFlags(cmd.Flags())
	cmd.Flags().Bool("print-config", false, "print the effective configuration and where each value came from, then exit")
	return cmd
}

func newLogger(c config.Log) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level)) // validated by config.Load
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// dataOutBudget is the iSCSI Data-Out budget: configured, or a quarter of
// the cache's memory budget, so that write data in transit stays in
// proportion to the memory the operator gave the daemon.
func dataOutBudget(configured, cacheSize int64) int64 {
	if configured > 0 {
		return configured
	}
	return cacheSize / 4
}

// serve runs the daemon until SIGTERM or SIGINT, then shuts down in order:
// stop accepting, let in-flight commands finish (aborting them at the
// deadline), flush every volume, close the catalog.
func serve(cfg *config.Config) error {
	log := newLogger(cfg.Log)
	slog.SetDefault(log)
	maxConns := cfg.ISCSI.MaxConnections
	if cfg.NVMe.Enabled {
		maxConns += cfg.NVMe.MaxConnections
	}
	raiseFileLimit(log, maxConns)

	cache := engine.NewCache(engine.CacheOptions{Size: cfg.Cache.Size, DirtyLimit: cfg.Cache.DirtyLimit})
	svc, err := service.Open(service.Options{
		DataDir: cfg.DataDir,
		Demo:    cfg.Demo,
		Engine: service.EngineOptions{
			Cache:         cache,
			FlushInterval: cfg.Engine.FlushInterval,
			UndoSize:      cfg.Engine.UndoSize,
		},
		DefaultBackend:   cfg.Volume.DefaultBackend,
		SpaceWarnPercent: cfg.Volume.SpaceWarnPercent,
		ImportDirs:       cfg.Volume.ImportDirs,
		BlockDevices:     cfg.Volume.BlockDevices,
		Logger:           log,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := svc.Close(); err != nil {
			log.Error("closing volumes and catalog", "err", err)
		}
	}()

	iscsiLn, err := net.Listen("tcp", cfg.ISCSI.Listen)
	if err != nil {
		return fmt.Errorf("iSCSI portal: %w", err)
	}
	portal := iscsi.NewServer(iscsi.Config{
		PortalGroupTag:           uint16(cfg.ISCSI.PortalGroupTag),
		MaxRecvDataSegmentLength: uint32(cfg.ISCSI.MaxRecvDataSegmentLength),
		MaxBurstLength:           uint32(cfg.ISCSI.MaxBurstLength),
		FirstBurstLength:         uint32(cfg.ISCSI.FirstBurstLength),
		MaxOutstandingR2T:        uint32(cfg.ISCSI.MaxOutstandingR2T),
		NopInterval:              cfg.ISCSI.NopInterval,
		NopTimeout:               cfg.ISCSI.NopTimeout,
		MaxConnections:           cfg.ISCSI.MaxConnections,
		MaxConnectionsPerAddress: cfg.ISCSI.MaxConnectionsPerAddress,
		MaxDataOut:               dataOutBudget(cfg.ISCSI.DataOutBudget, cache.Size()),
		DataOutTimeout:           cfg.ISCSI.DataOutTimeout,
		Logger:                   log.With("frontend", "iscsi"),
	}, svc.ISCSIRegistry())
	// An ACL, CHAP or target change drops the sessions it revokes.
	svc.SetAccessHook(func() { portal.Revalidate() })

	nv, err := startNVMe(cfg.NVMe, svc, log)
	if err != nil {
		iscsiLn.Close()
		return err
	}

	token, created, err := api.ResolveToken(cfg.DataDir, cfg.API.Token)
	if err != nil {
		iscsiLn.Close()
		nv.closeListeners()
		return err
	}
	if created {
		log.Info("generated API token", "file", filepath.Join(cfg.DataDir, api.TokenFile))
	}
	if rotated, err := svc.RecordAPIToken(token); err != nil {
		iscsiLn.Close()
		nv.closeListeners()
		return err
	} else if rotated {
		log.Warn("the API token differs from the one in use at the last start; clients with the old token get 401")
	}
	certFile, keyFile, err := apiCertificate(cfg, log)
	if err != nil {
		iscsiLn.Close()
		nv.closeListeners()
		return err
	}
	apiLn, err := net.Listen("tcp", cfg.API.Listen)
	if err != nil {
		iscsiLn.Close()
		nv.closeListeners()
		return fmt.Errorf("API listener: %w", err)
	}
	// net/http retries only the accept errors it deems temporary (EMFILE,
	// ENFILE) and logs each retry; any other (ENOBUFS, ENOMEM) would stop
	// the API and so the daemon.
	apiLn = netguard.NewListener(apiLn, log.With("frontend", "api"))
	httpSrv := &http.Server{
		Handler:           api.New(api.Options{Service: svc, Sessions: service.ISCSISessions(portal), NVMe: nv.controllers(), UI: web.Handler(), Token: token, Logger: log.With("frontend", "api")}),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12},
	}

	errc := make(chan error, 4)
	go func() { errc <- portal.Serve(iscsiLn) }()
	nv.serve(errc)
	go func() {
		var err error
		if certFile != "" {
			err = httpSrv.ServeTLS(apiLn, certFile, keyFile)
		} else {
			err = httpSrv.Serve(apiLn)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("API server: %w", err)
			return
		}
		errc <- nil
	}()
	log.Info("anvil serving", "iscsi", iscsiLn.Addr().String(), "nvme", nv.addrs(), "api", apiLn.Addr().String(), "api_tls", certFile != "", "data_dir", cfg.DataDir)

	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	var runErr error
	select {
	case sig := <-sigc:
		log.Info("shutting down", "signal", sig.String(), "timeout", cfg.ShutdownTimeout)
	case runErr = <-errc:
		log.Error("front end stopped; shutting down", "err", runErr)
	}
	signal.Stop(sigc)

	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := portal.Shutdown(ctx); err != nil {
		log.Warn("iSCSI shutdown", "err", err)
	}
	if err := nv.shutdown(ctx); err != nil {
		log.Warn("NVMe/TCP shutdown", "err", err)
	}
	if err := httpSrv.Shutdown(ctx); err != nil {
		log.Warn("API shutdown", "err", err)
	}
	if err := svc.FlushAll(context.Background()); err != nil {
		log.Error("flushing volumes", "err", err)
		runErr = errors.Join(runErr, err)
	}
	log.Info("anvil stopped")
	return runErr
}

// apiCertificate decides how the API is served and returns the certificate
// and key files for HTTPS, or empty names for plain HTTP. HTTPS is the
// default: with api.tls_cert the configured pair, otherwise a self-signed
// certificate generated once in the data directory. Plain HTTP is served
// only with api.tls off, or with auto on a loopback address, where no
// other machine can listen in.
func apiCertificate(cfg *config.Config, log *slog.Logger) (certFile, keyFile string, err error) {
	switch {
	case cfg.API.TLS == "off":
		return "", "", nil
	case cfg.API.TLSCert != "":
		fp, err := api.CertFileFingerprint(cfg.API.TLSCert)
		if err != nil {
			return "", "", fmt.Errorf("api.tls_cert: %w", err)
		}
		log.Info("API serves HTTPS with the configured certificate", "file", cfg.API.TLSCert, "sha256_fingerprint", fp)
		return cfg.API.TLSCert, cfg.API.TLSKey, nil
	case cfg.API.TLS == "auto" && api.IsLoopback(cfg.API.Listen):
		return "", "", nil
	}
	c, err := api.EnsureCertificate(cfg.DataDir, api.CertHosts(cfg.API.Listen))
	if err != nil {
		return "", "", err
	}
	msg := "API serves HTTPS with the data directory's self-signed certificate"
	if c.Created {
		msg = "generated a self-signed API certificate"
	}
	log.Info(msg, "file", c.CertFile, "sha256_fingerprint", c.Fingerprint)
	if len(c.Missing) > 0 {
		log.Warn("the API certificate does not cover these names; remove it and restart to have a new one generated", "file", c.CertFile, "missing", c.Missing)
	}
	return c.CertFile, c.KeyFile, nil
}
