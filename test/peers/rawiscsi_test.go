package peers

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/anvilproject/anvil/target/iscsi/iscsitest"
)

// The tests here use iscsitest where the real peers cannot go: sending
// malformed PDUs on a logged-in connection, withholding Data-Out, and
// reading the raw bytes of a VPD page that iscsi-inq prints as text.

// rawLogin logs c in to target as initiator, straight into the operational
// stage (the demo target requires no authentication) and on to full
// feature phase, without digests and with immediate data.
func rawLogin(c *iscsitest.Conn, initiator, target string) error {
	_, err := c.Login(iscsitest.LoginOptions{
		Initiator:    initiator,
		Target:       target,
		SkipSecurity: true,
		Operational: []string{
			"HeaderDigest=None",
			"DataDigest=None",
			"MaxRecvDataSegmentLength=65536",
			"ImmediateData=Yes",
			"InitialR2T=Yes",
		},
	})
	return err
}

// inquiryVPD reads one VPD page with INQUIRY EVPD=1, retrying past a unit
// attention.
func inquiryVPD(c *iscsitest.Conn, page byte) ([]byte, error) {
	const alloc = 1024
	cdb := []byte{0x12, 0x01, page, alloc >> 8, alloc & 0xff, 0}
	for try := 0; try < 3; try++ {
		st, err := c.Read(cdb, alloc)
		if err != nil {
			return nil, err
		}
		if st.Status == 0 {
			return st.Data, nil
		}
		if st.Status == 0x02 && len(st.Sense) > 2 && st.Sense[2]&0x0f == 0x06 {
			continue // UNIT ATTENTION: a real initiator retries
		}
		return nil, fmt.Errorf("INQUIRY VPD %#x: status %#x sense % x", page, st.Status, st.Sense)
	}
	return nil, fmt.Errorf("INQUIRY VPD %#x: unit attention kept coming", page)
}

// naaDesignator returns the first NAA designator with LOGICAL UNIT
// association in a Device Identification VPD page (SPC-4 7.8.6).
func naaDesignator(page []byte) ([]byte, error) {
	if len(page) < 4 || page[1] != 0x83 {
		return nil, fmt.Errorf("not a device identification page: % x", page[:min(len(page), 8)])
	}
	end := 4 + int(binary.BigEndian.Uint16(page[2:]))
	if end > len(page) {
		return nil, fmt.Errorf("page length %d exceeds the %d bytes returned", end, len(page))
	}
	for off := 4; off+4 <= end; {
		assoc := (page[off+1] >> 4) & 0x3
		typ := page[off+1] & 0x0f
		n := int(page[off+3])
		if off+4+n > end {
			return nil, fmt.Errorf("designator at %d overruns the page", off)
		}
		if typ == 3 && assoc == 0 {
			return page[off+4 : off+4+n], nil
		}
		off += 4 + n
	}
	return nil, errors.New("no NAA designator with logical-unit association")
}
