"""The default is precise: kmigratedd with no arguments (the embedded default config: sampler
auto) promotes the hot pages of a workload on node 1 and almost none of its cold ones.

Cases (each a fresh workload and a fresh daemon; hot and cold sets on node 1):
  dense     64 MiB hot + 64 MiB cold
  sparse16  a 64 MiB region where 1 page in 16 is hot, the other 15 cold and
            interleaved, + 64 MiB cold
  sparse64  the same with 1 page in 64
  thp       dense, on transparent huge pages
  shift     dense; once it is on node 0 the workload stops (its pages go cold where they
            are) and a second one, set up before the daemon started and stopped since,
            goes on with a new hot set on node 1.  (A workload that starts while the
            daemon runs writes its cold set then, after the NUMA-balancing scanner may
            have marked it: with node 0 above the kernel's free-space threshold, the
            kernel itself promotes such a page on that first write.)

Bounds per case: >= 90% of the (new) hot set on node 0 within BOUND_S, and at most 5% of
the workload's pages found on node 0 cold; every word intact.  With
KMIGRATEDD_PRECISION_PRESSURE=1 node 0 is first filled to PRESSURE_FREE_MIB free, below
the kernel's free-space threshold (max(1 GiB, 1/16 of the node) above the high watermark).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from daemonproc import DaemonProcess
from workload import Workload, fill_node, node_free_mib

KERNEL = os.environ.get("KMIGRATEDD_VM_KERNEL", "")
BOUND_S = float(os.environ.get("KMIGRATEDD_E2E_BOUND_S", "120"))
PRESSURE = os.environ.get("KMIGRATEDD_PRECISION_PRESSURE") == "1"
PRESSURE_FREE_MIB = 700
HOT_MIB = COLD_MIB = 64
MAX_COLD_SHARE = 0.05

CASES = {"dense": dict(sparse=1), "sparse16": dict(sparse=16), "sparse64": dict(sparse=64),
         "thp": dict(sparse=1, thp=True), "shift": dict(sparse=1)}


@pytest.fixture(scope="module")
def pressure():
    filler = fill_node(0, PRESSURE_FREE_MIB) if PRESSURE else None
    yield
    if filler is not None:
        filler.stop()


def wait_hot(d: DaemonProcess, w: Workload) -> float | None:
    """Seconds until 90% of ``w``'s hot set is on node 0 (None: not within BOUND_S)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < BOUND_S:
        assert w.alive() and d.proc.poll() is None
        if w.fraction_on(w.hot, 0) >= 0.9:
            return time.monotonic() - t0
        time.sleep(1)
    return None


def on_node0(w: Workload) -> tuple[int, int]:
    return (round(w.fraction_on(w.hot, 0) * len(w.hot)),
            round(w.fraction_on(w.cold, 0) * len(w.cold)))


@pytest.mark.parametrize("case", list(CASES))
def test_the_default_config_promotes_the_hot_pages_and_not_the_cold(
        case: str, tmp_path: Path, pressure: None) -> None:
    params = CASES[case]
    free0 = node_free_mib(0)
    w2 = None
    if case == "shift":
        w2 = Workload(HOT_MIB, COLD_MIB, node=1, flush_ms=10)
        w2.proc.send_signal(signal.SIGSTOP)
    with Workload(HOT_MIB, COLD_MIB, node=1, flush_ms=10, **params) as w:
        d = DaemonProcess(None, tmp_path)  # no arguments: the embedded default
        try:
            d.wait_running()
            chosen = d.wait_for("sampler auto: using", 5)
            t90 = wait_hot(d, w)
            first = w
            if w2 is not None and t90 is not None:
                w.proc.send_signal(signal.SIGSTOP)  # its hot set goes cold on node 0
                w2.proc.send_signal(signal.SIGCONT)  # and w2's hot set is the hot one
                try:
                    t90 = wait_hot(d, w2)
                    time.sleep(3)  # what follows the hot set
                    hot, cold = on_node0(w2)
                    ok = w2.verify()
                    n_hot, n_cold = len(w2.hot), len(w2.cold)
                finally:
                    w.proc.send_signal(signal.SIGCONT)
                    w2.stop()
            else:
                time.sleep(3)
                hot, cold = on_node0(w)
                ok = True
                n_hot, n_cold = len(w.hot), len(w.cold)
            ok = ok and first.verify()
            ctl = Path(d.proc.args[0]).with_name("kmigratedctl")
            st = json.loads(os.popen(f"{ctl} status --json").read())
        finally:
            rc = d.stop()
            if w2 is not None:
                w2.proc.send_signal(signal.SIGCONT)
                w2.stop()
    share = cold / (hot + cold) if hot + cold else 0.0
    result = dict(case=case, pressure=PRESSURE, node0_free_mib=round(free0), t90=t90,
                  hot_on_node0=f"{hot}/{n_hot}", cold_on_node0=f"{cold}/{n_cold}",
                  cold_share=round(share, 4), sampler=st.get("sampler"), rc=rc)
    print("PRECISION", result, "\n", chosen, "\nsampler", st.get("sampler_stats"), flush=True)
    assert rc == 0 and ok, result
    assert t90 is not None and hot >= 0.9 * n_hot, result
    assert share <= MAX_COLD_SHARE, result
