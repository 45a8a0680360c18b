package nvme

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/bits"
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
	// Nil gives the namespace locks of its own, which is only right when
	// nothing else writes the volume.
	Locks *rangelock.Locks
	// SaveWriteCache persists a Set Features Volatile Write Cache change;
	// nil keeps the change in memory only.
	SaveWriteCache func(on bool) error
	// Logger receives the namespace's logs; nil means slog.Default.
	Logger *slog.Logger
}

// Namespace is one engine volume exported as an NVM namespace. It executes
// the NVM command set's I/O commands; the controller routes them here by
// NSID and answers everything else itself.
type Namespace struct {
	vol   engine.Volume
	cfg   NamespaceConfig
	locks *rangelock.Locks
	log   *slog.Logger

	st nsCounters
}

// nsCounters are the namespace's I/O counters for the SMART / Health
// Information log page, counted when a command completes successfully.
type nsCounters struct {
	units512Read, units512Written atomic.Uint64
	readCmds, writeCmds           atomic.Uint64
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

// NGUID is the namespace globally unique identifier.
func (n *Namespace) NGUID() [16]byte { return n.cfg.NGUID }

// UUID is the namespace UUID.
func (n *Namespace) UUID() [16]byte { return n.cfg.UUID }

// WriteCache reports whether the volume's volatile write cache is on, which
// is what Get Features Volatile Write Cache answers.
func (n *Namespace) WriteCache() bool { return n.vol.WriteCache() }

// SetWriteCache turns the volume's volatile write cache on or off (turning
// it off flushes first) and persists the choice, so that it survives a
// restart like the SCSI WCE bit does.
func (n *Namespace) SetWriteCache(on bool) error {
	if err := n.vol.SetWriteCache(on); err != nil {
		return fmt.Errorf("namespace %d: set write cache %v: %w", n.cfg.NSID, on, err)
	}
	if save := n.cfg.SaveWriteCache; save != nil {
		if err := save(on); err != nil {
			return fmt.Errorf("namespace %d: save write cache %v: %w", n.cfg.NSID, on, err)
		}
	}
	return nil
}

// thin reports whether the engine can deallocate blocks, which makes the
// namespace thin provisioned and Dataset Management deallocate real.
func (n *Namespace) thin() bool { return n.vol.Limits().MaxUnmap > 0 }

// atomicBlocks is how many blocks one write may span and still be
// all-or-nothing across a power failure, at most what the 16-bit 0's based
// NAWUPF field holds.
func (n *Namespace) atomicBlocks() uint64 {
	bs := int64(n.vol.BlockSize())
	a := n.vol.Limits().AtomicWriteMax / bs
	return uint64(min(max(a, 1), 1<<16))
}

// identifyContext is what Identify Namespace needs to know about the
// controller and subsystem asking.
type identifyContext struct {
	// multiController: the subsystem may attach the namespace to more
	// than one controller (NMIC bit 0).
	multiController bool
}

// Identify Namespace (NVM command set) field offsets.
const (
	idnsNSZE    = 0
	idnsNCAP    = 8
	idnsNUSE    = 16
	idnsNSFEAT  = 24
	idnsNLBAF   = 25
	idnsFLBAS   = 26
	idnsNMIC    = 30
	idnsDLFEAT  = 33
	idnsNAWUN   = 34
	idnsNAWUPF  = 36
	idnsNACWU   = 38
	idnsNPWG    = 64
	idnsNPWA    = 66
	idnsNPDG    = 68
	idnsNPDA    = 70
	idnsNOWS    = 72
	idnsNSATTR  = 99
	idnsNGUID   = 104
	idnsEUI64   = 120
	idnsLBAF0   = 128
	nsfeatThin  = 1 << 0 // THINP
	nsfeatAtom  = 1 << 1 // NSABP: NAWUN, NAWUPF and NACWU are the namespace's
	nsfeatNoUID = 1 << 3 // UIDREUSE: NGUID and EUI64 are never reused
	nsfeatOpt   = 1 << 4 // OPTPERF: NPWG, NPWA, NPDG, NPDA and NOWS are valid
)

// identify builds the Identify Namespace data structure (CNS 00h).
func (n *Namespace) identify(ic identifyContext) [4096]byte {
	var b [4096]byte
	le := binary.LittleEndian
	bs := int64(n.vol.BlockSize())
	lim := n.vol.Limits()
	blocks := uint64(n.vol.Size() / bs)
	le.PutUint64(b[idnsNSZE:], blocks)
	le.PutUint64(b[idnsNCAP:], blocks)
	// NUSE would be the allocated blocks of a thin volume, which only a
	// walk of the whole allocation map tells; the spec allows reporting
	// the size, and Linux does not look.
	le.PutUint64(b[idnsNUSE:], blocks)

	// Identifiers come from the catalog and are never reused.
	feat := byte(nsfeatNoUID)
	if n.thin() {
		feat |= nsfeatThin
	}
	if a := n.atomicBlocks(); a > 1 {
		// The undo FIFO makes a write of up to AtomicWriteMax
		// all-or-nothing across a crash, and writes of the same blocks
		// are never interleaved inside one engine call, so all three
		// units are the engine's atomic size. No atomic boundaries
		// (NABSN, NABO, NABSPF zero).
		feat |= nsfeatAtom
		le.PutUint16(b[idnsNAWUN:], uint16(a-1))
		le.PutUint16(b[idnsNAWUPF:], uint16(a-1))
		le.PutUint16(b[idnsNACWU:], uint16(a-1))
	}
	if opt := lim.OptimalTransfer / bs; opt > 0 {
		// Only NOWS says something: the engine has no write or
		// deallocate granularity beyond one block, and Linux turns NPWG
		// into the physical block size, which must stay one block.
		feat |= nsfeatOpt
		le.PutUint16(b[idnsNPWG:], 0)
		le.PutUint16(b[idnsNPWA:], 0)
		le.PutUint16(b[idnsNPDG:], 0)
		le.PutUint16(b[idnsNPDA:], 0)
		le.PutUint16(b[idnsNOWS:], uint16(min(opt, 1<<16)-1))
	}
	b[idnsNSFEAT] = feat
	b[idnsNLBAF] = 0 // one LBA format (0's based)
	b[idnsFLBAS] = 0 // format 0, no metadata
	if ic.multiController {
		b[idnsNMIC] = 1 << 0 // SHRNS: may be attached to several controllers
	}
	// Deallocated blocks read as zeroes, and Write Zeroes takes DEAC. On a
	// volume that cannot deallocate nothing ever is deallocated (Dataset
	// Management deallocate is advisory and does nothing there, and Write
	// Zeroes with DEAC writes zeroes), so the statement holds for it too.
	b[idnsDLFEAT] = 0x1 | 1<<3
	if n.vol.ReadOnly() {
		b[idnsNSATTR] = 1 << 0 // the namespace is write protected
	}
	copy(b[idnsNGUID:], n.cfg.NGUID[:])
	// EUI64 stays zero: NGUID and UUID identify the namespace.
	// LBA format 0: no metadata, LBADS = log2(block size), relative
	// performance 0 (best).
	le.PutUint32(b[idnsLBAF0:], uint32(bits.TrailingZeros64(uint64(bs)))<<16)
	return b
}

// Namespace Identification Descriptor types (NIDT).
const (
	nidtEUI64 = 0x1
	nidtNGUID = 0x2
	nidtUUID  = 0x3
	nidtCSI   = 0x4
)

// csiNVM is the NVM command set identifier.
const csiNVM = 0x0

// descriptors builds the Namespace Identification Descriptor list
// (Identify CNS 03h): NGUID, UUID and the command set identifier. The CSI
// entry is what a controller reporting NVMe 1.4 or later lists for every
// namespace; a host that does not use command sets skips it.
func (n *Namespace) descriptors() []byte {
	b := make([]byte, 4096)
	p := b
	put := func(typ byte, v []byte) {
		p[0], p[1] = typ, byte(len(v))
		copy(p[4:], v)
		p = p[4+len(v):]
	}
	put(nidtNGUID, n.cfg.NGUID[:])
	put(nidtUUID, n.cfg.UUID[:])
	put(nidtCSI, []byte{csiNVM})
	return b
}

// NamespaceStats are a namespace's I/O counters for the SMART / Health
// Information log page, in raw units so that counters of several
// namespaces add up before DataUnits rounds them.
type NamespaceStats struct {
	// Units512Read and Units512Written count 512-byte units of data read
	// by Read and Compare and written by Write (Write Zeroes and
	// deallocation do not count, as the specification says).
	Units512Read, Units512Written uint64
	// HostReadCommands counts completed Read and Compare commands;
	// HostWriteCommands completed Write and Write Zeroes commands.
	HostReadCommands, HostWriteCommands uint64
}

// DataUnits turns a count of 512-byte units into the SMART log page's Data
// Units Read/Written: thousands of units, rounded up.
func DataUnits(units512 uint64) uint64 {
	return units512/1000 + min(units512%1000, 1)
}

// stats returns the namespace's counters for the SMART log page.
func (n *Namespace) stats() NamespaceStats {
	return NamespaceStats{
		Units512Read:      n.st.units512Read.Load(),
		Units512Written:   n.st.units512Written.Load(),
		HostReadCommands:  n.st.readCmds.Load(),
		HostWriteCommands: n.st.writeCmds.Load(),
	}
}
