package nvme

import (
	"log/slog"
	"sync/atomic"

	"github.com/anvilproject/anvil/engine"
	"github.com/anvilproject/anvil/internal/rangelock"
)

// NamespaceConfig describes one namespace: which NSID it has in its
// subsystem, its identifiers and what it shares with other front ends.
type NamespaceConfig struct {
	// NSID is the namespace identifier within the subsystem (1 and up).
	NSID uint32
	// NGUID is the namespace globally unique identifier; never zero.
	NGUID [16]byte
	// UUID is the namespace UUID (RFC 9562 version 4); never zero.
	UUID [16]byte
	// Locks are the volume's block range locks, shared with the iSCSI LU
	// of the same volume so that compare-and-write is atomic across both.
	// Nil gives the namespace locks of its own.
	Locks *rangelock.Locks
	// SaveWriteCache persists a Set Features Volatile Write Cache change;
	// nil keeps the change in memory only.
	SaveWriteCache func(on bool) error
	// Logger receives the namespace's logs; nil means slog.Default.
	Logger *slog.Logger
}

// Namespace is one engine volume exported as an NVM namespace.
type Namespace struct {
	vol   engine.Volume
	cfg   NamespaceConfig
	locks *rangelock.Locks
	log   *slog.Logger

	st nsCounters
}

// nsCounters are the namespace's I/O counters, read by SMART / Health.
type nsCounters struct {
	bytesRead, bytesWritten atomic.Uint64
	readCmds, writeCmds     atomic.Uint64
}

// NewNamespace exports vol as a namespace.
func NewNamespace(vol engine.Volume, cfg NamespaceConfig) *Namespace {
	n := &Namespace{vol: vol, cfg: cfg, locks: cfg.Locks, log: cfg.Logger}
	if n.locks == nil {
		n.locks = new(rangelock.Locks)
	}
	if n.log == nil {
		n.log = slog.Default()
	}
	n.log = n.log.With("nsid", cfg.NSID, "volume", vol.Name())
	return n
}

// ID is the namespace identifier.
func (n *Namespace) ID() uint32 { return n.cfg.NSID }

// Volume is the engine volume behind the namespace.
func (n *Namespace) Volume() engine.Volume { return n.vol }

// WriteCache reports whether the volume's volatile write cache is on.
func (n *Namespace) WriteCache() bool { return n.vol.WriteCache() }

// SetWriteCache turns the volume's volatile write cache on or off and
// persists the choice.
func (n *Namespace) SetWriteCache(on bool) error {
	return errSkeleton
}

// identifyContext is what Identify Namespace needs to know about the
// controller and subsystem asking.
type identifyContext struct {
	// multiController: the subsystem may attach the namespace to more
	// than one controller (NMIC bit 0).
	multiController bool
}

// identify builds the Identify Namespace data structure (CNS 00h).
func (n *Namespace) identify(ic identifyContext) [4096]byte {
	var b [4096]byte
	return b
}

// descriptors builds the Namespace Identification Descriptor list
// (Identify CNS 03h).
func (n *Namespace) descriptors() []byte {
	return make([]byte, 4096)
}

// NamespaceStats are a namespace's I/O counters in the units the SMART /
// Health Information log page reports.
type NamespaceStats struct {
	// DataUnitsRead and DataUnitsWritten count thousands of 512-byte
	// units, rounded up.
	DataUnitsRead, DataUnitsWritten uint64
	// HostReadCommands and HostWriteCommands count completed commands.
	HostReadCommands, HostWriteCommands uint64
}

// stats returns the namespace's counters for the SMART log page.
func (n *Namespace) stats() NamespaceStats {
	return NamespaceStats{}
}
