#!/usr/bin/env bash
# Builds the kernel + initramfs of the end-to-end guest and prints their paths:
#
#   KERNEL=/path/to/vmlinuz
#   INITRD=/path/to/initrd.gz
#
# The guest is Debian 12's cloud kernel with an initramfs holding busybox,
# open-iscsi (iscsistart, iscsid, iscsiadm), e2fsprogs, the iSCSI/NVMe-TCP/virtio modules, the
# e2e-guest helper (built from this repository) and init.sh as /init.
#
# Everything lands in a cache outside git, keyed by the Debian package
# versions and the sources of init.sh and the helper, so a rerun with nothing
# changed costs a few apt-cache queries:
#   ${ANVIL_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/anvil-e2e}
# Needs: apt-get/apt-cache (Debian), dpkg-deb, cpio, gzip, go. Downloading
# packages for the first time may run apt-get update (as root, or via sudo).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${ANVIL_E2E_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/anvil-e2e}
mkdir -p "$cache/debs"

log() { echo "build-guest: $*" >&2; }

sudo=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"

# Libraries a minimal Debian image may lack come from packages too; ldd
# takes the rest (libc, libzstd, liblzma, libblkid, libuuid) from the host.
pkgs=(busybox-static open-iscsi libopeniscsiusr libisns0 libssl3 libkmod2 e2fsprogs libext2fs2 libcom-err2)

# One apt-cache call per question: each costs a second or two on a busy box.
# Prints "pkg=version " for every package with a candidate.
candidates() {
	apt-cache policy "$@" 2>/dev/null | awk '
		/^[^ ]/ { p = $1; sub(/:$/, "", p) }
		/Candidate:/ && $2 != "(none)" { printf "%s=%s ", p, $2 }'
}
# Resolve the cloud kernel's real image package through the metapackage.
resolve() {
	kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
	[ -n "$kpkg" ] || return 1
	versions=$(candidates "$kpkg" "${pkgs[@]}")
	[ "$(echo "$versions" | wc -w)" -eq $((${#pkgs[@]} + 1)) ]
}
if ! resolve; then
	log "package lists lack some of: linux-image-cloud-amd64 ${pkgs[*]}; running apt-get update"
	$sudo apt-get update -qq >&2
	resolve || { log "cannot resolve versions: got '$versions'"; exit 1; }
fi

srchash=$(cat "$here/build-guest.sh" "$here/init.sh" "$here"/guestdata/*.go "$here"/cmd/e2e-guest/*.go | sha256sum | cut -c1-16)
key=$(echo "$versions $srchash" | sha256sum | cut -c1-16)
out="$cache/guest-$key"
if [ -f "$out/initrd.gz" ] && [ -f "$out/vmlinuz" ]; then
	echo "KERNEL=$out/vmlinuz"
	echo "INITRD=$out/initrd.gz"
	exit 0
fi
log "building guest $key ($versions)"

# Download (once per version) and extract.
work=$(mktemp -d "$cache/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
for pv in $versions; do
	p=${pv%%=*} v=${pv#*=}
	deb=("$cache/debs/${p}_"*"${v#*:}"_amd64.deb)
	if [ ! -f "${deb[0]}" ]; then
		# apt-get warns when root downloads outside _apt's reach; harmless.
		(cd "$cache/debs" && apt-get download -q "$p=$v" 2>&1 | grep -v "unsandboxed as root" >&2 || true)
		deb=("$cache/debs/${p}_"*"${v#*:}"_amd64.deb)
	fi
	[ -f "${deb[0]}" ] || { log "download of $p=$v did not produce a .deb"; exit 1; }
	dpkg-deb -x "${deb[0]}" "$work/x"
done
x=$work/x
kver=$(ls "$x/lib/modules")
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,tmp,mnt,run,var/run}

# busybox applets as symlinks; real tools below replace the ones they shadow.
cp "$x/bin/busybox" "$root/bin/busybox"
for a in $("$root/bin/busybox" --list); do
	[ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
done

# The dynamic binaries and their libraries: extracted packages first, then
# the host's (libc, libcrypto, libkmod... are the same Debian 12 builds).
bins=("$x/sbin/iscsistart" "$x/sbin/iscsid" "$x/sbin/iscsiadm" "$x/sbin/mke2fs" "$x/sbin/e2fsck")
export LD_LIBRARY_PATH="$x/lib/x86_64-linux-gnu:$x/usr/lib/x86_64-linux-gnu"
for b in "${bins[@]}"; do
	cp "$b" "$root/sbin/"
	ldd "$b" | awk '/=> \// { print $3 } /^\t\/lib64\// { print $1 }' | while read -r lib; do
		dest=$root/lib/x86_64-linux-gnu
		[ "$lib" = /lib64/ld-linux-x86-64.so.2 ] && dest=$root/lib64
		mkdir -p "$dest"
		cp -L "$lib" "$dest/$(basename "$lib")"
	done
	if ldd "$b" | grep -q "not found"; then
		log "unresolved libraries for $b:"; ldd "$b" >&2; exit 1
	fi
done
unset LD_LIBRARY_PATH
ln -sf mke2fs "$root/sbin/mkfs.ext4"
rm -f "$root/bin/mkfs.ext4" "$root/bin/mke2fs" "$root/bin/e2fsck"
cp "$x/etc/mke2fs.conf" "$root/etc/mke2fs.conf"
mkdir -p "$root/etc/iscsi"
# iscsid accepts management requests only from a peer it can name as root.
echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
# iscsid is started by init.sh, never through systemd.
sed 's|^iscsid.startup = .*|iscsid.startup = /bin/true|' "$x/etc/iscsi/iscsid.conf" >"$root/etc/iscsi/iscsid.conf"

# Kernel modules: the closure of what init.sh loads, from modules.dep that
# busybox depmod generates over the full tree.
mods=$x/lib/modules/$kver
"$root/bin/busybox" depmod -b "$x" "$kver"
want="kernel/drivers/virtio/virtio_pci.ko kernel/drivers/net/virtio_net.ko kernel/drivers/scsi/iscsi_tcp.ko kernel/drivers/scsi/sd_mod.ko kernel/drivers/nvme/host/nvme-tcp.ko"
closure=$(for m in $want; do grep "^$m:" "$mods/modules.dep" | tr -d ':' | tr ' ' '\n'; done | sort -u)
[ -n "$closure" ] || { log "module closure is empty"; exit 1; }
for m in $closure; do
	[ -f "$mods/$m" ] || { log "module $m missing"; exit 1; }
	mkdir -p "$root/lib/modules/$kver/$(dirname "$m")"
	cp "$mods/$m" "$root/lib/modules/$kver/$m"
done
cp "$mods/modules.builtin" "$mods/modules.order" "$root/lib/modules/$kver/"
"$root/bin/busybox" depmod -b "$root" "$kver"

# The helper that writes and checks the data, static so it needs no libs.
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$root/bin/e2e-guest" ./test/e2e/cmd/e2e-guest)

cp "$here/init.sh" "$root/init"
chmod 755 "$root/init"

# Assemble in the work dir and rename into place, so a concurrent build of
# the same key never sees half a guest (the loser's copy is dropped).
mkdir -p "$work/out"
cp "$x/boot/vmlinuz-$kver" "$work/out/vmlinuz"
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -1 >"$work/out/initrd.gz"
echo "$versions" >"$work/out/versions"
mv -T "$work/out" "$out" 2>/dev/null || [ -f "$out/initrd.gz" ]
# Keep the three newest guests; older keys are dead after a package update.
ls -dt "$cache"/guest-* | tail -n +4 | xargs -r rm -rf
log "guest ready in $out ($(du -sh "$out/initrd.gz" | cut -f1) initramfs)"
echo "KERNEL=$out/vmlinuz"
echo "INITRD=$out/initrd.gz"
