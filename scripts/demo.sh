#!/usr/bin/env bash
# The demo: set-up as needed, then a datastore (made here unless you name one),
# the mount, a guest file system played through a loop device over an image
# inside the mount, and a clean unmount with the image checked on the HDD side.
#   bash scripts/demo.sh                 demo datastore under /var/tmp/vmdi-demo
#   bash scripts/demo.sh STORE EXPORT    mount your datastore STORE on EXPORT (stays mounted)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
CLI="node $(pwd)/dist/src/cli.js"

if [ $# -ge 2 ]; then
  exec $CLI "$1" "$2" --log "${VMDI_LOG:-/var/log/vmdi-fuse.log}"
fi

DEMO=/var/tmp/vmdi-demo
STORE=$DEMO/store
EXPORT=$DEMO/export
GUEST=$DEMO/guest
mkdir -p "$STORE" "$EXPORT" "$GUEST"
if mountpoint -q "$EXPORT"; then $CLI umount "$EXPORT" || fusermount -u -z "$EXPORT"; fi

if [ ! -f "$STORE/guest.img" ]; then
  echo "== making a datastore in $STORE: a 256 MiB ext4 guest disk (raw) and a qcow2 copy"
  tree=$(mktemp -d)
  mkdir -p "$tree/etc" "$tree/docs"
  cp -r /etc/apt "$tree/etc/" 2>/dev/null || true
  for i in $(seq 1 200); do printf 'file %d of the demo guest\n' "$i" > "$tree/docs/file$i.txt"; done
  mke2fs -q -t ext4 -d "$tree" "$STORE/guest.img" 256M
  qemu-img convert -O qcow2 "$STORE/guest.img" "$STORE/guest.qcow2"
  rm -rf "$tree"
fi

echo "== vmdi-fuse $STORE $EXPORT"
$CLI "$STORE" "$EXPORT" --log "$DEMO/vmdi-fuse.log"
ls -l "$EXPORT"
if $CLI inspect --help >/dev/null 2>&1; then
  echo "== vmdi-fuse inspect $EXPORT/guest.qcow2"
  $CLI inspect "$EXPORT/guest.qcow2" || true
fi

echo "== the guest: ext4 on a loop device (direct I/O) over $EXPORT/guest.img"
loop=$(losetup --direct-io=on -f --show "$EXPORT/guest.img")
mount "$loop" "$GUEST"
mkdir -p "$GUEST/new"
for i in $(seq 1 500); do echo "written by the guest $i" > "$GUEST/new/f$i"; done
sync
df -h "$GUEST" | tail -1
umount "$GUEST"
losetup -d "$loop"

echo "== vmdi-fuse stats $EXPORT (the datapath: what was cached, redirected, destaged)"
$CLI stats "$EXPORT"
echo "== vmdi-fuse status $EXPORT"
$CLI status "$EXPORT"
echo "== vmdi-fuse umount $EXPORT"
$CLI umount "$EXPORT"
echo "== e2fsck -fn on the image as it is on the HDD side"
e2fsck -fn "$STORE/guest.img"
echo "demo done: the datastore stays in $STORE; mount it again with: $CLI $STORE $EXPORT"
