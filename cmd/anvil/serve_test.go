package main

import "testing"

func TestDataOutBudget(t *testing.T) {
	const cache = 1 << 30
	if got := dataOutBudget(0, cache); got != cache/4 {
		t.Errorf("automatic Data-Out budget with a %d-byte cache is %d, want a quarter, %d", cache, got, cache/4)
	}
	if got := dataOutBudget(64<<20, cache); got != 64<<20 {
		t.Errorf("configured Data-Out budget 64 MiB became %d", got)
	}
}
