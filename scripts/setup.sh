#!/usr/bin/env bash
# Idempotent set-up on Debian 12 as root: system packages, npm dependencies
# (with the patched fuse-native addon built from source), and the TypeScript
# build. Each step runs only when something it depends on changed, so the demo
# and the tests can both call it and nothing is done twice.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  libfuse2 libfuse-dev fuse pkg-config build-essential python3   # the FUSE binding, built from source
  e2fsprogs qemu-utils fdisk gdisk dosfstools lvm2 util-linux     # images and oracles for tests
  xfsprogs                                                        # a foreign file system for content detection
  attr fio kmod                                                   # xattr tools, benchmarks
  time                                                            # /usr/bin/time -v: max RSS of inspect in the hostile-image tests
  nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils libnfs-dev     # NFS re-export in user space (test/fuse/nfs.test.ts, bench:nfs)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "setup: packages ${missing[*]} are missing and installing them needs root: run as root (sudo bash scripts/setup.sh)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The FUSE module: present on Debian kernels; load it if /dev/fuse is missing.
if [ ! -c /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
fi

# npm dependencies: again only when package.json, the lock file, the patch or a
# native source changed (native/fuse/ is compiled into fuse-native's addon).
stamp=node_modules/.vmdi-setup-stamp
want=$(cat package.json package-lock.json patches/*.patch scripts/build-fuse-native.js native/binding.gyp native/*.[ch] native/fuse/*.[ch] | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: npm ci (patches fuse-native and builds its addon and ours from source)"
  npm ci --no-audit --no-fund
  echo "$want" > "$stamp"
fi

# TypeScript build: tsc --build is incremental and does nothing when up to date.
npx tsc -p tsconfig.json

# mount(8)'s helper for fstab entries of type fuse.vmdi-fuse (libmount looks for
# /sbin/mount.<type> first, then falls back to fuse's own mount.fuse).
helper="$PWD/scripts/mount.fuse.vmdi-fuse"
if [ "$(readlink /sbin/mount.fuse.vmdi-fuse 2>/dev/null)" != "$helper" ]; then
  ln -sfn "$helper" /sbin/mount.fuse.vmdi-fuse
fi
