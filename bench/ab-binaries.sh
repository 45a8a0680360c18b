#!/usr/bin/env bash
# A/B two anvil binaries on one workload, alternating them round by round
# so that both see the same machine: each round starts a fresh daemon on a
# fresh data directory, pre-fills 160 MiB of the demo volume, then times
# one qemu-img bench run and reads the daemon's CPU time from /proc.
#
#   OLD=/path/anvil-a NEW=/path/anvil-b bench/ab-binaries.sh
#   ROUNDS=8 DEPTH=16 SIZE=4096 COUNT=40000 MODE=-w ...   (the defaults)
#
# Prints one line per run: round, binary, wall time, daemon CPU µs per
# request. Needs qemu-utils and libiscsi-bin (scripts/install-deps.sh).
set -euo pipefail
: "${OLD:?set OLD to the first binary}" "${NEW:?set NEW to the second binary}"
ROUNDS=${ROUNDS:-8} DEPTH=${DEPTH:-16} SIZE=${SIZE:-4096} COUNT=${COUNT:-40000} MODE=${MODE:--w}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tck=$(getconf CLK_TCK)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
for r in $(seq 1 "$ROUNDS"); do
	for name in OLD NEW; do
		bin=${!name}
		d="$scratch/$name.$r"
		"$bin" serve --data-dir "$d" --iscsi-listen "127.0.0.1:$port" --api-listen 127.0.0.1:0 >"$scratch/log" 2>&1 &
		pid=$!
		for _ in $(seq 100); do iscsi-ls "iscsi://127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
		url="iscsi://127.0.0.1:$port/iqn.2026-11.io.anvil:demo/0"
		qemu-img bench -f raw -t none -w -c 1280 -d 8 -s 131072 -S 131072 "$url" >/dev/null
		c0=$(cpu $pid) t0=$(date +%s.%N)
		qemu-img bench -f raw -t none $MODE -c "$COUNT" -d "$DEPTH" -s "$SIZE" -S "$SIZE" "$url" >/dev/null
		t1=$(date +%s.%N) c1=$(cpu $pid)
		printf '%d %s time=%.3fs cpu_us_per_request=%.2f\n' "$r" "$name" \
			"$(echo "$t1 - $t0" | bc)" "$(echo "($c1 - $c0) * 1000000 / $tck / $COUNT" | bc -l)"
		kill $pid
		wait $pid 2>/dev/null || true
		rm -rf "$d"
	done
done
