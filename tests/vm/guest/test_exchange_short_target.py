"""kmigratedd's embedded default (hint-faults, demotion by kswapd) while the slow node is
short of memory (Debian 6.12): node 0 of 4.5 GiB is held by a cold process down to about
FREE_LEFT_MIB free, and node 1, where the workload's hot set is, is filled to below
workers.min_free_bytes.

kswapd could not demote to node 1 then, and its reclaim would drop page cache on node 0
instead, so promotion keeps the workers' headroom: nothing is promoted, and the status
says why.  Once the filler of node 1 exits, node 1 has room again: the headroom is lifted,
kswapd makes room on node 0 and >= 90% of the hot set gets there within BOUND_S, while the
workload's cold set stays on node 1.  Every word of every process stays intact.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from daemonproc import DaemonProcess
from kmigratedd import config
from workload import Workload, fill_node, node_free_mib, node_total_mib

KERNEL = os.environ.get("KMIGRATEDD_VM_KERNEL", "")
BOUND_S = float(os.environ.get("KMIGRATEDD_E2E_BOUND_S", "300"))
FREE_LEFT_MIB = 120
HOT_MIB, COLD_MIB = 128, 64
SHORT_S = 20  # how long the slow node stays short once the daemon runs
MiB = 1 << 20

pytestmark = pytest.mark.skipif(KERNEL != "debian-6.12",
                                 reason="a kernel with NUMA balancing tiering (6.12)")


def test_promotion_keeps_the_headroom_while_the_slow_node_is_short(tmp_path: Path) -> None:
    total0 = node_total_mib(0)
    assert total0 >= 4 * 1024, f"node 0 has {total0:.0f} MiB: give it at least 4 GiB"
    floor_mib = config.Config().workers.min_free_bytes / MiB
    filler0 = fill_node(0, FREE_LEFT_MIB)
    assert filler0 is not None
    filler1 = None
    try:
        with Workload(HOT_MIB, COLD_MIB, node=1, flush_ms=10) as w:
            filler1 = fill_node(1, floor_mib / 2)
            assert filler1 is not None
            free0, free1 = node_free_mib(0), node_free_mib(1)
            print(f"node 0: {free0:.0f} MiB free; node 1: {free1:.0f} MiB free (the floor is "
                  f"{floor_mib:.0f} MiB); hot set {HOT_MIB} MiB on node 1", flush=True)
            assert free1 < floor_mib
            d = DaemonProcess(None, tmp_path)  # the embedded default
            try:
                d.wait_running()
                d.wait_for("promotion to node 0 keeps its headroom")
                t0 = time.monotonic()
                while time.monotonic() - t0 < SHORT_S:
                    time.sleep(2)
                    assert w.alive() and d.proc.poll() is None
                st = d.status()
                short = st["demotion"]["nodes"]["0"]
                promoted_short = d.metric_sum("kmigratedd_promoted_pages_total")
                hot0_short = w.fraction_on(w.hot, 0)
                worker = st["nodes"]["0"].get("worker") or {}
                print("SHORT", dict(demotion=short, promoted=promoted_short,
                                    hot_on_fast=hot0_short, node0_free_mib=node_free_mib(0),
                                    node1_free_mib=node_free_mib(1)),
                      "\nworker", worker, flush=True)
                assert st["demotion"]["method"] == "kswapd"
                assert short["target_short"] is True
                assert promoted_short == 0 and hot0_short < 0.02

                filler1.stop()
                filler1 = None
                d.wait_for("has room again")
                t1 = time.monotonic()
                t90 = None
                while time.monotonic() - t1 < BOUND_S:
                    time.sleep(2)
                    assert w.alive() and d.proc.poll() is None
                    if w.fraction_on(w.hot, 0) >= 0.9:
                        t90 = time.monotonic() - t1
                        break
                st = d.status()
                result = dict(t90=t90, hot_on_fast=w.fraction_on(w.hot, 0),
                              workload_cold_on_slow=w.fraction_on(w.cold, 1),
                              promoted=d.metric_sum("kmigratedd_promoted_pages_total"),
                              demoted=d.metric_sum("kmigratedd_demoted_pages_total"),
                              demotion=st["demotion"]["nodes"]["0"],
                              node0_free_mib=node_free_mib(0), node1_free_mib=node_free_mib(1))
                print("ROOM", result, flush=True)
                ok = w.verify() and filler0.verify()
            finally:
                rc = d.stop()
            assert rc == 0 and ok
            assert t90 is not None, result
            assert result["demotion"]["target_short"] is False, result
            assert result["demoted"] > 0, result  # the room came from node 0's cold process
            assert result["workload_cold_on_slow"] >= 0.98, result
    finally:
        if filler1 is not None:
            filler1.stop()
        filler0.stop()
