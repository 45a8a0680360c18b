#!/usr/bin/env bash
# Runs Anvil's whole test suite: installs what it needs on a fresh Debian
# machine, then unit tests, fuzz seed corpora, the real-peer suites (libiscsi,
# qemu-img, iscsi-test-cu) and the Linux initiator in a qemu guest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== go vet"
go vet ./...

out=$(mktemp -d)
export ANVIL_CONFORMANCE_TABLE="$out/conformance.md"

echo "== unit tests"
# Packages outside test/ are self-contained and run in parallel.
go test -count=1 -race -timeout 30m $(go list ./... | grep -v '/test/')

echo "== crash simulator, long form"
# Thousands of random crash points (including crashes during recovery)
# against the engine's promise; the unit run above covers a few hundred.
ANVIL_CRASH_ITERS=10000 go test -count=1 -run 'TestCrashConsistency' -timeout 30m ./engine/

echo "== end-to-end tests against real peers"
# test/peers' soak mixes hostile clients, API churn and verified I/O.
export ANVIL_SOAK_DURATION="${ANVIL_SOAK_DURATION:-2m}"
# One package at a time: each boots daemons, qemu guests or iscsi-test-cu,
# and the machine has two cores.
go test -count=1 -p 1 -timeout 60m ./test/...

if [ -s "$ANVIL_CONFORMANCE_TABLE" ]; then
  echo "== iscsi-test-cu per-suite results"
  cat "$ANVIL_CONFORMANCE_TABLE"
fi
