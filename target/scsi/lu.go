package scsi

import (
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/anvilproject/anvil/engine"
	"github.com/anvilproject/anvil/internal/rangelock"
)

// LUConfig describes a logical unit's identity as INQUIRY reports it.
type LUConfig struct {
	// VendorID is the T10 vendor identification, at most 8 ASCII
	// characters (padded with spaces), e.g. "ANVIL".
	VendorID string
	// ProductID is the product identification, at most 16 characters.
	ProductID string
	// Revision is the product revision level, at most 4 characters.
	Revision string
	// Serial is the unit serial number reported in VPD page 0x80.
	Serial string
	// NAA is the NAA designator reported in VPD page 0x83: 8 bytes (NAA 3,
	// locally assigned) or 16 bytes (NAA 6). It must be stable across
	// restarts because initiators key multipath devices on it.
	NAA []byte
	// Logger receives the unit's diagnostics; nil means slog.Default()
	// with a "volume" attribute.
	Logger *slog.Logger
	// PR is the persistent reservation state saved by SavePR before a
	// restart (APTPL); nil starts with none.
	PR *PRState
	// SavePR, when set, makes persistent reservations survivable across
	// restarts: it is called with the new state after every change made
	// while APTPL is (or was just) in effect, and must store it durably
	// before returning. nil means APTPL is not supported.
	SavePR func(PRState) error
	// SaveWriteCache, when set, is called after MODE SELECT changed the
	// volume's write cache (WCE of the caching page), to store the new
	// setting so that it survives a restart. An error fails the command;
	// the volume keeps the new setting.
	SaveWriteCache func(on bool) error
	// RangeLocks are the volume's block range locks, shared with every
	// other front end that exports the volume so that COMPARE AND WRITE
	// is atomic against their writes too; nil gives the unit its own.
	RangeLocks *rangelock.Locks
}

// maxUAs bounds a nexus's unit attention queue. SAM-5 lets a device server
// drop unit attentions when it runs out of room, as long as it keeps one.
const maxUAs = 8

// itNexusState is what a logical unit remembers about one I_T nexus: its
// queue of unit attention conditions.
type itNexusState struct {
	// tgt is the target the nexus reaches the unit through, for finding
	// the nexus's LUNs of it (PREEMPT AND ABORT).
	tgt     *Target
	pending atomic.Int32 // len(uas), read without the lock on the I/O path
	mu      sync.Mutex
	uas     []uint16 // ASC<<8|ASCQ, oldest first; sense key is always UNIT ATTENTION
}

func (s *itNexusState) add(asc uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range s.uas {
		if u == asc {
			return
		}
	}
	if len(s.uas) >= maxUAs {
		// Keep the newest; the initiator still learns that something
		// happened, which is all SAM-5 requires on overflow.
		copy(s.uas, s.uas[1:])
		s.uas = s.uas[:len(s.uas)-1]
	}
	s.uas = append(s.uas, asc)
	s.pending.Store(int32(len(s.uas)))
}

// pop removes and returns the oldest unit attention, if any.
func (s *itNexusState) pop() (uint16, bool) {
	if s.pending.Load() == 0 {
		return 0, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.uas) == 0 {
		return 0, false
	}
	u := s.uas[0]
	s.uas = append(s.uas[:0], s.uas[1:]...)
	s.pending.Store(int32(len(s.uas)))
	return u, true
}

// remove drops every queued unit attention equal to asc.
func (s *itNexusState) remove(asc uint16) {
	if s.pending.Load() == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.uas[:0]
	for _, u := range s.uas {
		if u != asc {
			out = append(out, u)
		}
	}
	s.uas = out
	s.pending.Store(int32(len(s.uas)))
}

// LogicalUnit is one SCSI logical unit (a direct-access block device) backed
// by an engine.Volume. One LogicalUnit may be mapped into several targets;
// its unit attentions and reservations are kept per I_T nexus.
type LogicalUnit struct {
	vol    engine.Volume
	cfg    LUConfig
	log    *slog.Logger
	serial string

	// nexuses maps *Nexus to *itNexusState. A sync.Map keeps the lookup on
	// every command lock-free.
	nexuses sync.Map

	// dsense is the control mode page's D_SENSE bit: descriptor-format
	// sense data when set.
	dsense atomic.Bool
	// swp is the control mode page's SWP bit (software write protect).
	swp atomic.Bool
	// modeMu serializes MODE SELECT so that a change and its unit
	// attentions to the other nexuses are one step.
	modeMu sync.Mutex

	// resMu guards reservedBy, the holder of a RESERVE(6)/(10)
	// reservation. resHeld mirrors reservedBy != nil for the I/O path.
	resMu      sync.Mutex
	reservedBy *Nexus
	resHeld    atomic.Bool

	// ranges are the block range locks: every command that writes the
	// medium holds the blocks it writes, COMPARE AND WRITE and ORWRITE
	// exclusively, so that their read-modify-write is atomic with respect
	// to every other write of those blocks. They are LUConfig.RangeLocks
	// when the volume is exported by another front end too.
	ranges *rangelock.Locks

	// pr is the persistent reservation state.
	pr prState

	// copies holds EXTENDED COPY results for RECEIVE COPY RESULTS.
	copies copyResults

	// lost remembers the unit attentions owed to I_T nexuses that ended
	// (by nexusKey), for when they come back. lostMu also makes the
	// creation of a nexus's state single-flight.
	lostMu sync.Mutex
	lost   map[string][]uint16
}

// NewLogicalUnit returns a logical unit serving vol with the identity cfg.
func NewLogicalUnit(vol engine.Volume, cfg LUConfig) *LogicalUnit {
	lu := &LogicalUnit{vol: vol, cfg: cfg, log: cfg.Logger, ranges: cfg.RangeLocks}
	if lu.ranges == nil {
		lu.ranges = new(rangelock.Locks)
	}
	if lu.log == nil {
		lu.log = slog.Default().With("volume", vol.Name())
	}
	lu.serial = cfg.Serial
	if lu.serial == "" {
		lu.serial = vol.Name()
	}
	lu.pr.restore(cfg.PR)
	return lu
}

// Volume returns the volume the logical unit serves.
func (lu *LogicalUnit) Volume() engine.Volume { return lu.vol }

// CapacityChanged establishes a CAPACITY DATA HAS CHANGED unit attention for
// every I_T nexus that knows the logical unit. Call it after resizing the
// volume.
func (lu *LogicalUnit) CapacityChanged() {
	lu.broadcastUA(nil, ascCapacityDataChanged)
}

// SoftThresholdReached establishes a THIN PROVISIONING SOFT THRESHOLD
// REACHED unit attention for every I_T nexus that knows the logical unit
// (SBC-4 4.7.3.7.3). Call it once each time the space backing a thin
// volume crosses its warning threshold.
func (lu *LogicalUnit) SoftThresholdReached() {
	lu.broadcastUA(nil, ascSoftThresholdReached)
}

// broadcastUA queues asc for every known nexus except skip.
func (lu *LogicalUnit) broadcastUA(skip *Nexus, asc uint16) {
	lu.nexuses.Range(func(k, v any) bool {
		if k.(*Nexus) != skip {
			v.(*itNexusState).add(asc)
		}
		return true
	})
}

// nexusState returns the state for n, creating it on first contact. A new
// nexus starts with POWER ON, RESET, OR BUS DEVICE RESET OCCURRED: from its
// point of view the logical unit has just come up. A nexus with the name
// of one that was lost (the same initiator port, e.g. the same ISID, on
// the same target port) is the same I_T nexus coming back: it gets I_T
// NEXUS LOSS OCCURRED instead, followed by whatever was queued for it
// meanwhile (SPC-4 6.x, SAM-5 6.3.4).
func (lu *LogicalUnit) nexusState(t *Target, n *Nexus) *itNexusState {
	if v, ok := lu.nexuses.Load(n); ok {
		return v.(*itNexusState)
	}
	// Slow path, once per nexus: lostMu makes creation single-flight, so
	// concurrent first commands cannot both consume the lost queue.
	lu.lostMu.Lock()
	defer lu.lostMu.Unlock()
	if v, ok := lu.nexuses.Load(n); ok {
		return v.(*itNexusState)
	}
	s := &itNexusState{tgt: t}
	id := nexusKey(n)
	if q, ok := lu.lost[id]; ok {
		s.uas = q
		delete(lu.lost, id)
	} else {
		s.uas = append(s.uas, ascPowerOnReset)
	}
	s.pending.Store(int32(len(s.uas)))
	lu.nexuses.Store(n, s)
	return s
}

// maxLostNexuses bounds how many lost I_T nexuses a unit remembers; beyond
// it some are forgotten and come back as new nexuses (power-on UA), which
// still tells their initiators that state may have been lost.
const maxLostNexuses = 1024

func nexusKey(n *Nexus) string { return n.InitiatorPort + "\x00" + n.TargetPort }

// forget drops what the unit knows about n and releases its RESERVE
// reservation, remembering n's name so that its return is reported as an
// I_T nexus loss.
func (lu *LogicalUnit) forget(n *Nexus) {
	lu.nexuses.Delete(n)
	lu.resMu.Lock()
	if lu.reservedBy == n {
		lu.reservedBy = nil
		lu.resHeld.Store(false)
	}
	lu.resMu.Unlock()
	if n.InitiatorPort == "" {
		return
	}
	lu.lostMu.Lock()
	defer lu.lostMu.Unlock()
	if lu.lost == nil {
		lu.lost = map[string][]uint16{}
	}
	id := nexusKey(n)
	lu.lost[id] = []uint16{ascNexusLoss}
	for old := range lu.lost {
		if len(lu.lost) <= maxLostNexuses {
			break
		}
		if old != id {
			delete(lu.lost, old)
		}
	}
}

// queueForLost appends asc to the queue of the lost nexus named id, so the
// initiator hears about it when it comes back. It reports whether id was
// a lost nexus.
func (lu *LogicalUnit) queueForLost(id string, asc uint16) bool {
	lu.lostMu.Lock()
	defer lu.lostMu.Unlock()
	q, ok := lu.lost[id]
	if ok && len(q) < maxUAs && !slices.Contains(q, asc) {
		lu.lost[id] = append(q, asc)
	}
	return ok
}

// reset performs a logical unit reset's side effects: the reservation is
// released and every nexus, the requester's included (SAM-5 6.3.3: the
// unit attention goes to all I_T nexuses), gets a unit attention asc.
func (lu *LogicalUnit) reset(asc uint16, modeDefaults bool) {
	lu.resMu.Lock()
	lu.reservedBy = nil
	lu.resHeld.Store(false)
	lu.resMu.Unlock()
	if modeDefaults {
		lu.modeMu.Lock()
		lu.dsense.Store(false)
		lu.swp.Store(false)
		lu.modeMu.Unlock()
	}
	lu.broadcastUA(nil, asc)
}

// reservationConflict reports whether n is locked out by another nexus's
// RESERVE reservation.
func (lu *LogicalUnit) reservationConflict(n *Nexus) bool {
	if !lu.resHeld.Load() {
		return false
	}
	lu.resMu.Lock()
	defer lu.resMu.Unlock()
	return lu.reservedBy != nil && lu.reservedBy != n
}

// blocks returns the capacity in logical blocks.
func (lu *LogicalUnit) blocks() uint64 {
	return uint64(lu.vol.Size()) / uint64(lu.vol.BlockSize())
}
