package scsi

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Mode pages (SPC-4 7.5, SBC-3 6.4).
const (
	pageCaching     = 0x08
	pageControl     = 0x0a
	pageInfoExcept  = 0x1c
	pageAll         = 0x3f
	subpageAll      = 0xff
	pcCurrent       = 0
	pcChangeable    = 1
	pcDefault       = 2
	pcSaved         = 3
	deviceSpecWP    = 0x80 // device-specific parameter: WP
	deviceSpecDPOFU = 0x10 // device-specific parameter: DPOFUA
)

// modePageCodes lists the pages in the order MODE SENSE returns them for
// "all pages".
var modePageCodes = []byte{pageCaching, pageControl, pageInfoExcept}

// modePage renders one page for page control pc. Only the bits the
// changeable mask has set may differ from the current values in MODE
// SELECT.
func (lu *LogicalUnit) modePage(code byte, pc int) []byte {
	switch code {
	case pageCaching:
		b := make([]byte, 20)
		b[0], b[1] = pageCaching, byte(len(b)-2)
		switch pc {
		case pcCurrent:
			if lu.vol.WriteCache() {
				b[2] |= 0x04 // WCE
			}
		case pcChangeable, pcDefault:
			b[2] |= 0x04
		}
		return b
	case pageControl:
		b := make([]byte, 12)
		b[0], b[1] = pageControl, byte(len(b)-2)
		switch pc {
		case pcCurrent:
			if lu.dsense.Load() {
				b[2] |= 0x04 // D_SENSE
			}
			if lu.swp.Load() {
				b[4] |= 0x08 // SWP
			}
		case pcChangeable:
			b[2] |= 0x04
			b[4] |= 0x08
		}
		if pc != pcChangeable {
			// QUEUE ALGORITHM MODIFIER 1: commands may be reordered; the
			// initiator orders what it needs ordered.
			b[3] = 0x10
			binary.BigEndian.PutUint16(b[8:], 0xffff) // BUSY TIMEOUT PERIOD: unlimited
		}
		return b
	case pageInfoExcept:
		b := make([]byte, 12)
		b[0], b[1] = pageInfoExcept, byte(len(b)-2)
		if pc != pcChangeable {
			b[2] = 0x08 // DEXCPT: no informational exception reporting
		}
		return b
	}
	return nil
}

func (x *task) modeSense() error {
	lu := x.lu
	six := x.cdb[0] == opModeSense6
	dbd := x.cdb[1]&0x08 != 0
	llbaa := !six && x.cdb[1]&0x10 != 0
	pc := int(x.cdb[2] >> 6)
	page := x.cdb[2] & 0x3f
	subpage := x.cdb[3]
	var alloc int
	if six {
		alloc = int(x.cdb[4])
	} else {
		alloc = int(binary.BigEndian.Uint16(x.cdb[7:]))
	}
	if pc == pcSaved {
		return errSavingNotSupp
	}
	var pages []byte
	switch {
	case page == pageAll:
		if subpage != 0 && subpage != subpageAll {
			return invalidCDB(3, -1)
		}
		for _, c := range modePageCodes {
			pages = append(pages, lu.modePage(c, pc)...)
		}
	default:
		p := lu.modePage(page, pc)
		if p == nil {
			return invalidCDB(2, 5)
		}
		if subpage != 0 && subpage != subpageAll {
			return invalidCDB(3, -1)
		}
		pages = p
	}
	var bd []byte
	if !dbd {
		bs := uint64(lu.vol.BlockSize())
		nb := lu.blocks()
		if llbaa {
			bd = make([]byte, 16)
			binary.BigEndian.PutUint64(bd, nb)
			binary.BigEndian.PutUint32(bd[12:], uint32(bs))
		} else {
			bd = make([]byte, 8)
			binary.BigEndian.PutUint32(bd, uint32(min(nb, 0xffffffff)))
			binary.BigEndian.PutUint32(bd[4:], uint32(bs)) // byte 4 (density) stays 0
		}
	}
	devSpec := byte(deviceSpecDPOFU)
	if lu.vol.ReadOnly() || lu.swp.Load() {
		devSpec |= deviceSpecWP
	}
	var b []byte
	if six {
		b = make([]byte, 4, 4+len(bd)+len(pages))
		b[2] = devSpec
		b[3] = byte(len(bd))
	} else {
		b = make([]byte, 8, 8+len(bd)+len(pages))
		b[3] = devSpec
		if llbaa && len(bd) > 0 {
			b[4] = 0x01 // LONGLBA
		}
		binary.BigEndian.PutUint16(b[6:], uint16(len(bd)))
	}
	b = append(b, bd...)
	b = append(b, pages...)
	if six {
		b[0] = byte(len(b) - 1)
	} else {
		binary.BigEndian.PutUint16(b, uint16(len(b)-2))
	}
	return x.dataIn(b, alloc)
}

// modeSelect handles MODE SELECT(6) and (10). It validates the whole
// parameter list before applying anything, so a rejected list changes
// nothing.
func (x *task) modeSelect() error {
	lu := x.lu
	six := x.cdb[0] == opModeSelect6
	if x.cdb[1]&0x01 != 0 {
		return invalidCDB(1, 0) // SP: we cannot save parameters
	}
	var pll int
	if six {
		pll = int(x.cdb[4])
	} else {
		pll = int(binary.BigEndian.Uint16(x.cdb[7:]))
	}
	x.res.TransferLength = pll
	if pll == 0 {
		return nil
	}
	if len(x.cmd.DataOut) < pll {
		return errParamLength
	}
	p := x.cmd.DataOut[:pll]
	hdr := 8
	if six {
		hdr = 4
	}
	if pll < hdr {
		return errParamLength
	}
	var bdl int
	long := false
	if six {
		if p[1] != 0 {
			return invalidParam(1, -1) // MEDIUM TYPE
		}
		bdl = int(p[3])
	} else {
		if p[2] != 0 {
			return invalidParam(2, -1)
		}
		long = p[4]&0x01 != 0
		bdl = int(binary.BigEndian.Uint16(p[6:]))
	}
	if hdr+bdl > pll {
		return errParamLength
	}
	descLen := 8
	if long {
		descLen = 16
	}
	if bdl%descLen != 0 || bdl > descLen {
		return invalidParam(hdr-1, -1)
	}
	if bdl > 0 {
		d := p[hdr : hdr+bdl]
		var nb uint64
		var bl uint32
		if long {
			nb, bl = binary.BigEndian.Uint64(d), binary.BigEndian.Uint32(d[12:])
		} else {
			nb, bl = uint64(binary.BigEndian.Uint32(d)), binary.BigEndian.Uint32(d[4:])&0xffffff
		}
		if bl != uint32(lu.vol.BlockSize()) {
			return invalidParam(hdr+descLen-3, -1)
		}
		if nb != 0 && nb != lu.blocks() && !(nb == 0xffffffff && !long) {
			return invalidParam(hdr, -1)
		}
	}

	type change struct {
		code byte
		data []byte
	}
	var changes []change
	off := hdr + bdl
	for off < pll {
		if pll-off < 2 {
			return errParamLength
		}
		code := p[off] & 0x3f
		if p[off]&0x40 != 0 { // SPF: we have no subpages
			return invalidParam(off, 6)
		}
		cur := lu.modePage(code, pcCurrent)
		if cur == nil {
			return invalidParam(off, 5)
		}
		plen := int(p[off+1]) + 2
		if plen != len(cur) {
			return invalidParam(off+1, -1)
		}
		if off+plen > pll {
			return errParamLength
		}
		mask := lu.modePage(code, pcChangeable)
		np := p[off : off+plen]
		for i := 2; i < plen; i++ {
			if diff := (np[i] ^ cur[i]) &^ mask[i]; diff != 0 {
				return invalidParam(off+i, 7-bits.LeadingZeros8(diff))
			}
		}
		changes = append(changes, change{code, np})
		off += plen
	}

	lu.modeMu.Lock()
	defer lu.modeMu.Unlock()
	changed := false
	for _, c := range changes {
		switch c.code {
		case pageCaching:
			wce := c.data[2]&0x04 != 0
			if wce != lu.vol.WriteCache() {
				if err := lu.vol.SetWriteCache(wce); err != nil {
					return fmt.Errorf("mode select: set write cache %v: %w", wce, err)
				}
				changed = true
				if save := lu.cfg.SaveWriteCache; save != nil {
					if err := save(wce); err != nil {
						return fmt.Errorf("mode select: save write cache %v: %w", wce, err)
					}
				}
			}
		case pageControl:
			d := c.data[2]&0x04 != 0
			if lu.dsense.Swap(d) != d {
				changed = true
			}
			s := c.data[4]&0x08 != 0
			if lu.swp.Swap(s) != s {
				changed = true
			}
		}
	}
	if changed {
		lu.broadcastUA(x.n, ascModeParametersChanged)
	}
	return nil
}
