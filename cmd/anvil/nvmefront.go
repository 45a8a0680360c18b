package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/anvilproject/anvil/config"
	"github.com/anvilproject/anvil/service"
	"github.com/anvilproject/anvil/target/nvme"
	"github.com/anvilproject/anvil/target/nvmetcp"
)

// nvmeFront is the NVMe/TCP front end of a running daemon: the core, the
// transport and its listeners. The zero value is NVMe/TCP turned off, and
// every method is then a no-op.
type nvmeFront struct {
	target *nvme.Target
	srv    *nvmetcp.Server
	lns    []net.Listener
}

// startNVMe binds the NVMe/TCP listeners and builds the core over the
// service's subsystems; nothing is served until serve.
func startNVMe(cfg config.NVMe, svc *service.Service, log *slog.Logger) (*nvmeFront, error) {
	f := &nvmeFront{}
	if !cfg.Enabled {
		log.Info("NVMe/TCP is off (nvme.enabled false)")
		return f, nil
	}
	ioLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("NVMe/TCP listener (nvme.listen): %w", err)
	}
	f.lns = append(f.lns, ioLn)
	var discLn net.Listener
	if cfg.DiscoveryListen != "" {
		if discLn, err = net.Listen("tcp", cfg.DiscoveryListen); err != nil {
			f.closeListeners()
			return nil, fmt.Errorf("NVMe/TCP discovery listener (nvme.discovery_listen): %w", err)
		}
		f.lns = append(f.lns, discLn)
	}
	ports, err := nvmePorts(ioLn, discLn)
	if err != nil {
		f.closeListeners()
		return nil, err
	}
	f.target = nvme.NewTarget(nvme.TargetConfig{
		Registry:          svc.NVMeRegistry(),
		Ports:             ports,
		MaxQueueEntries:   cfg.MaxQueueEntries,
		MaxIOQueues:       cfg.MaxIOQueues,
		InCapsuleDataSize: cfg.InCapsuleData,
		Logger:            log.With("frontend", "nvme"),
	})
	// Subsystems created or deleted through the API change what the
	// discovery log lists.
	svc.SetNVMeDiscoveryHook(f.target.DiscoveryChanged)
	f.srv = nvmetcp.NewServer(nvmetcp.Config{
		MaxConnections:           cfg.MaxConnections,
		MaxConnectionsPerAddress: cfg.MaxConnectionsPerAddress,
		Logger:                   log.With("frontend", "nvmetcp"),
	}, f.target)
	return f, nil
}

// serve runs the accept loop of every listener; each reports its end on
// errc.
func (f *nvmeFront) serve(errc chan<- error) {
	for _, ln := range f.lns {
		go func() {
			if err := f.srv.Serve(ln); err != nil {
				errc <- fmt.Errorf("NVMe/TCP on %s: %w", ln.Addr(), err)
				return
			}
			errc <- nil
		}()
	}
}

func (f *nvmeFront) closeListeners() {
	for _, ln := range f.lns {
		ln.Close()
	}
}

// addrs lists the bound listener addresses for the start-up log line.
func (f *nvmeFront) addrs() []string {
	out := make([]string, 0, len(f.lns))
	for _, ln := range f.lns {
		out = append(out, ln.Addr().String())
	}
	return out
}

// controllers is the API's view of the controllers; nil when off.
func (f *nvmeFront) controllers() service.NVMeControllers {
	if f.target == nil {
		return nil
	}
	return service.NVMeTarget(f.target)
}

// shutdown stops accepting and ends every connection, waiting for
// in-flight commands until ctx ends.
func (f *nvmeFront) shutdown(ctx context.Context) error {
	if f.srv == nil {
		return nil
	}
	return f.srv.Shutdown(ctx)
}
