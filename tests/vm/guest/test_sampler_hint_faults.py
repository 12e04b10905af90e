"""The hint-fault sampler in the tiered guest (Debian 6.12 kernel, 2node).

numa_balancing=2 makes only slow-tier pages fault; the software page-fault perf
event records them.  With node 0 filled below the kernel's free-space threshold
(max(1 GiB, 1/16 of the node) above the high watermark) the kernel promotes
nothing itself, so every hot page shows up as a candidate and stays on node 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmigratedd.kernelfs import KernelFs
from kmigratedd.samplers.perf import (NUMA_BALANCING, PROMOTE_RATE_LIMIT, HintFaultSampler,
                                      vmstat)
from samplerctx import Collector, make_context
from workload import Workload, fill_node, node_free_mib

FS = KernelFs()
BOUND_S = 60.0
HOT_MIB = COLD_MIB = 64


def sysctls() -> tuple[str, str]:
    return FS.read(NUMA_BALANCING).strip(), FS.read(PROMOTE_RATE_LIMIT).strip()


def promoted() -> int:
    return vmstat(FS, "pgpromote_success").get("pgpromote_success", 0)


async def run_until(sampler: HintFaultSampler, col: Collector, w: Workload, bound: float,
                    want: float = 0.9) -> float | None:
    await sampler.start()
    t0 = time.monotonic()
    reached = None
    try:
        while time.monotonic() - t0 < bound:
            await asyncio.sleep(0.25)
            col.drain()
            if reached is None and col.coverage(w.hot) >= want:
                reached = time.monotonic() - t0
                # keep sampling a little longer to see cold pages that would show up
                bound = min(bound, reached + 3)
    finally:
        await sampler.stop()
        col.drain()
    return reached


def test_covers_the_hot_set_with_node0_under_pressure(tmp_path):
    before = sysctls()
    filler = fill_node(0, leave_free_mib=700)
    try:
        print(f"node 0 free: {node_free_mib(0):.0f} MiB")
        with Workload(HOT_MIB, COLD_MIB, node=1) as w:
            assert w.fraction_on(w.hot, 1) == 1.0 and w.fraction_on(w.cold, 1) == 1.0
            ctx = make_context((w.pid,), state_file=str(tmp_path / "state.json"))
            assert HintFaultSampler.probe(ctx) is None
            sampler = HintFaultSampler(ctx)
            col = Collector(ctx, w.pid)
            p0 = promoted()
            reached = asyncio.run(run_until(sampler, col, w, BOUND_S))
            cov, cold = col.coverage(w.hot), col.cold_fraction(w.cold)
            st = sampler.stats()
            print(f"hint-faults: first candidate {col.first_at}s, 90% of hot at {reached}s, "
                  f"coverage {cov:.3f}, cold fraction {cold:.4f}, stats {st}")
            assert cov >= 0.9, f"coverage {cov:.3f} after {BOUND_S}s"
            assert cold <= 0.05
            assert promoted() == p0, "the kernel promoted pages itself"
            assert st["kernel_promoted_pages"] == 0 and st["kernel_promoting"] == 0
            assert w.fraction_on(w.hot, 1) == 1.0  # the sampler never migrates
            assert w.verify()
    finally:
        if filler:
            filler.stop()
    assert sysctls() == before
    assert not (tmp_path / "state.json").exists()


def test_reports_kernel_promotion_regime_with_node0_empty(tmp_path):
    before = sysctls()
    assert node_free_mib(0) > 1100, "node 0 must have more than 1 GiB free for this regime"
    with Workload(HOT_MIB, COLD_MIB, node=1) as w:
        ctx = make_context((w.pid,), state_file=str(tmp_path / "state.json"))
        sampler = HintFaultSampler(ctx)
        col = Collector(ctx, w.pid)

        async def main() -> dict[str, int]:
            await sampler.start()
            try:
                for _ in range(int(BOUND_S / 0.25)):
                    await asyncio.sleep(0.25)
                    col.drain()
                    if sampler.stats()["kernel_promoting"]:
                        break
                return sampler.stats()
            finally:
                await sampler.stop()

        st = asyncio.run(main())
        print(f"kernel regime: stats {st}, hot on node 0 {w.fraction_on(w.hot, 0):.3f}")
        assert st["kernel_promoting"] == 1 and st["kernel_promoted_pages"] > 0
        assert w.verify()
    assert sysctls() == before


RUNNER = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from samplerctx import make_context
from kmigratedd.samplers.perf import HintFaultSampler
async def main():
    s = HintFaultSampler(make_context(state_file=sys.argv[1]))
    await s.start()
    print("STARTED", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def test_sysctls_restored_after_sigkill_and_restart(tmp_path):
    before = sysctls()
    state = tmp_path / "state.json"
    here = str(Path(__file__).resolve().parent)
    p = subprocess.Popen([sys.executable, "-c", RUNNER, str(state), here],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "STARTED"
        assert sysctls() == ("2", "0")
        assert json.loads(state.read_text()) == {NUMA_BALANCING: before[0],
                                                 PROMOTE_RATE_LIMIT: before[1]}
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        p.kill()
    assert sysctls() == ("2", "0")  # a killed daemon cannot restore
    # The next start restores the values found by the killed one before changing them.
    sampler = HintFaultSampler(make_context(state_file=str(state)))

    async def again() -> None:
        await sampler.start()
        assert sysctls() == ("2", "0")
        assert json.loads(state.read_text()) == {NUMA_BALANCING: before[0],
                                                 PROMOTE_RATE_LIMIT: before[1]}
        await sampler.stop()

    asyncio.run(again())
    assert sysctls() == before and not state.exists()
