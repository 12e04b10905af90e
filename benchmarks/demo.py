#!/usr/bin/env python3
"""Live demo: kmigratedd moves a hot set from slow memory to fast memory.

    python3 benchmarks/demo.py          # sets things up on first use (sudo for apt)

Boots a small qemu guest with two NUMA nodes — node 0: CPUs + DRAM; node 1: CPU-less
"slow" memory in a lower memory tier (HMAT), like CXL — starts a workload whose hot
and cold sets sit on node 1, starts kmigratedd with its embedded default config
(``sampler: auto``), and prints second by second how much of the hot set and of the
cold set is on the fast node and how fast kmigratedd promotes; then
``kmigratedctl status``, and the workload's checksum verdict.  Ends by itself in
about two minutes and leaves nothing behind (the guest's disk is a throw-away
overlay).

Under qemu TCG (no KVM) everything runs emulated: the MB/s are emulation speed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bootstrap() -> None:
    """First use on a fresh machine: tests/setup.sh installs the apt packages (qemu, the
    guest kernel, busybox...) and the venv with this checkout's wheel installed."""
    venv_ok = (common.VENV / "bin" / "kmigratedd").exists()
    qemu_ok = any(os.access(os.path.join(p, "qemu-system-x86_64"), os.X_OK)
                  for p in os.environ.get("PATH", "").split(os.pathsep))
    if venv_ok and qemu_ok:
        return
    print("demo: first run — running tests/setup.sh (apt packages for the VM, the venv with "
          "kmigratedd; needs root for apt)", flush=True)
    r = subprocess.run(["bash", str(REPO / "tests" / "setup.sh")])
    if r.returncode != 0:
        sys.exit("demo: setup failed; run 'sudo bash tests/setup.sh' and try again")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", default="debian-6.12", help="guest kernel (see tests/vm)")
    ap.add_argument("--hot-mib", type=float, default=128)
    ap.add_argument("--cold-mib", type=float, default=128)
    ap.add_argument("--max-s", type=float, default=90, help="longest promotion phase")
    a = ap.parse_args()
    bootstrap()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    common.ensure_venv()
    res = common.run_guest("demo.py", ["--hot-mib", str(a.hot_mib), "--cold-mib",
                                       str(a.cold_mib), "--max-s", str(a.max_s)],
                           kernel=a.kernel, timeout=a.max_s + 600, title="kmigratedd demo")
    transcript = "\n".join(ln for ln in res.output.splitlines()
                            if not ln.startswith("[kmigratedd] "))
    common.write_result("demo.md", "# kmigratedd live demo: transcript of the last run\n\n"
                        "Command: `python3 benchmarks/demo.py`. " + common.TCG_CAVEAT
                        + "\n\n```\n" + transcript.rstrip() + "\n```\n")
    print(f"demo finished in {res.wall_seconds:.0f} s (guest boot {res.boot_seconds or 0:.0f} s,"
          f" accel {res.accel}); the guest is gone, nothing to clean up.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
