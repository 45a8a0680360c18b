package scsi

import (
	"context"
	"testing"
)

// FuzzExecute feeds arbitrary CDBs and data-out to a target. Whatever the
// input, Execute must not panic (the recover in Execute would hide one, so
// the test also rejects the HARDWARE ERROR it turns panics into) and must
// return a valid status with well-formed sense data.
func FuzzExecute(f *testing.F) {
	f.Add([]byte{opInquiry, 1, 0x83, 0, 255, 0}, []byte{}, byte(0))
	f.Add([]byte{opModeSelect6, 0x10, 0, 0, 16, 0}, make([]byte, 16), byte(0))
	f.Add([]byte{opUnmap, 0, 0, 0, 0, 0, 0, 0, 24, 0}, make([]byte, 24), byte(0))
	f.Add([]byte{opServiceActionIn16, saGetLBAStatus, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, []byte{}, byte(1))
	f.Fuzz(func(t *testing.T, c []byte, data []byte, lun byte) {
		vol := newMemVolume(256, 512)
		lu := NewLogicalUnit(vol, LUConfig{VendorID: "ANVIL", Serial: "F", NAA: []byte{0x30, 1, 2, 3, 4, 5, 6, 7}})
		tgt := NewTarget("iqn.2026-11.io.anvil:fuzz")
		if err := tgt.AddLUN(0, lu); err != nil {
			t.Fatal(err)
		}
		n := &Nexus{InitiatorPort: "i", TargetPort: "iqn.2026-11.io.anvil:fuzz,t,0x0001"}
		// Run the command twice: once with the power-on UA pending, once
		// without, so both the UA path and the command itself are fuzzed.
		for i := 0; i < 2; i++ {
			r := tgt.Execute(context.Background(), &Command{Nexus: n, LUN: uint64(lun % 2), CDB: c, DataOut: data})
			switch r.Status {
			case StatusGood, StatusReservationConflict:
				if r.Sense != nil {
					t.Fatalf("status %#x with sense % x", r.Status, r.Sense)
				}
			case StatusCheckCondition:
				p := parseSense(t, r.Sense)
				if p.key == SenseHardwareError {
					t.Fatalf("internal error (recovered panic?) for CDB % x", c)
				}
			default:
				t.Fatalf("unexpected status %#x for CDB % x", r.Status, c)
			}
			if len(r.DataIn) > 1<<20 {
				t.Fatalf("data-in of %d bytes for CDB % x", len(r.DataIn), c)
			}
		}
	})
}
