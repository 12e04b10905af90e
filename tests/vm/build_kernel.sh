#!/usr/bin/env bash
# Build the kmigratedd "idle" guest kernel (Debian's linux-source-6.12 + CONFIG_IDLE_PAGE_TRACKING,
# DAMON, HMAT, 9p, overlayfs, all built in) once per machine.
#
#   bash tests/vm/build_kernel.sh            # build if not cached; last stdout line = bzImage path
#   bash tests/vm/build_kernel.sh --print    # print the cache path only (exit 1 if not built)
#   bash tests/vm/build_kernel.sh --force    # rebuild even if cached
#
# Cache: ${KMIGRATEDD_VM_CACHE:-~/.cache/kmigratedd-vm}/kernels/<key>/{bzImage,config,build-time}
# where <key> = sha256(fragment + base config list + linux-source package version)[:16].
# Needs: linux-source-6.12 bison flex libelf-dev libssl-dev bc make gcc xz-utils.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FRAGMENT="$HERE/kernel/idle-tracking.fragment"
SRC_TARBALL="${KMIGRATEDD_LINUX_SOURCE:-/usr/src/linux-source-6.12.tar.xz}"
SRC_PKG="linux-source-6.12"
CACHE_ROOT="${KMIGRATEDD_VM_CACHE:-$HOME/.cache/kmigratedd-vm}"
BASE_CONFIGS="x86_64_defconfig kernel/configs/kvm_guest.config"
REQUIRED="CONFIG_IDLE_PAGE_TRACKING CONFIG_DAMON CONFIG_DAMON_VADDR CONFIG_DAMON_PADDR CONFIG_DAMON_SYSFS
CONFIG_ACPI_HMAT CONFIG_ACPI_NUMA CONFIG_HMEM_REPORTING CONFIG_NUMA CONFIG_9P_FS CONFIG_NET_9P
CONFIG_NET_9P_VIRTIO CONFIG_VIRTIO_PCI CONFIG_OVERLAY_FS CONFIG_MIGRATION CONFIG_NUMA_BALANCING
CONFIG_TRANSPARENT_HUGEPAGE CONFIG_PERF_EVENTS CONFIG_TMPFS CONFIG_DEVTMPFS"

mode=build
case "${1:-}" in
  --print) mode=print ;;
  --force) mode=force ;;
  "") ;;
  *) echo "usage: $0 [--print|--force]" >&2; exit 2 ;;
esac

log() { echo "build_kernel: $*" >&2; }
die() { echo "build_kernel: ERROR: $*" >&2; exit 1; }

[ -r "$FRAGMENT" ] || die "missing $FRAGMENT"
[ -r "$SRC_TARBALL" ] || die "missing $SRC_TARBALL (apt-get install $SRC_PKG)"

src_version="$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null || true)"
if [ -z "$src_version" ]; then
  # not installed from a package: fall back to the tarball's size and mtime
  src_version="tarball:$(stat -c '%s:%Y' "$SRC_TARBALL")"
fi
key="$( { cat "$FRAGMENT"; echo "base=$BASE_CONFIGS"; echo "src=$SRC_PKG=$src_version"; } \
        | sha256sum | cut -c1-16)"
out="$CACHE_ROOT/kernels/$key"

if [ "$mode" = print ]; then
  [ -s "$out/bzImage" ] || exit 1
  echo "$out/bzImage"
  exit 0
fi

mkdir -p "$CACHE_ROOT/kernels"
# one build at a time per key (the launcher and CI may call us concurrently)
exec 9>"$CACHE_ROOT/kernels/.lock-$key"
flock 9

if [ "$mode" != force ] && [ -s "$out/bzImage" ]; then
  log "cached: $out/bzImage (built in $(cat "$out/build-time" 2>/dev/null || echo '?'))"
  echo "$out/bzImage"
  exit 0
fi

for tool in make gcc bison flex bc tar xz; do
  command -v "$tool" >/dev/null || die "missing tool '$tool' (apt-get install build-essential bison flex bc xz-utils libelf-dev libssl-dev)"
done

jobs="$(nproc)"
work="$CACHE_ROOT/kernels/.build-$key"
rm -rf "$work"
mkdir -p "$work"
t0=$(date +%s)
log "source $SRC_PKG $src_version -> $out (make -j$jobs)"
log "extracting $SRC_TARBALL"
tar -C "$work" -xJf "$SRC_TARBALL"
src="$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -1)"
[ -f "$src/Makefile" ] || die "no kernel tree in $SRC_TARBALL"
cd "$src"

log "configuring: $BASE_CONFIGS + $(basename "$FRAGMENT")"
make -s x86_64_defconfig >&2
# -m: merge only (no alldefconfig pass); olddefconfig resolves dependencies afterwards
KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m .config kernel/configs/kvm_guest.config "$FRAGMENT" >&2
make -s olddefconfig >&2

missing=""
for opt in $REQUIRED; do
  grep -qx "$opt=y" .config || missing="$missing $opt($(grep -E "^(# )?$opt[= ]" .config | head -1 || echo absent))"
done
[ -z "$missing" ] || die "kernel .config lacks required options:$missing"
log "config verified: $(echo $REQUIRED | wc -w) required options are =y"

log "building bzImage (this takes ~8 min on 2 cores)"
if ! make -j"$jobs" bzImage > "$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  die "kernel build failed; full log in $work/build.log"
fi
t1=$(date +%s)

tmp_out="$out.tmp.$$"
rm -rf "$tmp_out"
mkdir -p "$tmp_out"
cp arch/x86/boot/bzImage "$tmp_out/bzImage"
cp .config "$tmp_out/config"
make -s kernelrelease > "$tmp_out/kernelrelease" 2>/dev/null || true
echo "$((t1 - t0))s" > "$tmp_out/build-time"
echo "$SRC_PKG=$src_version" > "$tmp_out/source"
rm -rf "$out"
mv "$tmp_out" "$out"
cd /
rm -rf "$work"
log "built in $((t1 - t0))s: $out/bzImage"
echo "BUILD_TIME_SECONDS=$((t1 - t0))" >&2
echo "$out/bzImage"
