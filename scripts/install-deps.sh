#!/usr/bin/env bash
# Installs what Anvil's test suite needs on a fresh Debian 12 machine.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  libiscsi-bin      # iscsi-test-cu, iscsi-ls, iscsi-inq, iscsi-readcapacity16
  qemu-utils        # qemu-img, qemu-io: qemu's iSCSI client
  qemu-block-extra  # the iscsi:// block driver qemu-img and qemu-io load (libiscsi)
  util-linux        # prlimit: the fd-flood test runs the daemon with 256 descriptors
  qemu-system-x86   # boots the Linux guest whose open-iscsi initiator tests Anvil
  tgt               # Debian's userspace target, the peer bench/ compares against
  cpio              # packs the guest's initramfs
  xz-utils zstd     # unpack kernel modules
  chromium          # headless browser the web UI test drives (web/ui_test.go)
  nodejs            # node + npm run playwright-core from web/uitest (npm ci below)
  podman            # builds deploy/docker/Dockerfile.prebuilt (FROM scratch, no pull)
  systemd           # systemd-analyze verifies deploy/anvil.service
  file              # checks the container's binary is statically linked
  e2fsprogs         # mkfs.ext4: a mounted loop device the block-volume test must not touch
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# playwright-core for the web UI test, pinned by web/uitest/package-lock.json.
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -d "$repo/web/uitest/node_modules/playwright-core" ]; then
  (cd "$repo/web/uitest" && npm ci --no-audit --no-fund)
fi
