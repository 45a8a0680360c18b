package service

import (
	"encoding/hex"
	"sort"
	"time"

	"github.com/anvilproject/anvil/target/nvme"
)

// NVMeControllerInfo describes one live NVMe controller in the service's
// own terms, so that callers do not depend on the NVMe core.
type NVMeControllerInfo struct {
	// ID is the controller ID (CNTLID).
	ID uint16
	// Subsystem is the subsystem NQN (the discovery NQN for discovery
	// controllers).
	Subsystem string
	Discovery bool
	// HostNQN and HostID (32 hex digits) identify the host.
	HostNQN, HostID string
	// LocalAddr is the target address the admin queue connected to.
	LocalAddr string
	// Queues counts the admin queue and the I/O queues.
	Queues int
	// KeepAliveTimeout is KATO; zero means none.
	KeepAliveTimeout time.Duration
	// Connected is when the admin queue connected.
	Connected time.Time
}

// NVMeStats are the NVMe front end's counters for metrics.
type NVMeStats struct {
	Controllers, Queues int
	// Commands counts executed commands by class: admin, io, fabrics.
	Commands map[string]uint64
	// Errors counts failed commands by status, named by the status's
	// type and code ("sct=0x0 sc=0x02").
	Errors map[string]uint64
}

// NVMeControllers is the NVMe front end as the service's callers see it.
type NVMeControllers interface {
	// Controllers lists the live controllers, ordered by ID.
	Controllers() []NVMeControllerInfo
	// Stats returns the front end's counters.
	Stats() NVMeStats
}

// NVMeTarget adapts the NVMe core to NVMeControllers.
func NVMeTarget(t *nvme.Target) NVMeControllers { return nvmeTarget{t} }

type nvmeTarget struct{ t *nvme.Target }

func (a nvmeTarget) Controllers() []NVMeControllerInfo {
	list := a.t.Controllers()
	out := make([]NVMeControllerInfo, 0, len(list))
	for _, c := range list {
		out = append(out, NVMeControllerInfo{
			ID: c.ID, Subsystem: c.Subsystem, Discovery: c.Discovery,
			HostNQN: c.HostNQN, HostID: hex.EncodeToString(c.HostID[:]),
			LocalAddr: c.LocalAddr, Queues: c.Queues,
			KeepAliveTimeout: c.KeepAliveTimeout, Connected: c.Connected,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (a nvmeTarget) Stats() NVMeStats {
	st := a.t.Stats()
	out := NVMeStats{
		Controllers: st.Controllers, Queues: st.Queues,
		Commands: map[string]uint64{"admin": st.AdminCommands, "io": st.IOCommands, "fabrics": st.FabricsCommands},
		Errors:   make(map[string]uint64, len(st.Errors)),
	}
	for s, n := range st.Errors {
		out.Errors[s.String()] += n
	}
	return out
}
