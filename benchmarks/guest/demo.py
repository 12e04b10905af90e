"""Guest half of benchmarks/demo.py (run it from the host: it boots the VM).

Starts a workload with a hot set on the slow node, starts kmigratedd exactly as a
user would (no --config: the embedded default, sampler auto), and shows the hot set
moving to the fast node second by second; then `kmigratedctl status`, the daemon's
shutdown, and the workload's checksum verdict.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import gcommon as g
from daemonproc import DaemonProcess
from gcommon import say

FAST, SLOW = 0, 1
BIN = Path(sys.executable).parent


def auto_choice() -> tuple[str | None, list[str]]:
    """The sampler kmigratedd's ``auto`` will pick here, and why the others were skipped."""
    from samplerctx import make_context

    from kmigratedd.samplers import AUTO_ORDER, FACTORIES

    ctx = make_context(state_file="/tmp/demo-probe.json")
    skipped = []
    for name in AUTO_ORDER:
        f = FACTORIES.get(name)
        if f is None:
            skipped.append(f"{name}: not in this kmigratedd build")
            continue
        why = f.probe(ctx)
        if why is None:
            return name, skipped
        skipped.append(f"{name}: {why}")
    return None, skipped


def echo(line: str) -> None:
    """Show the daemon's start-up, sampler and stop lines, and every warning."""
    if " INFO " not in line or "sampler" in line or "running" in line or "stopped" in line:
        say(f"    [kmigratedd] {line.split(' ', 2)[-1]}")


def promoted(d: DaemonProcess) -> float:
    try:
        return d.metric_sum("kmigratedd_promoted_pages_total")
    except (OSError, AssertionError):  # /metrics not up (yet)
        return float("nan")


def bar(frac: float, width: int = 30) -> str:
    n = round(frac * width)
    return "[" + "#" * n + "." * (width - n) + "]"


def ctl_status(title: str) -> None:
    say(f"$ kmigratedctl status   # {title}")
    st = subprocess.run([str(BIN / "kmigratedctl"), "status"], capture_output=True,
                        text=True, timeout=60)
    for line in (st.stdout + st.stderr).rstrip().splitlines():
        say(f"  {line}")


def main() -> int:
    g.require_vm("benchmarks/guest/demo.py")
    ap = argparse.ArgumentParser()
    ap.add_argument("--hot-mib", type=float, default=128)
    ap.add_argument("--cold-mib", type=float, default=128)
    ap.add_argument("--max-s", type=float, default=90)
    a = ap.parse_args()
    from workload import Workload, fill_node

    say(f"guest: Linux {g.guest_info()['kernel_release']}, node 0 = 2 vCPUs + DRAM "
        f"({g.free_mib(FAST):.0f} MiB free), node 1 = CPU-less slow memory "
        f"({g.free_mib(SLOW):.0f} MiB free), a lower memory tier (HMAT)")
    sampler, skipped = auto_choice()
    say(f"kmigratedd's default config says 'sampler: auto'; here it will pick: {sampler}")
    for s in skipped:
        say(f"    skipped {s}")
    if sampler is None:
        say("no sampler can run here: nothing to demo")
        return 1
    flush_ms = 0
    filler = None
    if sampler in ("damon", "idle"):
        flush_ms = 10
        say(f"  ({sampler} reads page accessed bits: under qemu TCG the workload flushes the "
            "TLB every 10 ms so accesses become visible — a TCG artefact, not needed on "
            "hardware)")
    if sampler == "hint-faults":
        say("  (hint-faults: with node 0 nearly empty the kernel would promote every faulting "
            "page itself; filling node 0 to 700 MiB free so the promotions you see are "
            "kmigratedd's)")
        filler = fill_node(FAST, 700)
    w = None
    d = None
    try:
        say(f"starting the workload: {a.hot_mib:g} MiB hot (read+written in a loop) and "
            f"{a.cold_mib:g} MiB cold (written once), both on node {SLOW} (slow)")
        w = Workload(a.hot_mib, a.cold_mib, node=SLOW, flush_ms=flush_ms)
        say(f"  workload pid {w.pid}: hot on node 0 {100 * w.fraction_on(w.hot, FAST):.0f}%, "
            f"cold on node 0 {100 * w.fraction_on(w.cold, FAST):.0f}%")
        say("starting kmigratedd with its embedded default config (no --config) ...")
        d = DaemonProcess(None, Path("/tmp"), echo=echo)  # no --config: the default
        try:
            d.wait_running()
        except AssertionError as exc:
            say(f"kmigratedd did not start: {exc}")
            return 1
        say("")
        say(f"{'time':>5}  {'hot set on node 0 (fast)':32} {'hot':>6} {'cold':>6} "
            f"{'promoted':>9} {'MB/s':>7}")
        t0 = time.monotonic()
        last_p, last_t = 0.0, t0
        done_at = None
        shown_mid = False
        while True:
            time.sleep(max(0.0, 1 - (time.monotonic() - last_t)))
            now = time.monotonic()
            hot = w.fraction_on(w.hot, FAST)
            cold = w.fraction_on(w.cold, FAST)
            p = promoted(d)
            rate = (p - last_p) * g.PAGE / (now - last_t) / 1e6 if p == p else float("nan")
            say(f"{now - t0:4.0f}s  {bar(hot)} {100 * hot:5.1f}% {100 * cold:5.1f}% "
                f"{p:9,.0f} {rate:7.1f}")
            last_p, last_t = (p if p == p else last_p), now
            if not shown_mid and 0 < hot < 0.9 and rate > 0:
                shown_mid = True  # once, while pages are moving
                say("")
                ctl_status("while it promotes")
                say("")
            if hot >= 0.99 and done_at is None:
                done_at = now
            if (done_at is not None and now - done_at >= 2) or now - t0 >= a.max_s:
                break
            if not w.alive() or d.proc.poll() is not None:
                say("the workload or the daemon stopped unexpectedly")
                break
        say("")
        ctl_status("at the end")
        say("")
        hot, cold = w.fraction_on(w.hot, FAST), w.fraction_on(w.cold, FAST)
        ok = w.verify()
        rc = d.stop()
        d = None
        say(f"result: {100 * hot:.1f}% of the hot set and {100 * cold:.1f}% of the cold set "
            f"on the fast node after {time.monotonic() - t0:.0f} s (sampler {sampler})")
        say(f"checksum: {'OK — every word of the workload' if ok else 'BAD — corrupted'} "
            f"({(a.hot_mib + a.cold_mib):g} MiB verified after the moves)")
        say(f"kmigratedd stopped cleanly (exit {rc})" if rc == 0 else
            f"kmigratedd exited with {rc}")
        return 0 if ok and rc == 0 and hot >= 0.9 else 1
    finally:
        if d is not None:
            d.stop()
        if w is not None:
            w.stop()
        if filler is not None:
            filler.stop()


if __name__ == "__main__":
    raise SystemExit(main())
