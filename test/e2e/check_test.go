package e2e

import (
	"strings"
	"testing"

	"github.com/anvilproject/anvil/test/e2e/guestdata"
)

// goodMarkers are the markers of a passing phase for seed.
func goodMarkers(phase string, seed uint64) []string {
	raw := "raw-sha256=" + guestdata.PatternSHA256(seed, 0, RawPatternBytes)
	sum := "checksums=" + guestdata.ManifestSHA256(seed)
	if phase == PhaseWrite {
		return []string{"raw-ok " + raw, sum, "fsck-ok first", sum, "fsck-ok after-trim", sum, "raw-after-fs " + raw, "DONE"}
	}
	return []string{"raw-ok " + raw, "fsck-ok verify", sum, "DONE"}
}

func TestCheckPhase(t *testing.T) {
	const seed = 99
	for _, phase := range []string{PhaseWrite, PhaseVerify} {
		cfg := GuestConfig{Phase: phase, Seed: seed}
		if err := CheckPhase(&Boot{Markers: goodMarkers(phase, seed)}, cfg); err != nil {
			t.Fatalf("%s: good markers rejected: %v", phase, err)
		}
		// Every single marker is needed, and every value is checked.
		good := goodMarkers(phase, seed)
		for i := range good {
			dropped := append(append([]string{}, good[:i]...), good[i+1:]...)
			if !strings.HasPrefix(good[i], "checksums=") || phase == PhaseVerify {
				if err := CheckPhase(&Boot{Markers: dropped}, cfg); err == nil {
					t.Errorf("%s: passed without %q", phase, good[i])
				}
			}
			bad := append([]string{}, good...)
			bad[i] = strings.Replace(bad[i], "a", "b", 1)
			if bad[i] != good[i] && strings.Contains(good[i], "=") {
				if err := CheckPhase(&Boot{Markers: bad}, cfg); err == nil {
					t.Errorf("%s: passed with %q instead of %q", phase, bad[i], good[i])
				}
			}
		}
		if err := CheckPhase(&Boot{Markers: goodMarkers(phase, seed+1)}, cfg); err == nil {
			t.Errorf("%s: passed with another seed's data", phase)
		}
		failed := append(goodMarkers(phase, seed), "FAIL raw write")
		if err := CheckPhase(&Boot{Markers: failed}, cfg); err == nil || !strings.Contains(err.Error(), "raw write") {
			t.Errorf("%s: FAIL marker not reported: %v", phase, err)
		}
	}
}
