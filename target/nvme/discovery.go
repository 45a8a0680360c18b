package nvme

import (
	"encoding/binary"
	"net"
	"strings"
)

// Discovery log page layout.
const (
	discHeaderSize = 1024
	discEntrySize  = 1024

	subtypeNVMe = 2 // an NVM subsystem entry

	// TREQ: secure channel not required (bits 1:0 = 10b), and the
	// controller supports disabling SQ flow control (bit 2), as nvmet's
	// TCP ports advertise.
	treqNotRequired   = 0x2
	treqDisableSQFlow = 0x4

	// ASQSZ is the admin queue size a host should ask for.
	discASQSZ = 32
)

// discoveryLog builds the discovery log page for controller c: one entry
// per I/O port and subsystem c's host may reach.
func (t *Target) discoveryLog(c *Controller) []byte {
	subs := t.subsystems()
	var set strings.Builder
	for _, s := range subs {
		set.WriteString(s.NQN())
		set.WriteByte(0)
	}
	t.mu.Lock()
	ports := t.ports
	if set.String() != t.lastDisc {
		// Subsystems came or went without DiscoveryChanged: the log
		// still changes generation.
		t.lastDisc = set.String()
		t.genctr++
	}
	genctr := t.genctr
	t.mu.Unlock()

	var entries [][]byte
	for _, p := range ports {
		if p.Discovery {
			continue
		}
		for _, s := range subs {
			if !s.Allows(c.hostNQN) {
				continue
			}
			entries = append(entries, discoveryEntry(p, s.NQN(), c.local))
		}
	}
	b := make([]byte, discHeaderSize+discEntrySize*len(entries))
	binary.LittleEndian.PutUint64(b[0:], genctr)
	binary.LittleEndian.PutUint64(b[8:], uint64(len(entries)))
	// RECFMT 0.
	for i, e := range entries {
		copy(b[discHeaderSize+discEntrySize*i:], e)
	}
	return b
}

// discoveryEntry is one Discovery Log Page Entry.
func discoveryEntry(p Port, nqn string, local net.Addr) []byte {
	e := make([]byte, discEntrySize)
	le := binary.LittleEndian
	tr := p.TransportType
	if tr == 0 {
		tr = TransportTCP
	}
	addr, fam := p.Address, p.AddressFamily
	if isWildcard(addr) {
		if ta, ok := local.(*net.TCPAddr); ok && ta != nil {
			addr = ta.IP.String()
			if ta.IP.To4() != nil {
				addr = ta.IP.To4().String()
				fam = AddrIPv4
			} else {
				fam = AddrIPv6
			}
		}
	}
	if fam == 0 {
		fam = AddrIPv4
		if ip := net.ParseIP(addr); ip != nil && ip.To4() == nil {
			fam = AddrIPv6
		}
	}
	e[0] = tr
	e[1] = fam
	e[2] = subtypeNVMe
	e[3] = treqNotRequired | treqDisableSQFlow
	le.PutUint16(e[4:], p.ID)
	le.PutUint16(e[6:], 0xffff) // CNTLID: dynamic controller model
	le.PutUint16(e[8:], discASQSZ)
	padSpace(e[32:64], p.ServiceID)
	copy(e[256:512], nqn)
	padSpace(e[512:768], addr)
	// TSAS for TCP: SECTYPE 0 (no security), the rest reserved.
	return e
}

func isWildcard(addr string) bool {
	if addr == "" {
		return true
	}
	ip := net.ParseIP(addr)
	return ip != nil && ip.IsUnspecified()
}

// padSpace writes s into b, padded with spaces as TRSVCID and TRADDR are.
func padSpace(b []byte, s string) {
	n := copy(b, s)
	for i := n; i < len(b); i++ {
		b[i] = ' '
	}
}
