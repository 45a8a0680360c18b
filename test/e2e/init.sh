#!/bin/sh
# /init of the Anvil end-to-end guest (busybox ash). It logs in to an iSCSI
# target with the kernel's initiator (iscsistart + iscsi_tcp), runs one phase
# of checks on the LUN and powers off. Everything the host test reads is a
# line starting with "ANVIL-E2E: " on the serial console.
#
# Kernel command line parameters (read from /proc/cmdline):
#   anvil.phase=write|verify|nvme-write|nvme-verify|shell
#   anvil.transport=iscsi|nvme   (default iscsi; phase names imply it too)
#   anvil.iqn=<target IQN or NVMe subsystem NQN>
#   anvil.addr=<portal IP>       (default 10.0.2.2, the host under slirp)
#   anvil.port=<portal port>
#   anvil.tpgt=<target portal group tag>  (default 1)
#   anvil.seed=<pattern seed>
#   anvil.iparam=<NAME=VALUE>    (repeatable: iscsistart -P, e.g. digests)
#   anvil.chapuser= anvil.chapsecret=      (CHAP: the initiator's credentials)
#   anvil.chapuserin= anvil.chapsecretin=  (mutual CHAP: the target's)
#   anvil.login=iscsistart|iscsiadm (iscsiadm: SendTargets discovery, then
#                                 login through iscsid, which also recovers
#                                 the session when the target restarts)
#   anvil.discuser= anvil.discsecret=      (iscsiadm: CHAP for discovery)
#   anvil.cutoff=<seconds>       (revoke: how long reads may keep working)
#   anvil.rawsize=<bytes>        (power-cut phases: region size, default 16 MiB)
#   anvil.gens=<n>               (power-cut-write: generations to write)
#   anvil.lo=<gen> anvil.hi=<gen> (power-cut-verify: allowed generations)
#
# LUN layout: the last 64 MiB hold the raw pattern; ext4 covers the rest.
# The power-cut phases use the start of that raw region.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /mnt /run /var/run /etc/iscsi
mount -t tmpfs tmpfs /tmp

mark() { echo "ANVIL-E2E: $*"; }
t0=$(cut -d' ' -f1 /proc/uptime)
step() { mark "step $* t=$(cut -d' ' -f1 /proc/uptime)"; }
finish() {
	sync
	mark "poweroff t=$(cut -d' ' -f1 /proc/uptime)"
	poweroff -f
	sleep 60
}
fail() {
	mark "FAIL $*"
	dmesg | tail -n 40 | sed 's/^/dmesg: /'
	finish
}

param() {
	for w in $(cat /proc/cmdline); do
		case "$w" in "anvil.$1="*) echo "${w#*=}"; return ;; esac
	done
	echo "$2"
}

PHASE=$(param phase write)
TRANSPORT=$(param transport iscsi)
case "$PHASE" in nvme-*) TRANSPORT=nvme ;; esac
IQN=$(param iqn "")
ADDR=$(param addr 10.0.2.2)
PORT=$(param port 3260)
TPGT=$(param tpgt 1)
SEED=$(param seed 1)
INITIATOR=iqn.2026-11.io.anvil:e2e-guest
RAW=$((64 * 1024 * 1024))
mark "boot phase=$PHASE transport=$TRANSPORT target=$IQN portal=$ADDR:$PORT kernel=$(uname -r) t=$t0"

for m in virtio_pci virtio_net iscsi_tcp sd_mod nvme_tcp; do
	modprobe "$m" || fail "modprobe $m"
done

ip link set lo up
ip link set eth0 up || fail "no eth0"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
step net-up

if [ "$PHASE" = shell ]; then
	setsid cttyhack sh
	finish
fi

if [ "$TRANSPORT" = iscsi ]; then
	set --
	for w in $(cat /proc/cmdline); do
		case "$w" in anvil.iparam=*) set -- "$@" -P "${w#*=}" ;; esac
	done
	echo "InitiatorName=$INITIATOR" >/etc/iscsi/initiatorname.iscsi
	if [ "$(param login iscsistart)" = iscsiadm ]; then
		mkdir -p /etc/iscsi/nodes /etc/iscsi/send_targets /var/lib/iscsi /run/lock/iscsi
		iscsid || fail "iscsid did not start"
		if [ -n "$(param discuser "")" ]; then
			disc() { iscsiadm -m discoverydb -t sendtargets -p "$ADDR:$PORT" "$@"; }
			disc -o new >/dev/null || fail "iscsiadm discoverydb new"
			disc -o update -n discovery.sendtargets.auth.authmethod -v CHAP || fail "discovery authmethod"
			disc -o update -n discovery.sendtargets.auth.username -v "$(param discuser "")" || fail "discovery username"
			disc -o update -n discovery.sendtargets.auth.password -v "$(param discsecret "")" || fail "discovery password"
			disc --discover >/tmp/disc 2>&1 || {
				sed 's/^/iscsiadm: /' /tmp/disc
				fail "SendTargets discovery with CHAP"
			}
		else
			iscsiadm -m discovery -t sendtargets -p "$ADDR:$PORT" >/tmp/disc 2>&1 || {
				sed 's/^/iscsiadm: /' /tmp/disc
				fail "SendTargets discovery"
			}
		fi
		mark "discovered $(tr '\n' '|' </tmp/disc)"
		grep -q " $IQN\$" /tmp/disc || fail "discovery did not list $IQN"
		# The target answers with the address the connection reached it
		# on, which under slirp is the host's loopback; log in through the
		# guest's view of the portal instead.
		iscsiadm -m node -o new -T "$IQN" -p "$ADDR:$PORT,$TPGT" >/dev/null || fail "iscsiadm node new"
		while [ $# -ge 2 ]; do
			iscsiadm -m node -T "$IQN" -p "$ADDR:$PORT" -o update -n "${2%%=*}" -v "${2#*=}" || fail "iscsiadm update $2"
			shift 2
		done
		iscsiadm -m node -T "$IQN" -p "$ADDR:$PORT" --login >/tmp/login 2>&1 || {
			sed 's/^/iscsiadm: /' /tmp/login
			fail "iscsiadm login"
		}
	else
		# iscsistart logs in and hands the connection to the kernel.
		[ -n "$(param chapuser "")" ] && set -- "$@" -u "$(param chapuser "")" -w "$(param chapsecret "")"
		[ -n "$(param chapuserin "")" ] && set -- "$@" -U "$(param chapuserin "")" -W "$(param chapsecretin "")"
		iscsistart -i "$INITIATOR" -t "$IQN" -g "$TPGT" -a "$ADDR" -p "$PORT" "$@" >/tmp/iscsistart.log 2>&1 &
		ISCSISTART=$!
	fi
else
	# nvme-tcp without nvme-cli: the fabrics module takes the connect options
	# as a string, exactly what nvme-cli would write.
	echo "transport=tcp,traddr=$ADDR,trsvcid=$PORT,nqn=$IQN,hostnqn=nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000e2e00" \
		>/dev/nvme-fabrics 2>/tmp/nvme-connect.log || fail "nvme connect: $(cat /tmp/nvme-connect.log)"
fi

DEV=
for i in $(seq 1 300); do
	for d in /dev/sda /dev/nvme0n1; do
		[ -b "$d" ] && [ "$(blockdev --getsize64 "$d" 2>/dev/null || echo 0)" -gt 0 ] && DEV=$d
	done
	[ -n "$DEV" ] && break
	# iscsistart's first process exits once the session is up (a child
	# stays to serve the kernel); a non-zero status means login failed.
	if [ -n "${ISCSISTART:-}" ] && ! kill -0 "$ISCSISTART" 2>/dev/null; then
		wait "$ISCSISTART"
		rc=$?
		ISCSISTART=
		if [ "$rc" -ne 0 ]; then
			sed 's/^/iscsistart: /' /tmp/iscsistart.log
			fail "iscsistart exited with status $rc: login failed"
		fi
	fi
	sleep 0.2
done
if [ -z "$DEV" ]; then
	sed 's/^/iscsistart: /' /tmp/iscsistart.log 2>/dev/null
	fail "no disk appeared"
fi
SIZE=$(blockdev --getsize64 "$DEV")
mark "disk $DEV size=$SIZE"
# What login negotiated, as the kernel initiator holds it.
if [ "$TRANSPORT" = iscsi ]; then
	neg=""
	for f in /sys/class/iscsi_session/session*/initial_r2t /sys/class/iscsi_session/session*/immediate_data \
		/sys/class/iscsi_session/session*/first_burst_len /sys/class/iscsi_session/session*/max_burst_len \
		/sys/class/iscsi_session/session*/max_outstanding_r2t /sys/class/iscsi_session/session*/erl \
		/sys/class/iscsi_session/session*/tpgt \
		/sys/class/iscsi_connection/connection*/header_digest /sys/class/iscsi_connection/connection*/data_digest \
		/sys/class/iscsi_connection/connection*/max_recv_dlength /sys/class/iscsi_connection/connection*/max_xmit_dlength; do
		[ -r "$f" ] && neg="$neg $(basename "$f")=$(cat "$f" 2>/dev/null | tr -d ' ')"
	done
	mark "negotiated$neg"
fi
step login
[ "$SIZE" -ge $((256 * 1024 * 1024)) ] || fail "disk too small: $SIZE"
RAWOFF=$((SIZE - RAW))
FSBLOCKS=$((RAWOFF / 4096))

dropcaches() {
	sync
	blockdev --flushbufs "$DEV"
	echo 3 >/proc/sys/vm/drop_caches
}

rawverify() {
	out=$(e2e-guest raw-verify "$DEV" "$RAWOFF" "$RAW" "$SEED" 2>/tmp/raw.err) || {
		sed 's/^/raw: /' /tmp/raw.err
		fail "raw pattern differs ($1)"
	}
	mark "$1 $out"
}

manifest() {
	(cd /mnt && find . -type f | sort | xargs sha256sum) >/tmp/manifest || fail "checksum files"
	sed 's/^/ANVIL-E2E: file /' /tmp/manifest
	mark "checksums=$(sha256sum </tmp/manifest | cut -d' ' -f1)"
}

fsck() {
	dropcaches
	e2fsck -fn "$DEV" >/tmp/fsck.log 2>&1 || {
		sed 's/^/fsck: /' /tmp/fsck.log
		fail "e2fsck -fn found problems ($1)"
	}
	mark "fsck-ok $1"
}

case "$PHASE" in
write | nvme-write)
	e2e-guest raw-write "$DEV" "$RAWOFF" "$RAW" "$SEED" || fail "raw write"
	step raw-written
	dropcaches
	rawverify raw-ok
	mkfs.ext4 -F -q -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 "$DEV" "$FSBLOCKS" >/tmp/mkfs.log 2>&1 || {
		sed 's/^/mkfs: /' /tmp/mkfs.log
		fail "mkfs.ext4"
	}
	step mkfs
	mount -t ext4 "$DEV" /mnt || fail "mount after mkfs"
	e2e-guest tree-write /mnt "$SEED" || fail "tree write"
	manifest
	umount /mnt || fail "umount"
	step tree-written
	fsck first
	mount -t ext4 "$DEV" /mnt || fail "remount"
	manifest
	# Free two files' extents, hand them back to the target (UNMAP, if it
	# offers thin provisioning), then write the files again into that space.
	rm /mnt/big/eight-mib /mnt/a/b/c/three-mib-odd || fail "rm"
	sync
	if out=$(fstrim -v /mnt 2>&1); then
		mark "fstrim-ok $out"
	else
		mark "fstrim-unsupported $out"
	fi
	e2e-guest tree-write /mnt "$SEED" big/eight-mib a/b/c/three-mib-odd || fail "rewrite after fstrim"
	umount /mnt || fail "umount after rewrite"
	fsck after-trim
	mount -t ext4 "$DEV" /mnt || fail "mount after trim"
	manifest
	umount /mnt || fail "umount after remount"
	# mkfs may have discarded the filesystem's range; the pattern beyond it
	# must have survived.
	dropcaches
	rawverify raw-after-fs
	;;
verify | nvme-verify)
	dropcaches
	rawverify raw-ok
	fsck verify
	mount -t ext4 "$DEV" /mnt || fail "mount"
	manifest
	umount /mnt || fail "umount"
	;;
power-cut-write)
	# The host kills the daemon and qemu while this runs.
	e2e-guest raw-gens "$DEV" "$RAWOFF" "$(param rawsize 16777216)" "$SEED" "$(param gens 1000)" ||
		fail "raw generations"
	;;
login)
	# Logging in and seeing the disk is the whole check (CHAP tests).
	;;
revoke)
	# The host takes this initiator's access away once the helper reports
	# "reading" (on stderr, straight to the console) after a first good
	# read; the target must cut the session off, so reads must fail.
	out=$(e2e-guest read-until-error "$DEV" "$(param cutoff 120)") || fail "reads still work: $out"
	mark "cut-off $out"
	mark "conn-errors=$(dmesg | grep -c 'detected conn error')"
	;;
multipath)
	# Two sessions to one target (node.session.nr_sessions=2): two SCSI
	# disks that must be the same LU, and what one path writes the other
	# must read.
	for i in $(seq 1 150); do [ -b /dev/sdb ] && break; sleep 0.2; done
	[ -b /dev/sdb ] || fail "second path never appeared"
	mark "sessions=$(ls -d /sys/class/iscsi_session/session* | wc -l)"
	wa=$(cat /sys/block/sda/device/wwid) wb=$(cat /sys/block/sdb/device/wwid)
	mark "wwid sda=$wa sdb=$wb"
	[ -n "$wa" ] && [ "$wa" = "$wb" ] || fail "the paths report different LUs"
	sz=$(param rawsize 16777216)
	e2e-guest raw-gens /dev/sda "$RAWOFF" "$sz" "$SEED" 1 >/dev/null || fail "write via sda"
	e2e-guest raw-check-gens /dev/sdb "$RAWOFF" "$sz" "$SEED" 1 1 >/dev/null 2>/tmp/raw.err || {
		sed 's/^/raw: /' /tmp/raw.err
		fail "sdb does not read what sda wrote"
	}
	e2e-guest raw-gens /dev/sdb "$RAWOFF" "$sz" "$((SEED + 1))" 1 >/dev/null || fail "write via sdb"
	e2e-guest raw-check-gens /dev/sda "$RAWOFF" "$sz" "$((SEED + 1))" 1 1 >/dev/null 2>/tmp/raw.err || {
		sed 's/^/raw: /' /tmp/raw.err
		fail "sda does not read what sdb wrote"
	}
	mark "paths-ok"
	;;
live-write)
	# The host restarts the daemon meanwhile; iscsid must recover the
	# session and the writes must carry on to the last generation.
	gens=$(param gens 6)
	e2e-guest raw-gens "$DEV" "$RAWOFF" "$(param rawsize 16777216)" "$SEED" "$gens" || fail "raw generations"
	dropcaches
	out=$(e2e-guest raw-check-gens "$DEV" "$RAWOFF" "$(param rawsize 16777216)" "$SEED" "$gens" "$gens" 2>/tmp/raw.err) || {
		sed 's/^/raw: /' /tmp/raw.err
		fail "last generation incomplete"
	}
	mark "gens-ok $out"
	mark "conn-errors=$(dmesg | grep -c 'detected conn error')"
	for f in /sys/class/iscsi_session/session*/recovery_tmo /sys/class/iscsi_connection/connection*/state; do
		[ -r "$f" ] && mark "sysfs $(basename "$f")=$(cat "$f")"
	done
	;;
power-cut-verify)
	dropcaches
	out=$(e2e-guest raw-check-gens "$DEV" "$RAWOFF" "$(param rawsize 16777216)" "$SEED" "$(param lo 0)" "$(param hi 0)" 2>/tmp/raw.err) || {
		sed 's/^/raw: /' /tmp/raw.err
		mark "$out"
		fail "blocks from outside the allowed generations"
	}
	mark "gens-ok $out"
	;;
*)
	fail "unknown phase $PHASE"
	;;
esac
step checks-done
mark "DONE"
finish
