//go:build !nvmetcp

package main

import (
	"context"
	"log/slog"

	"github.com/anvilproject/anvil/config"
	"github.com/anvilproject/anvil/service"
)

// nvmeFront stands in for the NVMe/TCP front end while target/nvmetcp is
// not in the tree (see nvmefront.go): it serves nothing and says so.
type nvmeFront struct{}

func startNVMe(cfg config.NVMe, _ *service.Service, log *slog.Logger) (*nvmeFront, error) {
	if cfg.Enabled {
		log.Warn("this build has no NVMe/TCP transport (target/nvmetcp); NVMe/TCP is not served", "nvme.listen", cfg.Listen)
	}
	return &nvmeFront{}, nil
}

func (*nvmeFront) serve(chan<- error)                   {}
func (*nvmeFront) closeListeners()                      {}
func (*nvmeFront) addrs() []string                      { return nil }
func (*nvmeFront) controllers() service.NVMeControllers { return nil }
func (*nvmeFront) shutdown(context.Context) error       { return nil }
