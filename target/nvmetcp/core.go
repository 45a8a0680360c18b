package nvmetcp

import (
	"context"
	"net"

	"github.com/anvilproject/anvil/target/nvme"
)

// coreTarget is what a connection needs of the command core before it is
// connected: the Fabrics Connect that makes it a queue. *nvme.Target
// provides it (through targetCore); tests may supply their own.
type coreTarget interface {
	connect(ctx context.Context, cmd *nvme.Command, local net.Addr) (coreQueue, nvme.Completion)
	// maxDataTransfer is the core's MDTS in bytes: the longest data buffer
	// one command may carry, which bounds what we allocate per command.
	maxDataTransfer() int
}

// coreQueue is the part of *nvme.Queue a connection uses.
type coreQueue interface {
	ID() uint16
	Size() int
	InCapsuleDataSize() int
	Execute(ctx context.Context, cmd *nvme.Command) (nvme.Completion, []byte)
	ExecuteFused(ctx context.Context, first, second *nvme.Command) (nvme.Completion, nvme.Completion, []byte)
	Close()
	Done() <-chan struct{}
}
