package scsi

import (
	"errors"
	"testing"
)

// TestModeSelectSavesWriteCache: a MODE SELECT that changes WCE hands the
// new setting to LUConfig.SaveWriteCache, one that changes nothing does
// not call it, and a failed save fails the command.
func TestModeSelectSavesWriteCache(t *testing.T) {
	f := newFixture(t)
	var saved []bool
	var saveErr error
	f.lu.cfg.SaveWriteCache = func(on bool) error {
		saved = append(saved, on)
		return saveErr
	}
	caching := f.lu.modePage(pageCaching, pcCurrent)
	caching[2] &^= 0x04
	c, pl := modeSelect6(caching, false)
	expectGood(t, f.run(c, pl))
	if len(saved) != 1 || saved[0] {
		t.Fatalf("after WCE=0: saved %v, want [false]", saved)
	}
	expectGood(t, f.run(c, pl)) // the same page again: nothing changes
	if len(saved) != 1 {
		t.Fatalf("an unchanged WCE was saved again: %v", saved)
	}

	saveErr = errors.New("catalog full")
	caching[2] |= 0x04
	c, pl = modeSelect6(caching, false)
	if r := f.run(c, pl); r.Status == StatusGood {
		t.Fatal("MODE SELECT succeeded although saving WCE=1 failed")
	}
	if len(saved) != 2 || !saved[1] {
		t.Fatalf("after WCE=1: saved %v, want [false true]", saved)
	}
}
