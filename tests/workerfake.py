"""Shared by the stage tests (router, admission, pipeline, worker): a scripted fake mover,
a fake clock, a fake sysfs tree and the stages wired as the daemon wires them."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import shutil
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kmigratedd import config, shim
from kmigratedd.errors import MovePagesError
from kmigratedd.inbox import Inbox
from kmigratedd.kernelfs import KernelFs
from kmigratedd.pipeline import MovePipeline
from kmigratedd.queues import CandidateQueues
from kmigratedd.router import Router
from kmigratedd.stats import MoveStats
from kmigratedd.topology import Topology, discover
from kmigratedd.worker import NodeWorker, inbox_limit

PAGE = 4096


BASE = 0x7F0000000000


MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeMover:
    """Pages live on nodes in a dict; scripted statuses override a move per page."""

    def __init__(self) -> None:
        self.where: dict[tuple[int, int], int] = {}
        self.script: dict[tuple[int, int], list[int]] = {}
        self.dead: set[int] = set()
        self.calls: list[tuple[int, int, int, int]] = []  # pid, pages, node, threads

    def place(self, pid: int, addrs, node: int) -> None:
        for a in addrs:
            self.where[(pid, a)] = node

    def query(self, pid: int, addrs: array) -> array:
        if pid in self.dead:
            raise MovePagesError(errno.ESRCH, "no such process")
        return array("i", [self.where.get((pid, a & ~0xFFF), -errno.ENOENT) for a in addrs])

    def move(self, pid, addrs, node, flags, threads):
        if pid in self.dead:
            raise MovePagesError(errno.ESRCH, "no such process")
        self.calls.append((pid, len(addrs), node, threads))
        out = array("i")
        for a in addrs:
            key = (pid, a & ~0xFFF)
            scripted = self.script.get(key)
            if scripted:
                out.append(scripted.pop(0))
                continue
            if key not in self.where:
                out.append(-errno.EFAULT)
                continue
            self.where[key] = node
            out.append(node)
        return shim.MoveResult(status=out, not_migrated=sum(1 for s in out if s != node))

    def on(self, pid: int, addrs, node: int) -> int:
        return sum(1 for a in addrs if self.where.get((pid, a)) == node)


@pytest.fixture
def fs(tmp_path: Path, data_dir: Path) -> KernelFs:
    shutil.copytree(data_dir / "cxl2", tmp_path / "root", symlinks=True)
    return KernelFs(tmp_path / "root")


def set_free(fs: KernelFs, node: int, free_bytes: int) -> None:
    p = fs.path(f"/sys/devices/system/node/node{node}/meminfo")
    lines = [ln for ln in p.read_text().splitlines() if "MemFree" not in ln]
    lines.insert(1, f"Node {node} MemFree: {free_bytes // 1024:>15} kB")
    p.write_text("\n".join(lines) + "\n")


def worker(node: int, fs: KernelFs, topo: Topology, mover, cfg, clock) -> NodeWorker:
    pipeline = MovePipeline(node, mover, MoveStats(), ThreadPoolExecutor(1),
                            page_size=topo.page_size)
    return NodeWorker(node, topology=topo, inbox=Inbox(inbox_limit(cfg)), pipeline=pipeline,
                      cfg=cfg, fs=fs, clock=clock)


class Stage:
    """A router and one worker for node 0, wired as the daemon wires them; ``step`` runs a
    router round, then a worker round."""

    def __init__(self, w: NodeWorker, router: Router) -> None:
        self.w, self.router = w, router

    def __getattr__(self, name: str):
        return getattr(self.w, name)

    @property
    def inbox_pages(self) -> int:
        return self.w.inbox.pages

    async def step(self) -> bool:
        await self.router.route_once()
        return await self.w.step()

    async def fill(self) -> int:
        return await self.router.route_once()

    async def promote_one(self, now: float) -> bool:
        """The worker's round, with the router taking candidates in while the kernel
        copies (in the daemon both run on the loop at once)."""
        done, _ = await asyncio.gather(self.w.promote_one(now), self.router.route_once())
        return done


def make(fs: KernelFs, mover: FakeMover, clock: Clock, **overrides) -> tuple[Stage,
                                                                            CandidateQueues]:
    base = dict(max_wait_ms=100, rate_limit_mb_per_s=0, min_free_bytes=0, resume_free_bytes=0,
                copy_threads=1, max_batch_ms=0)
    cfg = dataclasses.replace(config.WorkersConfig(), **{**base, **overrides})
    topo = discover(fs, page_size=PAGE)
    queues = CandidateQueues([0, 1], 1 << 16, page_size=PAGE)
    w = worker(0, fs, topo, mover, cfg, clock)
    router = Router(queues, {0: w.inbox}, topo, mover, cfg, clock=clock)
    return Stage(w, router), queues


def offer(queues: CandidateQueues, pid: int, addrs, cpu: int = 0, weight: int = 1) -> None:
    queues.push(cpu, array("i", [pid] * len(addrs)), array("Q", addrs),
                weights=array("I", [weight] * len(addrs)))


def pages(n: int, start: int = 0) -> list[int]:
    return [BASE + (start + i) * PAGE for i in range(n)]


def run(coro):
    return asyncio.run(coro)


async def steps(w: Stage, clock: Clock, n: int, dt: float = 0.0) -> None:
    for _ in range(n):
        await w.step()
        clock.t += dt


class SlowMover(FakeMover):
    """The kernel copy takes a while: pages still show their old node meanwhile."""

    def move(self, pid, addrs, node, flags, threads):
        time.sleep(0.2)
        return super().move(pid, addrs, node, flags, threads)


class FailingMover(FakeMover):
    """The n-th move call fails as a whole (6.12 returns -1/ENOMEM when the
    target is full)."""

    def __init__(self, fail_call: int, err: int) -> None:
        super().__init__()
        self.fail_call, self.err, self.n = fail_call, err, 0

    def move(self, pid, addrs, node, flags, threads):
        self.n += 1
        if self.n == self.fail_call:
            raise MovePagesError(self.err, os.strerror(self.err))
        return super().move(pid, addrs, node, flags, threads)


class BatchedFakeMover(FakeMover):
    """Offers move_batched as ShimMover does; call ``fail_call`` fails as a whole."""

    def __init__(self, fail_call: int = 0, err: int = errno.ENOMEM) -> None:
        super().__init__()
        self.fail_call, self.err = fail_call, err
        self.batched_calls: list[int] = []

    def move_batched(self, pid, addrs, node, flags, batch):
        self.batched_calls.append(len(addrs))
        status, seconds = array("i"), []
        for k, i in enumerate(range(0, len(addrs), batch)):
            seconds.append(0.001)
            if k + 1 == self.fail_call:
                return shim.BatchedMove(shim.MoveResult(status, 0), seconds,
                                        MovePagesError(self.err, os.strerror(self.err)))
            status.extend(super().move(pid, addrs[i:i + batch], node, flags, 1).status)
        return shim.BatchedMove(shim.MoveResult(status, 0), seconds, None)


def make_exchange(fs: KernelFs, mover: FakeMover, clock: Clock, adaptive: bool = False,
                  **overrides):
    """Node 0 (fast, nearly full) promotes from node 1 and demotes cold pages to it; with
    ``adaptive`` the router's hotness threshold follows the worker's capacity."""
    base = dict(max_wait_ms=100, rate_limit_mb_per_s=0, min_free_bytes=1 * MiB,
                resume_free_bytes=1 * MiB, copy_threads=1, batch_pages=64,
                free_refresh_ms=1_000_000)
    cfg = dataclasses.replace(config.WorkersConfig(), **{**base, **overrides})
    topo = discover(fs, page_size=PAGE)
    assert topo.demotion_target(0) == 1
    queues = CandidateQueues([0, 1], 1 << 16, page_size=PAGE)
    cold_queues = CandidateQueues([0, 1], 1 << 16, page_size=PAGE)
    pipeline = MovePipeline(0, mover, MoveStats(), ThreadPoolExecutor(1), page_size=PAGE)
    cold = Inbox(inbox_limit(cfg))
    w = NodeWorker(0, topology=topo, inbox=Inbox(inbox_limit(cfg)), pipeline=pipeline, cfg=cfg,
                   fs=fs, clock=clock, demote_inbox=cold, demote_to=1,
                   demotion=config.DemotionConfig(rate_limit_mb_per_s=0))
    router = Router(queues, {0: w.inbox}, topo, mover, cfg, clock=clock,
                    demote_queues=cold_queues, cold_inboxes={0: cold},
                    capacity=w.capacity_pages if adaptive else None)

    class ExchangeStage(Stage):
        async def step(self) -> bool:
            await self.router.route_once()
            await self.router.route_cold_once()
            return await self.w.step()

    return ExchangeStage(w, router), queues, cold_queues
