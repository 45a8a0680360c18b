package nvme

import (
	"context"
	"errors"
)

// errSkeleton marks code not written yet.
var errSkeleton = errors.New("nvme: not implemented")

// execute runs one NVM command set command on the namespace and returns its
// completion and, for reads, the data for the host.
func (n *Namespace) execute(ctx context.Context, cmd *Command) (Completion, []byte) {
	return Completion{Status: StatusInternal}, nil
}

// executeFused runs a fused Compare (first) and Write (second) as one
// atomic operation.
func (n *Namespace) executeFused(ctx context.Context, first, second *Command) (Completion, Completion) {
	return Completion{Status: StatusInternal}, Completion{Status: StatusAbortFailedFused}
}
