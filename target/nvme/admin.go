package nvme

import (
	"context"
	"encoding/binary"
	"math/bits"
	"time"
)

// Identify CNS values.
const (
	cnsNamespace       = 0x00
	cnsController      = 0x01
	cnsActiveNSList    = 0x02
	cnsNSDescriptors   = 0x03
	identifyDataLength = 4096
)

// Log page identifiers.
const (
	logError     = 0x01
	logSMART     = 0x02
	logFirmware  = 0x03
	logChangedNS = 0x04
	logEffects   = 0x05
	logDiscovery = 0x70
)

// Feature identifiers.
const (
	featArbitration  = 0x01
	featPowerMgmt    = 0x02
	featWriteCache   = 0x06
	featNumQueues    = 0x07
	featAsyncEvent   = 0x0b
	featKeepAlive    = 0x0f
	featHostID       = 0x81
	selCurrent       = 0
	selDefault       = 1
	selSaved         = 2
	selSupportedCaps = 3
)

// ONCS: Compare, Dataset Management and Write Zeroes, exactly what the
// namespaces implement.
const oncs = 1<<0 | 1<<2 | 1<<3

// mdts is Identify MDTS: the largest transfer as a power of two of the
// 4 KiB minimum page size.
func (t *Target) mdts() uint8 {
	n := min(t.cfg.MaxDataTransfer, maxIOTransfer) / 4096
	return uint8(bits.Len(uint(n)) - 1)
}

// maxTransfer is MDTS in bytes.
func (t *Target) maxTransfer() int { return 4096 << t.mdts() }

func ok() (Completion, []byte) { return Completion{}, nil }

func fail(s Status) (Completion, []byte) { return Completion{Status: s}, nil }

// admin runs an admin command.
func (c *Controller) admin(ctx context.Context, cmd *Command) (Completion, []byte) {
	op := cmd.Opcode()
	if c.discovery {
		switch op {
		case OpIdentify, OpGetLogPage, OpSetFeatures, OpGetFeatures, OpAsyncEventReq, OpKeepAlive:
		default:
			return fail(StatusInvalidOpcode.WithDNR())
		}
	}
	switch op {
	case OpIdentify:
		return c.identify(cmd)
	case OpGetLogPage:
		return c.getLogPage(cmd)
	case OpGetFeatures:
		return c.getFeatures(cmd)
	case OpSetFeatures:
		return c.setFeatures(cmd)
	case OpKeepAlive:
		c.touch()
		return ok()
	case OpAsyncEventReq:
		return c.asyncEventRequest(ctx, cmd), nil
	case OpAbort:
		return c.abort(cmd), nil
	}
	return fail(StatusInvalidOpcode.WithDNR())
}

// checkLength makes sure the host's buffer (the SGL length) is exactly
// what the command returns, as nvmet does: a transport would otherwise
// send more or less than the host expects.
func checkLength(cmd *Command, n int) bool { return int(cmd.DataLength()) == n }

func (c *Controller) identify(cmd *Command) (Completion, []byte) {
	if !checkLength(cmd, identifyDataLength) {
		return fail(StatusDataSGLLength.WithDNR())
	}
	cns := uint8(cmd.CDW(10))
	nsid := cmd.NSID()
	if c.discovery {
		if cns != cnsController {
			return fail(StatusInvalidField.WithDNR())
		}
		b := c.identifyController()
		return Completion{}, b[:]
	}
	switch cns {
	case cnsController:
		b := c.identifyController()
		return Completion{}, b[:]
	case cnsNamespace:
		if nsid == 0 || nsid > maxNSID {
			return fail(StatusInvalidNamespace.WithDNR())
		}
		ns, release, found := c.sub.acquire(nsid)
		if !found {
			// An inactive NSID in range: a zero-filled structure.
			return Completion{}, make([]byte, identifyDataLength)
		}
		defer release()
		b := ns.identify(identifyContext{multiController: c.sub.multiController()})
		return Completion{}, b[:]
	case cnsActiveNSList:
		if nsid >= 0xfffffffe {
			return fail(StatusInvalidNamespace.WithDNR())
		}
		b := make([]byte, identifyDataLength)
		i := 0
		for _, ns := range c.sub.Namespaces() {
			if ns.ID() > nsid && i < identifyDataLength/4 {
				binary.LittleEndian.PutUint32(b[4*i:], ns.ID())
				i++
			}
		}
		return Completion{}, b
	case cnsNSDescriptors:
		ns, release, found := c.sub.acquire(nsid)
		if !found {
			return fail(StatusInvalidNamespace.WithDNR())
		}
		defer release()
		b := make([]byte, identifyDataLength)
		copy(b, ns.descriptors())
		return Completion{}, b
	}
	return fail(StatusInvalidField.WithDNR())
}

// putASCII writes s into b space-padded, as Identify's SN, MN and FR are.
func putASCII(b []byte, s string) {
	for i := range b {
		if i < len(s) && s[i] >= 0x20 && s[i] < 0x7f {
			b[i] = s[i]
		} else {
			b[i] = ' '
		}
	}
}

// identifyController builds the Identify Controller data structure.
func (c *Controller) identifyController() [identifyDataLength]byte {
	var b [identifyDataLength]byte
	le := binary.LittleEndian
	t := c.t
	sub := c.sub
	putASCII(b[4:24], sub.cfg.Serial)
	putASCII(b[24:64], sub.cfg.Model)
	putASCII(b[64:72], sub.cfg.Firmware)
	b[72] = 6 // RAB: arbitration burst of 64 commands
	// IEEE OUI left zero: Anvil has none registered.
	if sub.multiController() {
		b[76] = 1 << 1 // CMIC: may have two or more controllers
	}
	b[77] = t.mdts()
	le.PutUint16(b[78:], c.id)
	le.PutUint32(b[80:], version)
	if c.discovery {
		le.PutUint32(b[92:], aenDiscoveryChange) // OAES
		b[111] = 2                               // CNTRLTYPE: discovery
	} else {
		le.PutUint32(b[92:], aenNamespaceAttr) // OAES
		b[111] = 1                             // CNTRLTYPE: I/O controller
	}
	// CTRATT: 128-bit host identifier, traffic based keep alive.
	le.PutUint32(b[96:], 1<<0|1<<6)
	le.PutUint16(b[256:], 0) // OACS: no optional admin commands
	b[258] = abortLimit - 1  // ACL
	b[259] = aerLimit - 1    // AERL
	b[260] = 1<<0 | 1<<1     // FRMW: slot 1 read-only, one slot
	b[261] = 1<<1 | 1<<2     // LPA: commands supported and effects, extended data
	b[262] = errLogSize - 1  // ELPE
	b[263] = 0               // NPSS: one power state
	le.PutUint16(b[320:], kasUnits)
	b[512] = 0x66 // SQES
	b[513] = 0x44 // CQES
	le.PutUint16(b[514:], uint16(min(t.cfg.MaxQueueEntries, 0xffff)))
	if !c.discovery {
		le.PutUint32(b[516:], maxNSID) // NN
		le.PutUint16(b[520:], oncs)
		le.PutUint16(b[522:], 1<<0) // FUSES: compare and write
		if c.writeCachePresent() {
			b[525] = 1 // VWC present
		}
		b[530] = 1 // NVSCC: format of vendor specific commands is standard
	}
	// SGLS: SGLs supported (no alignment), offset-based in-capsule data
	// (bit 20): the Linux host requires SGL support on fabrics.
	le.PutUint32(b[536:], 1<<0|1<<20)
	copy(b[768:1024], sub.NQN())
	// Fabrics: IOCCSZ (16-byte units of SQE plus in-capsule data), IORCSZ,
	// ICDOFF 0, FCATT 0 (dynamic controller model), MSDBD 1.
	icd := t.cfg.InCapsuleDataSize
	if c.discovery {
		icd = adminInCapsuleDataSize
	}
	le.PutUint32(b[1792:], uint32((SQESize+icd)/16))
	le.PutUint32(b[1796:], CQESize/16)
	b[1803] = 1
	// Power state 0: 25 W maximum, nominal latencies.
	le.PutUint16(b[2048:], 2500)
	le.PutUint32(b[2052:], 16) // ENLAT
	le.PutUint32(b[2056:], 4)  // EXLAT
	return b
}

// writeCachePresent reports VWC: a namespace has its volatile write cache
// on, or the subsystem has none yet (a namespace added later would
// otherwise never see a Flush from hosts that read VWC once).
func (c *Controller) writeCachePresent() bool {
	nss := c.sub.Namespaces()
	if len(nss) == 0 {
		return true
	}
	for _, ns := range nss {
		if ns.WriteCache() {
			return true
		}
	}
	return false
}

func (c *Controller) getLogPage(cmd *Command) (Completion, []byte) {
	cdw10, cdw11 := cmd.CDW(10), cmd.CDW(11)
	lid := uint8(cdw10)
	rae := cdw10&(1<<15) != 0
	numd := uint64(cdw10>>16) | uint64(cdw11&0xffff)<<16
	length := (numd + 1) * 4
	offset := uint64(cmd.CDW(12)) | uint64(cmd.CDW(13))<<32
	if length > uint64(c.t.maxTransfer()) {
		return fail(StatusInvalidField.WithDNR())
	}
	if !checkLength(cmd, int(length)) {
		return fail(StatusDataSGLLength.WithDNR())
	}
	if offset&3 != 0 {
		return fail(StatusInvalidField.WithDNR())
	}
	var page []byte
	switch {
	case c.discovery && lid == logDiscovery:
		page = c.t.discoveryLog(c)
	case c.discovery:
		return fail(StatusInvalidLogPage.WithDNR())
	case lid == logError:
		page = c.errorLog()
	case lid == logSMART:
		var st Status
		if page, st = c.smartLog(cmd.NSID()); !st.OK() {
			return fail(st)
		}
	case lid == logFirmware:
		page = make([]byte, 512)
		page[0] = 1 // AFI: slot 1 active
		putASCII(page[8:16], c.sub.cfg.Firmware)
	case lid == logChangedNS:
		page = c.changedNamespaces()
	case lid == logEffects:
		page = commandEffects()
	default:
		return fail(StatusInvalidLogPage.WithDNR())
	}
	c.logRead(lid, rae)
	out := make([]byte, length)
	if offset < uint64(len(page)) {
		copy(out, page[offset:])
	} else if offset > 0 && lid != logDiscovery {
		// Past the end of a fixed-size page.
		return fail(StatusInvalidField.WithDNR())
	}
	return Completion{}, out
}

// errorLog is the Error Information log page, newest entry first.
func (c *Controller) errorLog() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := make([]byte, 64*errLogSize)
	le := binary.LittleEndian
	for i, e := range c.errLog {
		p := b[64*i:]
		le.PutUint64(p[0:], e.count)
		le.PutUint16(p[8:], e.sqid)
		le.PutUint16(p[10:], e.cid)
		le.PutUint16(p[12:], uint16(e.status)<<1)
		le.PutUint16(p[14:], e.paramError)
		le.PutUint32(p[24:], e.nsid)
	}
	return b
}

// smartLog is the SMART / Health Information page, for one namespace or
// (NSID 0 or FFFFFFFFh) the whole controller.
func (c *Controller) smartLog(nsid uint32) ([]byte, Status) {
	var sum NamespaceStats
	add := func(ns *Namespace) {
		s := ns.stats()
		sum.Units512Read += s.Units512Read
		sum.Units512Written += s.Units512Written
		sum.HostReadCommands += s.HostReadCommands
		sum.HostWriteCommands += s.HostWriteCommands
	}
	if nsid == 0 || nsid == 0xffffffff {
		for _, ns := range c.sub.Namespaces() {
			add(ns)
		}
	} else {
		ns, release, found := c.sub.acquire(nsid)
		if !found {
			return nil, StatusInvalidNamespace.WithDNR()
		}
		add(ns)
		release()
	}
	b := make([]byte, 512)
	le := binary.LittleEndian
	le.PutUint16(b[1:], 273+40) // composite temperature, kelvin
	b[3] = 100                  // available spare
	b[4] = 10                   // available spare threshold
	le.PutUint64(b[32:], DataUnits(sum.Units512Read))
	le.PutUint64(b[48:], DataUnits(sum.Units512Written))
	le.PutUint64(b[64:], sum.HostReadCommands)
	le.PutUint64(b[80:], sum.HostWriteCommands)
	le.PutUint64(b[112:], 1) // power cycles
	le.PutUint64(b[128:], uint64(time.Since(c.t.start)/time.Hour))
	c.mu.Lock()
	le.PutUint64(b[176:], c.errCount)
	c.mu.Unlock()
	return b, StatusSuccess
}

// changedNamespaces returns the Changed Namespace List and clears it, as
// reading it does.
func (c *Controller) changedNamespaces() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := make([]byte, 4096)
	if c.changedOF {
		binary.LittleEndian.PutUint32(b, 0xffffffff)
	} else {
		for i, id := range c.changed {
			binary.LittleEndian.PutUint32(b[4*i:], id)
		}
	}
	c.changed, c.changedOF = nil, false
	return b
}

// commandEffects is the Commands Supported and Effects log page: CSUPP
// for every implemented command, LBCC for those that change the medium.
func commandEffects() []byte {
	b := make([]byte, 4096)
	const csupp, lbcc = 1 << 0, 1 << 1
	le := binary.LittleEndian
	for _, op := range []uint8{OpGetLogPage, OpIdentify, OpAbort, OpSetFeatures, OpGetFeatures, OpAsyncEventReq, OpKeepAlive} {
		le.PutUint32(b[4*int(op):], csupp)
	}
	for _, op := range []uint8{OpRead, OpCompare} {
		le.PutUint32(b[1024+4*int(op):], csupp)
	}
	for _, op := range []uint8{OpFlush, OpWrite, OpWriteZeroes, OpDatasetMgmt} {
		le.PutUint32(b[1024+4*int(op):], csupp|lbcc)
	}
	return b
}

// featureCaps are the Get Features SEL=011b capabilities: bit 2
// changeable. Nothing is saveable.
const featChangeable = 1 << 2

func (c *Controller) getFeatures(cmd *Command) (Completion, []byte) {
	cdw10 := cmd.CDW(10)
	fid := uint8(cdw10)
	sel := cdw10 >> 8 & 7
	if sel > selSupportedCaps {
		return fail(StatusInvalidField.WithDNR())
	}
	if c.discovery && fid != featAsyncEvent && fid != featKeepAlive {
		return fail(StatusInvalidField.WithDNR())
	}
	def := sel == selDefault || sel == selSaved // nothing is saveable: saved is the default
	var v uint32
	switch fid {
	case featArbitration:
		if !def {
			c.mu.Lock()
			v = c.arb
			c.mu.Unlock()
		}
	case featPowerMgmt:
		if !def {
			c.mu.Lock()
			v = c.pm
			c.mu.Unlock()
		}
	case featWriteCache:
		if def {
			v = 1
		} else if c.writeCacheOn() {
			v = 1
		}
	case featNumQueues:
		n := uint32(c.t.cfg.MaxIOQueues)
		if !def {
			c.mu.Lock()
			n = uint32(c.granted)
			c.mu.Unlock()
		}
		v = (n - 1) | (n-1)<<16
	case featAsyncEvent:
		if def {
			v = aenNamespaceAttr
			if c.discovery {
				v = aenDiscoveryChange
			}
		} else {
			c.mu.Lock()
			v = c.aenConfig
			c.mu.Unlock()
		}
	case featKeepAlive:
		if !def {
			c.mu.Lock()
			v = uint32(c.kato / time.Millisecond)
			c.mu.Unlock()
		}
	case featHostID:
		if cmd.CDW(11)&1 == 0 {
			// Only the 128-bit host identifier exists (CTRATT bit 0).
			return fail(StatusInvalidField.WithDNR())
		}
		if sel == selSupportedCaps {
			return Completion{}, nil
		}
		if !checkLength(cmd, 16) {
			return fail(StatusDataSGLLength.WithDNR())
		}
		id := c.hostID
		return Completion{}, id[:]
	default:
		return fail(StatusInvalidField.WithDNR())
	}
	if sel == selSupportedCaps {
		return Completion{DW0: featChangeable}, nil
	}
	return Completion{DW0: v}, nil
}

func (c *Controller) writeCacheOn() bool {
	for _, ns := range c.sub.Namespaces() {
		if ns.WriteCache() {
			return true
		}
	}
	return false
}

func (c *Controller) setFeatures(cmd *Command) (Completion, []byte) {
	cdw10, cdw11 := cmd.CDW(10), cmd.CDW(11)
	fid := uint8(cdw10)
	if cdw10&(1<<31) != 0 {
		return fail(StatusFeatureNotSaveable.WithDNR())
	}
	if c.discovery && fid != featAsyncEvent && fid != featKeepAlive {
		return fail(StatusInvalidField.WithDNR())
	}
	switch fid {
	case featArbitration:
		c.mu.Lock()
		c.arb = cdw11
		c.mu.Unlock()
	case featPowerMgmt:
		if cdw11&0x1f != 0 { // only power state 0 exists
			return fail(StatusInvalidField.WithDNR())
		}
		c.mu.Lock()
		c.pm = cdw11 & 0xff
		c.mu.Unlock()
	case featWriteCache:
		on := cdw11&1 != 0
		for _, ns := range c.sub.Namespaces() {
			if err := ns.SetWriteCache(on); err != nil {
				c.log.Error("nvme: set volatile write cache", "nsid", ns.ID(), "on", on, "err", err)
				return fail(StatusInternal)
			}
		}
	case featNumQueues:
		nsqr, ncqr := cdw11&0xffff, cdw11>>16
		if nsqr == 0xffff || ncqr == 0xffff {
			return fail(StatusInvalidField.WithDNR())
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.queues) > 1 {
			return fail(StatusCommandSequence.WithDNR())
		}
		n := min(int(max(nsqr, ncqr))+1, c.t.cfg.MaxIOQueues)
		c.granted = n
		c.queuesSet = true
		return Completion{DW0: uint32(n-1) | uint32(n-1)<<16}, nil
	case featAsyncEvent:
		supported := uint32(aenSMARTMask | aenNamespaceAttr)
		if c.discovery {
			supported = aenDiscoveryChange
		}
		if cdw11&^supported != 0 {
			return fail(StatusInvalidField.WithDNR())
		}
		c.mu.Lock()
		c.aenConfig = cdw11
		c.mu.Unlock()
	case featKeepAlive:
		c.mu.Lock()
		c.kato = time.Duration(cdw11) * time.Millisecond
		c.armKeepAlive()
		c.mu.Unlock()
	case featHostID:
		// The host identifier comes from Connect on Fabrics.
		return fail(StatusCommandSequence.WithDNR())
	default:
		return fail(StatusInvalidField.WithDNR())
	}
	return ok()
}
