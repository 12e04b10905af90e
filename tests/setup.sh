#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian 12 machine, idempotently:
# the apt packages (qemu and guest kernels for the tiered-memory VM tests, a C
# toolchain for the native shim) and the project's venv in .venv.
# Used by tests/run.sh (the README's test command) and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential python3-dev python3-venv      # the cffi extension
  qemu-system-x86 qemu-system-data              # the tiered-memory guest (TCG)
  linux-image-6.12-amd64 linux-image-amd64      # guest kernels: 6.12 and 6.1
  busybox-static cpio kmod xz-utils zstd        # the guest's initramfs
  linux-source-6.12 bc bison flex libelf-dev libssl-dev  # the idle-tracking guest kernel
  netcat-openbsd iproute2                       # control socket by nc -U; guest loopback
  prometheus                                    # promtool and a real Prometheus for the
                                                # dashboard and alert-rule tests
  systemd                                       # systemd-analyze verify of the unit
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/setup.sh: missing apt packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "tests/setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # INITRD=No: the guest uses our own initramfs; skip rebuilding the host's per kernel.
  apt-get update -qq
  INITRD=No apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
