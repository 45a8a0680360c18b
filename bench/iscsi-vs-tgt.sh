#!/usr/bin/env bash
# Benchmarks Anvil's iSCSI target against Debian's tgt, side by side, with
# qemu's iSCSI client (`qemu-img bench`), in one run:
#
#   1. builds ./cmd/anvil and starts it on a spare loopback port over a fresh
#      data directory (its 1 GiB thin demo volume, LUN 0);
#   2. starts tgtd on another loopback port with its own control port, and
#      one 1 GiB sparse file as LUN 1 (tgt's LUN 0 is its controller LU);
#   3. pre-fills both volumes with a byte pattern so that reads hit real
#      data, not holes;
#   4. runs sequential 4 KiB and 128 KiB reads and writes at queue depth 1
#      and 16 against each target, alternating targets row by row, REPEATS
#      times, and keeps the median; each write run is followed by an
#      untimed SYNCHRONIZE CACHE, so no run pays for the other target's
#      write-back;
#   5. prints a markdown table (also saved under bench/results/) and stops
#      both daemons.
#
# Environment knobs:
#   REPEATS=3         runs per row and target; the table shows the median
#   SCALE=1           multiply every request count (0.25 for a smoke run)
#   KEEP_WORK=1       keep the scratch directory (daemon logs, images)
#   ANVIL_BIN=path    use this anvil binary instead of building one
#   TGT_DEFAULTS=1    leave tgt's stock iSCSI limits (8 KiB MaxRecvDataSegmentLength,
#                     64 KiB FirstBurstLength, 256 KiB MaxBurstLength, one R2T)
#                     instead of matching Anvil's
#   ANVIL_URL=iscsi://host:port/iqn/lun
#                     benchmark an already running target in Anvil's column
#                     instead of starting one (it is then not stopped either)
#
# See bench/README.md for what the numbers mean and how to compare them.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
REPEATS=${REPEATS:-3}
SCALE=${SCALE:-1}
VOL_BYTES=$((1 << 30))
ANVIL_IQN=iqn.2026-11.io.anvil:demo
TGT_IQN=iqn.2026-11.io.anvil.bench:tgt

for tool in go qemu-img qemu-io tgtd tgtadm; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-deps.sh" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/anvil-bench.XXXXXX")
anvil_pid="" tgtd_pid="" ctl_port=""

# wait_or_kill PID NAME SECONDS: wait for PID to exit, SIGKILL it after
# SECONDS, and reap it.
wait_or_kill() {
  local pid=$1 name=$2 secs=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name (pid $pid) did not stop within $secs s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_pid() { # stop_pid PID NAME: SIGTERM, wait up to 30 s, then SIGKILL
  local pid=$1 name=$2
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  wait_or_kill "$pid" "$name" 30
}

# stop_tgtd asks tgtd to shut down the way tgt's own scripts do (it
# ignores SIGTERM while targets exist), then falls back to SIGKILL.
stop_tgtd() {
  [ -n "$tgtd_pid" ] || return 0
  kill -0 "$tgtd_pid" 2>/dev/null || return 0
  command tgtadm -C "$ctl_port" --lld iscsi --mode target --op delete --force --tid 1 >/dev/null 2>&1 || true
  command tgtadm -C "$ctl_port" --lld iscsi --mode system --op delete >/dev/null 2>&1 || true
  wait_or_kill "$tgtd_pid" tgtd 10
  tgtd_pid=""
}

cleanup() {
  local rc=$?
  stop_pid "$anvil_pid" anvil
  stop_tgtd
  if [ "${KEEP_WORK:-}" = 1 ] || [ $rc -ne 0 ]; then
    echo "scratch directory kept: $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port prints a loopback TCP port that nothing listens on now.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
}

# wait_port PORT PID NAME: wait up to 60 s for a listener, failing early if
# the daemon exits.
wait_port() {
  local port=$1 pid=$2 name=$3 i
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || { echo "$name exited during start-up; log:" >&2; cat "$work/$name.log" >&2; exit 1; }
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name did not listen on 127.0.0.1:$port within 60 s" >&2
  exit 1
}

# --- Anvil -----------------------------------------------------------------
anvil_url=${ANVIL_URL:-}
if [ -z "$anvil_url" ]; then
  anvil_bin=${ANVIL_BIN:-}
  if [ -z "$anvil_bin" ]; then
    echo "building anvil..." >&2
    (cd "$repo" && go build -o "$work/anvil" ./cmd/anvil)
    anvil_bin=$work/anvil
  fi
  anvil_port=$(free_port)
  api_port=$(free_port)
  mkdir -p "$work/anvil-data"
  "$anvil_bin" serve --data-dir "$work/anvil-data" \
    --iscsi-listen "127.0.0.1:$anvil_port" --api-listen "127.0.0.1:$api_port" \
    >"$work/anvil.log" 2>&1 &
  anvil_pid=$!
  wait_port "$anvil_port" "$anvil_pid" anvil
  anvil_url=iscsi://127.0.0.1:$anvil_port/$ANVIL_IQN/0
fi

# --- tgt -------------------------------------------------------------------
# tgtd's management socket is /var/run/tgtd/socket.<control port> (the
# "port" is only a name, at most 32767), so a private control port keeps
# this instance apart from any system tgtd or another run.
tgt_port=$(free_port)
while :; do
  ctl_port=$((10000 + RANDOM % 22000))
  [ -e "/var/run/tgtd/socket.$ctl_port" ] || break
done
truncate -s "$VOL_BYTES" "$work/tgt.img"
tgtd -f -C "$ctl_port" --iscsi "portal=127.0.0.1:$tgt_port" >"$work/tgtd.log" 2>&1 &
tgtd_pid=$!
wait_port "$tgt_port" "$tgtd_pid" tgtd
tgtadm() { command tgtadm -C "$ctl_port" --lld iscsi "$@"; }
tgtadm --mode target --op new --tid 1 --targetname "$TGT_IQN"
# Offer the initiator the same iSCSI limits on both targets, so the rows
# compare implementations rather than defaults: with tgt's stock 8 KiB
# MaxRecvDataSegmentLength and 64 KiB FirstBurstLength a 128 KiB write
# costs an R2T round trip and 16 Data-Out PDUs, while Anvil's defaults take
# it as one PDU of immediate data. Both keep InitialR2T=Yes and
# ImmediateData=Yes (the RFC 7143 defaults, and both targets' own).
tgt_limits="stock"
if [ "${TGT_DEFAULTS:-}" != 1 ]; then
  # Anvil's effective settings (defaults, ANVIL_* env, anvil.yaml), or its
  # built-in defaults when benchmarking an already running target.
  declare -A lim=([iscsi.max_recv_data_segment_length]=262144 [iscsi.first_burst_length]=262144
    [iscsi.max_burst_length]=1048576 [iscsi.max_outstanding_r2t]=16)
  if [ -n "${anvil_bin:-}" ]; then
    while read -r key value _; do
      [ -n "${lim[$key]:-}" ] && lim[$key]=$value
    done < <("$anvil_bin" serve --print-config 2>/dev/null)
  fi
  tgtadm --mode target --op update --tid 1 --name MaxRecvDataSegmentLength --value "${lim[iscsi.max_recv_data_segment_length]}"
  tgtadm --mode target --op update --tid 1 --name FirstBurstLength --value "${lim[iscsi.first_burst_length]}"
  tgtadm --mode target --op update --tid 1 --name MaxBurstLength --value "${lim[iscsi.max_burst_length]}"
  tgtadm --mode target --op update --tid 1 --name MaxOutstandingR2T --value "${lim[iscsi.max_outstanding_r2t]}"
  tgt_limits="matched to Anvil: MaxRecvDataSegmentLength=${lim[iscsi.max_recv_data_segment_length]} FirstBurstLength=${lim[iscsi.first_burst_length]} MaxBurstLength=${lim[iscsi.max_burst_length]} MaxOutstandingR2T=${lim[iscsi.max_outstanding_r2t]}"
fi
# Default rdwr backing store, no --bsoflags: buffered pread/pwrite through
# the page cache, fdatasync on SYNCHRONIZE CACHE. That is the same contract
# as Anvil's default (write-back cache, durable at SYNCHRONIZE CACHE or FUA).
tgtadm --mode logicalunit --op new --tid 1 --lun 1 --bstype rdwr --backing-store "$work/tgt.img"
tgtadm --mode target --op bind --tid 1 --initiator-address ALL
tgt_url=iscsi://127.0.0.1:$tgt_port/$TGT_IQN/1

for url in "$anvil_url" "$tgt_url"; do
  size=$(qemu-img info -f raw --output=json "$url" | sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p')
  [ "$size" = "$VOL_BYTES" ] || { echo "$url: size $size, want $VOL_BYTES" >&2; exit 1; }
done

# --- benchmark -------------------------------------------------------------
# bench_once URL RW SIZE DEPTH COUNT prints the run time in seconds.
bench_once() {
  local url=$1 rw=$2 size=$3 depth=$4 count=$5 out secs wflag=()
  [ "$rw" = write ] && wflag=(-w --pattern=90)
  # -t none: no host-side cache in qemu (cache.writeback stays on, so
  # qemu sends plain WRITEs without FUA to both targets). -S = -s makes the
  # run sequential; qemu-img wraps the offset at the end of the volume.
  out=$(qemu-img bench -f raw -t none "${wflag[@]}" -c "$count" -d "$depth" -s "$size" -S "$size" "$url" 2>&1) || {
    echo "qemu-img bench failed on $url:" >&2
    echo "$out" >&2
    return 1
  }
  secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' <<<"$out")
  [ -n "$secs" ] || { echo "unexpected qemu-img bench output: $out" >&2; return 1; }
  # After a write run, an untimed SYNCHRONIZE CACHE, so that the next run
  # (the other target's, which shares the disk and the CPUs) does not pay
  # for this target's write-back: tgt's page cache or Anvil's queued
  # epochs.
  if [ "$rw" = write ]; then
    qemu-io -f raw -t none -c flush "$url" >/dev/null 2>&1 || {
      echo "flush after the run failed on $url" >&2
      return 1
    }
  fi
  echo "$secs"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "pre-filling both volumes (1 GiB of 0xa5 each)..." >&2
prefill_count=$((VOL_BYTES / 131072))
for url in "$anvil_url" "$tgt_url"; do
  qemu-img bench -f raw -t none -w --pattern=165 -c "$prefill_count" -d 16 -s 131072 -S 131072 "$url" >/dev/null
done
# Check that the pre-fill landed: the first MiB of each LUN must be 0xa5.
head -c 1048576 /dev/zero | tr '\0' '\245' >"$work/a5.bin"
for url in "$anvil_url" "$tgt_url"; do
  rm -f "$work/head.bin"
  qemu-img dd -f raw -O raw bs=1M count=1 "if=$url" "of=$work/head.bin"
  cmp -s "$work/a5.bin" "$work/head.bin" || { echo "$url: pre-fill pattern not read back" >&2; exit 1; }
done
# Write the pre-fill back (syncfs of the scratch file system, which holds
# both backing files) so the kernel's writeback of 2 GiB of dirty pages
# does not land in the first rows.
sync -f "$work/tgt.img"

# Each row: label rw size depth base-count. Counts give a few seconds per
# run on tgt on a 2-core machine; SCALE adjusts them.
rows=(
  "4 KiB read QD1|read|4096|1|60000"
  "4 KiB read QD16|read|4096|16|120000"
  "4 KiB write QD1|write|4096|1|30000"
  "4 KiB write QD16|write|4096|16|80000"
  "128 KiB read QD1|read|131072|1|12000"
  "128 KiB read QD16|read|131072|16|24000"
  "128 KiB write QD1|write|131072|1|8000"
  "128 KiB write QD16|write|131072|16|16000"
)

mkdir -p "$repo/bench/results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
result_file=$repo/bench/results/iscsi-vs-tgt-$stamp.md
{
  echo "## Anvil vs tgt over iSCSI (qemu-img bench, sequential)"
  echo
  echo "- $(date -u +%Y-%m-%dT%H:%M:%SZ), anvil $(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo '?'), $(tgtd -V 2>&1 | head -1 | sed 's/^/tgt /'), $(qemu-img --version | head -1)"
  echo "- $(nproc) CPUs, $(uname -r), load average at start $(cut -d' ' -f1-3 /proc/loadavg); loopback; 1 GiB volumes pre-filled; median of $REPEATS runs per row, targets alternated"
  echo "- tgt: bstype rdwr, no bsoflags (page cache, fdatasync on SYNCHRONIZE CACHE); iSCSI limits $tgt_limits; Anvil: default settings"
  echo
  echo "| Row | Requests | Anvil IOPS | Anvil MB/s | tgt IOPS | tgt MB/s | Anvil/tgt |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
} | tee "$result_file"

for row in "${rows[@]}"; do
  IFS='|' read -r label rw size depth count <<<"$row"
  count=$(awk -v c="$count" -v s="$SCALE" 'BEGIN { n = int(c * s); print (n < 16) ? 16 : n }')
  a_times=() t_times=()
  for ((r = 0; r < REPEATS; r++)); do
    a_times+=("$(bench_once "$anvil_url" "$rw" "$size" "$depth" "$count")")
    t_times+=("$(bench_once "$tgt_url" "$rw" "$size" "$depth" "$count")")
  done
  # Every run's time goes to stderr, so the spread behind a median shows.
  echo "$label: anvil ${a_times[*]} s; tgt ${t_times[*]} s" >&2
  a=$(printf '%s\n' "${a_times[@]}" | median)
  t=$(printf '%s\n' "${t_times[@]}" | median)
  awk -v l="$label" -v c="$count" -v s="$size" -v a="$a" -v t="$t" 'BEGIN {
    ai = c / a; ti = c / t
    printf "| %s | %d | %.0f | %.1f | %.0f | %.1f | %.2f |\n", l, c, ai, ai * s / 1e6, ti, ti * s / 1e6, ai / ti
  }' | tee -a "$result_file"
done

echo | tee -a "$result_file"
echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$result_file"

# Both daemons must still be alive at the end: a crash mid-run would
# otherwise only show up as odd numbers.
[ -z "$anvil_pid" ] || kill -0 "$anvil_pid" 2>/dev/null || { echo "anvil died during the benchmark; log in $work/anvil.log" >&2; exit 1; }
kill -0 "$tgtd_pid" 2>/dev/null || { echo "tgtd died during the benchmark" >&2; exit 1; }

# Anvil must shut down cleanly on SIGTERM (exit status 0).
if [ -n "$anvil_pid" ]; then
  kill -TERM "$anvil_pid"
  anvil_rc=0
  wait "$anvil_pid" || anvil_rc=$?
  anvil_pid=""
  [ "$anvil_rc" -eq 0 ] || { echo "anvil exited $anvil_rc after SIGTERM; log in $work/anvil.log" >&2; exit 1; }
fi
echo >&2
echo "results saved to ${result_file#"$repo"/}" >&2
