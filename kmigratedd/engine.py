"""The engine: builds the stages for a config on a tiered machine, wires them, runs them.

    sampler (+ start-up sweep) → per-CPU queues → router → inbox → node worker → move pipeline
                                                     (one of each per fast node)
    demoter (demotion.method) ← the room each worker needs      pressure monitor → workers

The sampler and the demotion method are resolved first (:func:`kmigratedd.samplers.resolve`,
:func:`kmigratedd.demotion.choose`) and each is built once; with ``sampler`` demotion the
sampler gets its demotion queues and each worker a cold lane.  The daemon
(kmigratedd/daemon.py) owns the lifecycle around it and hands in the thread pools.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import demotion, samplers
from .capacity import NodeLevels
from .config import Config, WorkersConfig
from .demotion import Demoter, DemoterContext
from .errors import KmigratedError, SamplerUnavailableError
from .inbox import Inbox
from .kernelfs import KernelFs
from .pipeline import IdleCpus, MovePipeline, Mover, ShimMover
from .pressure import PressureMonitor
from .processes import PidMoves
from .procfs import online_cpus
from .queues import CandidateQueues
from .router import Router
from .samplers.base import Sampler, SamplerContext
from .scope import Scope
from .stats import MoveStats
from .topology import Topology
from .worker import NodeWorker, inbox_limit

log = logging.getLogger("kmigratedd")

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]
Pool = Callable[..., ThreadPoolExecutor]


class Engine:
    """The stages of one daemon (see the module docstring)."""

    def __init__(self, cfg: Config, fs: KernelFs, topology: Topology, queues: CandidateQueues,
                 *, spawn: Spawn, pool: Pool, mover: Mover | None = None) -> None:
        self.config = cfg
        self.fs = fs
        self.topology = topology
        self.spawn = spawn
        self.pool = pool
        self.mover = mover
        self.queues = queues
        self.demote_queues: CandidateQueues | None = None
        self.sampler: Sampler | None = None
        self.sweep: Sampler | None = None   # the start-up sweep while it runs
        self.method = "off"                 # the demotion method in effect
        self.demoter: Demoter | None = None
        self.workers: dict[int, NodeWorker] = {}
        self.router: Router | None = None
        self.pressure: PressureMonitor | None = None
        self.paused = False
        self.worker_tasks: dict[int, asyncio.Task[None]] = {}
        self.pid_moves = PidMoves()  # pages moved per process, all workers
        self._demoter_task: asyncio.Task[None] | None = None

    # --- signals the stages share ----------------------------------------------

    def sampler_context(self, cfg: Config) -> SamplerContext:
        return SamplerContext(cfg, self.fs, self.topology, self.queues, Scope(cfg.scope, self.fs),
                              demote_queues=self.demote_queues, room_needed=self.room_needed)

    def room_needed(self) -> int:
        """Bytes of fast-tier room promotion needs, over every fast node, as each worker
        last computed it (samplers call this from their executor thread)."""
        return sum(w.last_room_needed for w in list(self.workers.values()))

    def room_for(self, node: int) -> int:
        """The room ``node``'s worker needs (the demoter's signal): none while memory
        pressure holds."""
        w = self.workers.get(node)
        if w is None or (self.pressure is not None and self.pressure.held):
            return 0
        return w.last_room_needed

    def capacity_pages(self, now: float) -> int:
        """Pages the fast tier can take now, over every fast node (the router's adaptive
        threshold fits the candidates to it).  Only while the sampler's own cold pages make
        room: the kernel's demotion (damon-paddr, kswapd) makes room the workers cannot
        count ahead, and the samplers without a fast-tier view (hint-faults) report the
        same pages again and again with one sample each, which says nothing of hotness."""
        return sum(w.capacity_pages(now) for w in list(self.workers.values()))

    def wake_workers(self) -> None:
        for w in self.workers.values():
            w.wake()

    # --- building and starting ----------------------------------------------------

    async def start(self) -> None:
        """Resolve the sampler and the demotion method, build each once, and start every
        stage."""
        cfg = self.config
        name = samplers.resolve(cfg.sampler.name, self.sampler_context(cfg))
        self.method = demotion.choose(cfg.demotion.method, name, self.fs)
        if self.method == "sampler":
            self.demote_queues = CandidateQueues(online_cpus(self.fs), cfg.queues.capacity_per_cpu,
                                                 self.topology.page_size)
            log.info("demotion: cold pages from the %s sampler make room on a full fast tier",
                     name)
        self.sampler = samplers.FACTORIES[name].create(self.sampler_context(cfg))
        await self.sampler.start()
        log.info("sampler %s started", self.sampler.name)
        self.pressure = PressureMonitor(self.fs, cfg.scope.cgroups,
                                        cfg.workers.pressure_hold_percent,
                                        on_release=self.wake_workers)
        self.pressure.poll()
        self.spawn(self.pressure.run(), "pressure")
        self._start_workers()
        await self._start_demoter(cfg)
        await self._start_sweep(cfg)

    def workers_config(self, cfg: Config) -> WorkersConfig:
        """The workers' config.  With the sampler's cold pages or a paddr scheme making
        room, promotion resumes once free memory is one batch above min_free_bytes rather
        than at resume_free_bytes: the room demotion makes is for the pages waiting, and a
        wide hysteresis would demote that much more before the first of them moves.  (With
        kswapd, :meth:`configure_worker` puts the node's watermarks in place of the
        headroom.)"""
        w = cfg.workers
        if self.method in ("sampler", "damon-paddr"):
            page = self.topology.page_size
            resume = min(w.resume_free_bytes, w.min_free_bytes + w.batch_pages * page)
            return dataclasses.replace(w, resume_free_bytes=resume)
        return w

    def configure_worker(self, w: NodeWorker, cfg: Config) -> None:
        """Apply ``cfg`` to a worker.  Where the demoter says so (kswapd), the node's
        watermarks take the place of the headroom (:mod:`~kmigratedd.capacity`): promotion
        takes the node below its low watermarks, where the allocations wake kswapd, and
        stops above its min watermarks, where they would reclaim themselves.  Not while the
        node's demotion target is short of free memory: kswapd's demotions would fail
        there, and its reclaim would drop page cache (or swap) on the fast node instead, so
        the configured headroom holds."""
        w.configure(self.workers_config(cfg))
        floor = (self.method == "kswapd" and
                 (self.demoter is None or self.demoter.kernel_floor(w.node)))
        if floor:
            if w.capacity.levels is None:
                w.capacity.levels = NodeLevels(self.fs, w.node, self.topology.page_size)
                w.refresh_free()
        elif w.capacity.levels is not None:
            w.capacity.levels = None
            w.refresh_free()

    def headroom_changed(self, node: int) -> None:
        """The demoter's rule for ``node``'s headroom changed (kswapd's target short of
        free memory, or back above the floor): its worker follows."""
        w = self.workers.get(node)
        if w is not None:
            self.configure_worker(w, self.config)

    def _start_workers(self) -> None:
        cfg = self.config.workers
        offload = self.pool(2, "kmigratedd-io")
        self.mover = self.mover or ShimMover(self.pool(64, "kmigratedd-copy", moves=True))
        idle = IdleCpus(self.fs)
        inboxes: dict[int, Inbox] = {}
        cold: dict[int, Inbox] = {}
        for node in self.topology.fast_nodes:
            inboxes[node] = Inbox(inbox_limit(cfg))
            # Demotion goes to the nearest slower node that promotes to this one.
            down = self.topology.demotion_target(node)
            if self.demote_queues is not None and down is not None:
                cold[node] = Inbox(inbox_limit(cfg))
            pipeline = MovePipeline(node, self.mover, MoveStats(),
                                    self.pool(1, f"kmigratedd-move{node}", moves=True),
                                    page_size=self.topology.page_size, idle_cpus=idle,
                                    by_pid=self.pid_moves)
            w = NodeWorker(node, topology=self.topology, inbox=inboxes[node], pipeline=pipeline,
                           cfg=self.workers_config(self.config), fs=self.fs,
                           demote_inbox=cold.get(node),
                           demote_to=down if node in cold else None,
                           demotion=self.config.demotion)
            w.paused = self.paused
            w.pressure = self.pressure
            self.configure_worker(w, self.config)
            self.workers[node] = w
            self.worker_tasks[node] = self.spawn(w.run(), f"worker-node{node}")
        self.router = Router(self.queues, inboxes, self.topology, self.mover, cfg,
                             executor=offload, demote_queues=self.demote_queues,
                             cold_inboxes=cold,
                             capacity=self.capacity_pages if self.method == "sampler" else None)
        self.router.paused = self.paused
        self.spawn(self.router.run(), "router")

    def _demoter_context(self, cfg: Config) -> DemoterContext:
        return DemoterContext(cfg, self.fs, self.topology, room_for=self.room_for,
                              on_short=self.headroom_changed,
                              executor=lambda: self.pool(1, "kmigratedd-demote"))

    async def _start_demoter(self, cfg: Config) -> None:
        """Build and start the demoter of the method chosen; under auto, a damon-paddr
        demoter that fails to start gives way to kswapd."""
        if self.method == "off":
            return
        demoter = demotion.FACTORIES[self.method].create(self._demoter_context(cfg))
        try:
            await demoter.start()
        except SamplerUnavailableError as exc:
            if cfg.demotion.method != "auto" or self.method != "damon-paddr":
                raise KmigratedError(f"demotion.method {self.method}: {exc}") from None
            why = demotion.kswapd_unavailable(self.fs)
            log.warning("demotion: DAMON paddr demotion failed to start (%s): %s", exc,
                        "kswapd demotes" if why is None else f"no demotion ({why})")
            self.method = "kswapd" if why is None else "off"
            await self._start_demoter(cfg)
            return
        self.demoter = demoter
        if self.method == "damon-paddr":
            log.info("demotion: a DAMON paddr migrate_cold scheme makes room on a full fast "
                     "tier, its quota following the room needed")
        for w in self.workers.values():
            w.kernel_demoted = lambda node=w.node: demoter.demoted(node)  # type: ignore[misc]
            self.configure_worker(w, cfg)
        self._demoter_task = self.spawn(demoter.run(), "demoter")

    async def _start_sweep(self, cfg: Config) -> None:
        """The start-up sweep: beside a sampler that waits for the kernel's reports, a
        sampler reading accessed bits runs for sampler.startup_sweep_ms, offering hot
        pages only (its context has no demotion queues)."""
        if (cfg.sampler.startup_sweep_ms <= 0 or self.sampler is None
                or self.sampler.name not in samplers.WAITING_SAMPLERS):
            return
        ctx = self.sampler_context(cfg)
        ctx.demote_queues = None
        skip = ({"damon": "the damon-paddr demoter runs DAMON"}
                if self.method == "damon-paddr" else {})
        self.sweep, why = await samplers.start_sweep(ctx, skip)
        if self.sweep is None:
            log.info("no start-up sweep (%s)", "; ".join(why))
            return
        log.info("start-up sweep: %s for %.0f s beside %s", self.sweep.name,
                 cfg.sampler.startup_sweep_ms / 1000, self.sampler.name)
        self.spawn(self.end_sweep(cfg.sampler.startup_sweep_ms / 1000,
                                  cfg.daemon.shutdown_timeout_ms / 1000), "sweep")

    async def end_sweep(self, after_s: float, timeout_s: float) -> None:
        await asyncio.sleep(after_s)
        sweep, self.sweep = self.sweep, None
        if sweep is not None:
            await stop_within(sweep.stop(), timeout_s, "start-up sweep")
            log.info("start-up sweep ended: %s offered %d candidates", sweep.name,
                     sweep.stats().get("candidates_offered", 0))

    # --- running ------------------------------------------------------------------

    def pause(self, paused: bool) -> None:
        self.paused = paused
        if self.router is not None:
            self.router.paused = paused
            if not paused:
                self.router.wake()
        for w in self.workers.values():
            w.paused = paused
            if not paused:
                w.wake()

    async def replace_sampler(self, cfg: Config) -> None:
        """Build the sampler of a reloaded config and swap it in; the old one is started
        again if the new one fails (KmigratedError or OSError says why)."""
        new = samplers.create(cfg.sampler.name, self.sampler_context(cfg))
        old = self.sampler
        if old is not None:
            await old.stop()
        try:
            await new.start()
        except (KmigratedError, OSError):
            if old is not None:
                await old.start()
            raise
        self.sampler = new
        log.info("sampler %s started", new.name)

    def apply(self, cfg: Config) -> None:
        """A reloaded config for every stage (what may change while running)."""
        self.config = cfg
        for w in self.workers.values():
            self.configure_worker(w, cfg)
            w.configure_demotion(cfg.demotion)
            w.wake()
        configure = getattr(self.demoter, "configure", None)
        if configure is not None:
            configure(cfg.demotion)
        if self.pressure is not None:
            self.pressure.configure(cfg.scope.cgroups, cfg.workers.pressure_hold_percent)
        if self.router is not None:
            self.router.configure(cfg.workers)

    def heartbeats(self) -> dict[str, float]:
        """The last round of every stage that must keep going round."""
        beats = {f"worker for node {n}": w.stats.heartbeat for n, w in self.workers.items()}
        if self.router is not None:
            beats["router"] = self.router.stats.heartbeat
        return beats

    async def stop(self, timeout: float) -> None:
        """The sampler first (restoring any sysctl it changed), then the demoter (nothing
        demotes once promotion has ended); the router stops taking candidates and the
        workers finish the batch in flight, all within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.sampler is not None:
            await stop_within(self.sampler.stop(), timeout, "sampler")
        if self.sweep is not None:
            await stop_within(self.sweep.stop(), timeout, "start-up sweep")
        if self.demoter is not None:
            if self._demoter_task is not None:
                self._demoter_task.cancel()
            await stop_within(self.demoter.stop(), timeout, "demotion")
        if self.router is not None:
            self.router.stop()
        for w in self.workers.values():
            w.stop()
        pending = [t for t in self.worker_tasks.values() if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            for t in late:
                t.cancel()
            if late:
                log.warning("%d worker(s) did not finish within %.1fs", len(late), timeout)

    def promoted_pages(self) -> int:
        return sum(w.moves.promoted_pages for w in self.workers.values())


async def stop_within(stop: Coroutine[Any, Any, None], timeout: float, what: str) -> None:
    """Await ``stop`` for at most ``timeout`` seconds; a timeout or an error is logged and
    the shutdown goes on."""
    try:
        await asyncio.wait_for(stop, timeout)
    except TimeoutError:
        log.warning("%s did not stop within %.1fs", what, timeout)
    except Exception:  # keep shutting down
        log.exception("stopping the %s failed", what)
