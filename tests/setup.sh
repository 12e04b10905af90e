#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian 12 machine, idempotently:
# the apt packages (qemu and guest kernels for the tiered-memory VM tests, a C
# toolchain for the native shim), then what a user gets: an sdist and a wheel
# built from this checkout, and the wheel installed (not editable) into a venv
# outside the source tree.  The tests run that venv's python and its
# `kmigratedd`, on the host and in the guest.
#
#   bash tests/setup.sh               set up (rebuild only what changed)
#   bash tests/setup.sh --host-only   no apt: check that a C compiler, the Python
#                                     headers and venv are there (the quick loop,
#                                     `tests/run.sh -m "not vm"`, needs nothing else)
#   bash tests/setup.sh --print-venv  print the test venv's path only
#
# The test state lives in $KMIGRATEDD_TEST_HOME (default ~/.cache/kmigratedd-test),
# one directory per checkout: dist/ (sdist + wheel) and venv/.  The artifacts are
# rebuilt when a file that goes into them changes; KMIGRATEDD_FRESH_VENV=1 (set
# by .ci/run) recreates the venv from nothing.
# Used by tests/run.sh (the README's test command) and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)
STATE="${KMIGRATEDD_TEST_HOME:-$HOME/.cache/kmigratedd-test}/$(printf %s "$REPO" | sha256sum | cut -c1-12)"
VENV="$STATE/venv"
DIST="$STATE/dist"
if [ "${1:-}" = --print-venv ]; then
  echo "$VENV"
  exit 0
fi

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
  man-db                                        # man -l of the generated manual pages
)

PY=${PYTHON:-python3}
HOST_ONLY=0
[ "${1:-}" = --host-only ] && HOST_ONLY=1

if [ "$HOST_ONLY" = 1 ]; then
  # The host tests build and install the wheel, nothing more: no apt, any user.
  need=()
  command -v cc >/dev/null || command -v gcc >/dev/null || need+=("a C compiler (build-essential)")
  "$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(
      os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need+=("the Python headers (python3-dev)")
  "$PY" -c 'import ensurepip, venv' 2>/dev/null || need+=("venv (python3-venv)")
  if ((${#need[@]})); then
    printf 'tests/setup.sh: the host tests need %s; install them, or run as root without -m "not vm" to set up everything\n' "$(IFS=,; echo "${need[*]}" | sed 's/,/, /g')" >&2
    exit 1
  fi
fi

missing=()
((HOST_ONLY)) || for p in "${APT_PACKAGES[@]}"; do
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

# What goes into the sdist (MANIFEST.in, setup.py, pyproject.toml) decides when to rebuild.
stamp=$( { cat pyproject.toml setup.py MANIFEST.in README.md;
           find kmigratedd native -type f ! -name '*.pyc' ! -name '*.so' ! -name _native.c \
             -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
deps=$(sha256sum pyproject.toml | cut -c1-16)

mkdir -p "$STATE"
if [ "${KMIGRATEDD_FRESH_VENV:-0}" = 1 ] || [ ! -x "$VENV/bin/python" ] \
   || [ "$(cat "$VENV/.kmigratedd-deps" 2>/dev/null)" != "$deps" ]; then
  echo "tests/setup.sh: new venv $VENV"
  rm -rf "$VENV" "$DIST"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check build
fi
if [ "$(cat "$DIST/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "tests/setup.sh: building the sdist and the wheel (from the sdist) into $DIST"
  rm -rf "$DIST"
  # python -m build makes the sdist, then the wheel from the unpacked sdist, each in an
  # isolated environment: what a user's pip does, with only a C compiler and Python headers.
  "$VENV/bin/python" -m build -q --outdir "$DIST" . >"$STATE/build.log" 2>&1 \
    || { cat "$STATE/build.log" >&2; echo "tests/setup.sh: build failed" >&2; exit 1; }
  wheel=$(ls "$DIST"/kmigratedd-*.whl)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
    "$wheel"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$wheel[test]"
  # The wheel and its dependencies, for installs with no network (the guest's systemd test
  # follows the README's recipe with pip --no-index --find-links).
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check -d "$DIST/wheelhouse" "$wheel"
  echo "$deps" >"$VENV/.kmigratedd-deps"
  echo "$stamp" >"$DIST/.stamp"
fi
if [ "$HOST_ONLY" = 0 ]; then
  # The idle-tracking guest kernel (cached per machine): built here, before the guest tests
  # run two at a time, rather than by the first test that needs it, beside a running guest.
  bash tests/vm/build_kernel.sh >/dev/null
fi
