"""Host-side helpers of the VM benchmarks (throughput.py, quality.py, demo.py).

Each benchmark is one command on the host: it boots the tiered-memory guest with
tests/vm/vmrun.py, runs its guest half (benchmarks/guest/*.py) there with the
project's venv, streams the guest's progress lines, reads the JSON the guest wrote
into the shared checkout, and renders Markdown and PNG into benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _test_venv() -> Path:
    """The venv tests/setup.sh installs the wheel of this checkout into (outside the tree)."""
    out = subprocess.run(["bash", str(REPO / "tests" / "setup.sh"), "--print-venv"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


VENV = _test_venv()
VENV_PY = VENV / "bin" / "python"
RESULTS = REPO / "benchmarks" / "results"
RAW = RESULTS / "raw"
GUEST = REPO / "benchmarks" / "guest"

sys.path.insert(0, str(REPO / "tests" / "vm"))
import vmrun  # noqa: E402

TCG_CAVEAT = (
    "Measured in a qemu **TCG** guest (no KVM here): every absolute figure is emulation speed, "
    "not hardware speed. Only ratios between rows measured in the same run mean anything. "
    "The slow node is only *advertised* as slower (HMAT); it is not really slower under TCG.")
PASS_RATE_CAVEAT = (
    "Workload passes/s are reported as a side effect only: under TCG anything that flushes the "
    "TLB (migration's shootdowns, hint-fault PTE changes) makes the workload's loop run 5-7x "
    "faster, so a higher pass rate here is **not** a placement benefit.")


def ensure_venv() -> None:
    """Re-run this script with the venv that holds the installed kmigratedd of this
    checkout (tests/setup.sh builds the wheel and installs it; the guest uses it too)."""
    if Path(sys.prefix).resolve() != VENV.resolve():
        print("benchmarks: tests/setup.sh (apt packages for the VM, the wheel in "
              f"{VENV})", flush=True)
        subprocess.run(["bash", str(REPO / "tests" / "setup.sh")], check=True)
        os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])


def ensure_matplotlib() -> Any:
    """matplotlib, installed into the venv on first use (it is only needed for the plots)."""
    try:
        import matplotlib
    except ImportError:
        print(f"benchmarks: matplotlib is missing; installing it into {VENV} "
              "(pip install matplotlib)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_guest(script: str, args: Sequence[str], *, kernel: str = "debian-6.12",
              timeout: float = 1800, title: str = "",
              mem: Sequence[str] | None = None) -> vmrun.VMResult:
    """Boot the 2-node guest and run benchmarks/guest/<script> in it (output streamed)."""
    cmd = [str(VENV_PY), str(GUEST / script), *args]
    banner = title or script
    # Benchmarks measure parallel work (copy threads, the worker beside the move), so
    # the guest's 2 vCPUs run in 2 host threads; the tests keep single-threaded TCG,
    # which never hits the rare guest panic of multi-threaded TCG (tests/vm/README.md).
    os.environ.setdefault("KMIGRATEDD_VM_TCG_THREAD", "multi")
    print(f"== {banner}: booting the tiered VM (kernel {kernel}; qemu TCG, ~10 s; "
          "waits while another guest runs) ==", flush=True)
    for attempt in (1, 2):
        try:
            res = vmrun.run_in_vm(cmd, topology="2node", kernel=kernel, timeout=timeout,
                                  cwd=str(REPO), stream=sys.stdout, mem=mem)
        except vmrun.VMUnavailable as exc:
            sys.exit(f"cannot start the VM: {exc}")
        if res.boot_seconds is not None or res.status_reported or attempt == 2:
            break
        # The guest died before our command started (seen once: a panic in the idle
        # loop while booting under TCG): nothing of ours ran, so boot again.
        print(f"== the guest died while booting (console log {res.log_path}); "
              "booting again ==", flush=True)
    # Other processes on the host share its cores with the guest's vCPU threads.
    res.host_load_after = os.getloadavg()  # type: ignore[attr-defined]
    if res.returncode != 0:
        where = f"; console log: {res.log_path}" if res.log_path else ""
        sys.exit(f"{banner}: guest run failed (exit {res.returncode}{where})")
    return res


def load_raw(name: str) -> dict[str, Any]:
    return json.loads((RAW / name).read_text())


def host_info() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    qemu = "?"
    q = shutil.which("qemu-system-x86_64")
    if q:
        out = subprocess.run([q, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"version (\S+)", out)
        qemu = m.group(1) if m else "?"
    nodes = len([d for d in os.listdir("/sys/devices/system/node") if re.fullmatch(r"node\d+", d)])
    return {"cpu": cpu, "cores": str(os.cpu_count()), "mem_gib": f"{mem_kib / (1 << 20):.0f}",
            "numa_nodes": str(nodes), "kernel": platform.release(), "qemu": qemu}


def host_load_note(data: dict[str, Any]) -> str:
    load = data.get("host_load_after")
    if not load:
        return ""
    return (f" Host load average right after the guest run: {load[0]:.1f} / {load[1]:.1f} / "
            f"{load[2]:.1f} (1/5/15 min) on {os.cpu_count()} cores — the guest's 2 vCPU "
            "threads shared the host with other work.")


def machine_line(guest: dict[str, Any], data: dict[str, Any] | None = None) -> str:
    h = host_info()
    return (f"Host: {h['cpu']}, {h['cores']} cores, {h['mem_gib']} GiB, {h['numa_nodes']} NUMA "
            f"node(s), Linux {h['kernel']}, qemu {h['qemu']}. Guest: kernel "
            f"{guest.get('kernel')} ({guest.get('kernel_release')}), accel "
            f"{guest.get('accel')}, {guest.get('cpus')} vCPUs on node 0, node memory "
            f"{guest.get('node_mem_mib')} MiB (node 1 CPU-less, lower memory tier by HMAT), "
            f"THP {guest.get('thp')}; run {guest.get('date')}."
            + host_load_note(data or {}))


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
             right: Sequence[bool] | None = None) -> str:
    right = right or [i > 0 for i in range(len(headers))]
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    def line(vals: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if r else v.ljust(w)
                                 for v, w, r in zip(vals, widths, right)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2))
                         for w, r in zip(widths, right)) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def med_range(s: dict[str, float], fmt: str = "{:.3f}") -> str:
    """'median (min-max)' of a spread dict."""
    if s.get("n", 1) <= 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def fmt_opt(v: float | None, fmt: str = "{:.1f}", none: str = "not reached") -> str:
    return none if v is None else fmt.format(v)


def write_result(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / name
    p.write_text(text)
    print(f"wrote {p.relative_to(REPO)}", flush=True)
    return p
