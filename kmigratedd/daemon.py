"""The composition root: builds every collaborator once and runs the daemon.

    config → topology → per-CPU queues ← sampler
                        per-CPU queues → router → inbox → node worker → move pipeline
                                                  (one of each per fast node)
           metrics registry + /metrics endpoint, control socket, sd_notify

Thread pools are created here and nowhere else: one for work off the event loop (the
router's location queries and the samplers' rounds), one move thread per worker, and
the copy threads that split a batch for parallel copy.

Lifecycle (as uvicorn): :meth:`Daemon.startup` → :meth:`Daemon.serve` →
:meth:`Daemon.shutdown`. Shutdown stops the sampler first (restoring any sysctl
it changed), then lets the workers finish the batch in flight, bounded by
``daemon.shutdown_timeout_ms``. Signals are wired in :func:`run` only:
SIGTERM/SIGINT stop, SIGHUP reloads (a bad file is logged and the running config
stays).

On a full fast tier promotion makes room by demoting cold pages (``demotion.method``):
a sampler that sees the fast tier (:data:`DEMOTING_SAMPLERS`) offers its cold pages to
the workers; with any other sampler the kernel demotes (:mod:`~kmigratedd.demotion`:
a DAMON paddr ``migrate_cold`` scheme whose quota follows the room the workers need,
or kswapd with demotion_enabled).

On a machine with no slower memory tier there is nothing to promote: the daemon
says so, runs no sampler and no worker, and keeps serving its metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import __version__, demotion, logsetup, samplers, sysctl
from . import config as config_mod
from .config import Config, WorkersConfig
from .capacity import NodeLevels
from .demotion import KswapdDemotion, PaddrDemoter
from .control import ControlServer
from .errors import KmigratedError, SamplerUnavailableError
from .kernelfs import KernelFs
from .metrics import Metrics, MetricsServer, MetricsSources
from .pressure import PressureMonitor
from .procfs import online_cpus
from .queues import CandidateQueues
from .samplers.base import Sampler, SamplerContext
from .inbox import Inbox
from .pipeline import IdleCpus, MovePipeline, Mover, ShimMover
from .router import Router
from .scope import Scope
from .sdnotify import Notifier
from .topology import Topology, discover, read_node_meminfo
from .worker import NodeWorker, WorkerStats, inbox_limit

log = logging.getLogger("kmigratedd")

# Samplers that see accesses on the fast tier and offer its cold pages for demotion.
DEMOTING_SAMPLERS = ("damon", "idle")
# Samplers that learn of a hot page only when the kernel reports an access to it, and the
# samplers (reading accessed bits themselves) that sweep beside them at start, in order.
WAITING_SAMPLERS = ("hint-faults", "pebs", "ibs")
SWEEP_SAMPLERS = ("idle", "damon")


@dataclass
class Daemon:
    config: Config
    config_path: str | None
    fs: KernelFs
    mover: Mover | None = None
    notifier: Notifier = field(default_factory=Notifier)
    topology: Topology | None = None
    queues: CandidateQueues | None = None
    sampler: Sampler | None = None
    # The start-up sweep (sampler.startup_sweep_ms) while it runs.
    sweep: Sampler | None = None
    workers: dict[int, NodeWorker] = field(default_factory=dict)
    router: Router | None = None
    demote_queues: CandidateQueues | None = None
    # The demotion method in effect: off, sampler (the sampler's cold pages), damon-paddr
    # or kswapd (the kernel demotes, through self.demoter).
    demotion_method: str = "off"
    demoter: PaddrDemoter | KswapdDemotion | None = None
    # --dry-run on the command line: it holds across reloads too.
    dry_run_override: bool | None = None
    pressure: PressureMonitor | None = None
    metrics: Metrics | None = None
    metrics_server: MetricsServer | None = None
    control: ControlServer | None = None
    started_at: float = field(default_factory=time.time)
    _rates: dict[int, tuple[float, float]] = field(default_factory=dict)  # node -> pages/s, B/s
    _rate_snap: tuple[float, dict[int, int]] | None = None
    free_bytes: dict[int, int] = field(default_factory=dict)
    paused: bool = False
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _worker_tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    _router_task: asyncio.Task[None] | None = None
    _demoter_task: asyncio.Task[None] | None = None
    _pools: list[ThreadPoolExecutor] = field(default_factory=list)
    _move_tids: set[int] = field(default_factory=set)
    _start_nice: int = 0
    _last_reload_error: str = ""

    # --- building ----------------------------------------------------------

    def _discover(self, cfg: Config) -> Topology:
        return discover(self.fs, tiers=cfg.topology.tiers,
                        promotion_targets=cfg.topology.promotion_targets)

    def _sampler_context(self, cfg: Config) -> SamplerContext:
        assert self.topology is not None and self.queues is not None
        return SamplerContext(cfg, self.fs, self.topology, self.queues, Scope(cfg.scope, self.fs),
                              demote_queues=self.demote_queues, room_needed=self.room_needed)

    def room_needed(self) -> int:
        """Bytes of fast-tier room promotion needs, over every fast node, as each worker
        last computed it (samplers call this from their executor thread)."""
        return sum(w.last_room_needed for w in list(self.workers.values()))

    def capacity_pages(self, now: float) -> int:
        """Pages the fast tier can take now, over every fast node (the router's adaptive
        threshold fits the candidates to it).  Only while the sampler's own cold pages make
        room: the kernel's demotion (damon-paddr, kswapd) makes room the workers cannot
        count ahead, and the samplers without a fast-tier view (hint-faults) report the
        same pages again and again with one sample each, which says nothing of hotness."""
        return sum(w.capacity_pages(now) for w in list(self.workers.values()))

    def _demotion_method(self, cfg: Config, sampler: str) -> str:
        """The demotion method for this sampler: off, sampler, damon-paddr or kswapd.
        auto takes the sampler's cold pages where it sees the fast tier, else kswapd where
        demotion_enabled is writable, else a DAMON paddr scheme where the kernel has one.
        kswapd comes before damon-paddr because it makes room at once: its LRU already
        tells cold from hot, where a paddr scheme first waits a cold age for DAMON's
        regions, and then again for the pages whose accessed bit it finds set
        (benchmarks/quality.py, full fast tier).  A method named in the config that
        cannot run here raises KmigratedError."""
        method = cfg.demotion.method
        if method == "off":
            return "off"
        own = sampler in DEMOTING_SAMPLERS
        if method in ("sampler", "damon") or (method == "auto" and own):
            if own:
                return "sampler"
            log.warning("demotion.method %s needs a sampler that sees the fast tier (%s), "
                        "not %s: no demotion", method, ", ".join(DEMOTING_SAMPLERS), sampler)
            return "off"
        if method == "damon-paddr" and sampler == "damon":
            raise KmigratedError("demotion.method damon-paddr: the damon sampler runs DAMON "
                                 "already: use demotion.method damon (or auto)")
        why_kswapd = None
        if method in ("auto", "kswapd"):
            why_kswapd = demotion.kswapd_unavailable(self.fs)
            if why_kswapd is None:
                return "kswapd"
            if method == "kswapd":
                raise KmigratedError(f"demotion.method kswapd: {why_kswapd}")
            log.info("demotion: kswapd cannot demote (%s)", why_kswapd)
        why = demotion.paddr_unavailable(self.fs)
        if why is None:
            return "damon-paddr"
        if method == "damon-paddr":
            raise KmigratedError(f"demotion.method damon-paddr: {why}")
        log.warning("demotion: the %s sampler does not see the fast tier, %s and %s: "
                    "no demotion", sampler, why_kswapd, why)
        return "off"

    def _demotion_queues(self, cfg: Config) -> CandidateQueues:
        """Queues for the sampler's demotion candidates."""
        assert self.topology is not None
        return CandidateQueues(online_cpus(self.fs), cfg.queues.capacity_per_cpu,
                               self.topology.page_size)

    def _workers_config(self, cfg: Config) -> WorkersConfig:
        """The workers' config.  With the sampler's cold pages or a paddr scheme making
        room, promotion resumes once free memory is one batch above min_free_bytes rather
        than at resume_free_bytes: the room demotion makes is for the pages waiting, and a
        wide hysteresis would demote that much more before the first of them moves.  (With
        kswapd, :meth:`_configure_worker` puts the node's watermarks in place of the
        headroom.)"""
        w = cfg.workers
        if self.demotion_method in ("sampler", "damon-paddr"):
            page = self.topology.page_size if self.topology is not None else 4096
            resume = min(w.resume_free_bytes, w.min_free_bytes + w.batch_pages * page)
            return dataclasses.replace(w, resume_free_bytes=resume)
        return w

    def _configure_worker(self, w: NodeWorker, cfg: Config) -> None:
        """Apply ``cfg`` to a worker.  With kswapd demoting, the node's watermarks take the
        place of the headroom (:mod:`~kmigratedd.capacity`): promotion takes the node
        below its low watermarks, where the allocations wake kswapd, and stops above its
        min watermarks, where they would reclaim themselves.  Not while the node's
        demotion target has less than min_free_bytes free: kswapd's demotions would fail
        there, and its reclaim would drop page cache (or swap) on the fast node instead
        (:attr:`KswapdDemotion.short`), so the configured headroom holds."""
        w.configure(self._workers_config(cfg))
        short = isinstance(self.demoter, KswapdDemotion) and w.node in self.demoter.short
        if self.demotion_method == "kswapd" and not short:
            if w.levels is None:
                assert self.topology is not None
                w.levels = NodeLevels(self.fs, w.node, self.topology.page_size)
                w.refresh_free()
        elif w.levels is not None:
            w.levels = None
            w.refresh_free()

    def _headroom_changed(self, node: int) -> None:
        """The kswapd demoter found ``node``'s demotion target short of free memory, or
        back above the floor: its worker's headroom follows."""
        w = self.workers.get(node)
        if w is not None:
            self._configure_worker(w, self.config)

    def _room_for(self, node: int) -> int:
        """The room ``node``'s worker needs: none while memory pressure holds."""
        w = self.workers.get(node)
        if w is None or (self.pressure is not None and self.pressure.held):
            return 0
        return w.last_room_needed

    def _wake_workers(self) -> None:
        for w in self.workers.values():
            w.wake()

    def _apply_nice(self, nice: int) -> None:
        """Set every thread of the daemon to ``nice`` (new threads inherit it from the
        thread that starts them), but the move threads (:meth:`_move_thread`)."""
        failed = []
        for tid in self.fs.listdir("/proc/self/task", r"\d+"):
            if int(tid) in self._move_tids:
                continue
            try:
                if os.getpriority(os.PRIO_PROCESS, int(tid)) != nice:
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            except OSError as exc:
                failed.append(f"{tid}: {exc.strerror}")
        if failed:
            log.warning("daemon.nice %d: could not set %d thread(s) (%s); going below the "
                        "niceness it started with needs CAP_SYS_NICE", nice, len(failed),
                        failed[0])

    def _count_demoted(self, src: int, dst: int, pages: int) -> None:
        """Pages the kernel demoted for the demoter, counted with the worker's own
        demotions (metrics kmigratedd_demoted_*, status)."""
        w = self.workers.get(src)
        if w is not None:
            w.stats.demoted[(src, dst)] += pages

    async def _start_demoter(self, cfg: Config) -> None:
        """Start the kernel-side demotion chosen; under auto, a damon-paddr demoter that
        fails to start gives way to kswapd."""
        assert self.topology is not None
        if self.demotion_method == "damon-paddr":
            targets = {n: down for n in self.topology.fast_nodes
                       if (down := self.topology.demotion_target(n)) is not None}
            demoter = PaddrDemoter(self.fs, targets, cfg.demotion, cfg.sampler.damon,
                                   page_size=self.topology.page_size, room_for=self._room_for,
                                   count=self._count_demoted,
                                   executor=self._pool(1, "kmigratedd-demote"),
                                   owner_file=demotion.owner_path(
                                       cfg.sampler.hint_faults.state_file))
            try:
                await demoter.start()
            except SamplerUnavailableError as exc:
                if cfg.demotion.method != "auto":
                    raise KmigratedError(f"demotion.method damon-paddr: {exc}") from None
                why = demotion.kswapd_unavailable(self.fs)
                log.warning("demotion: DAMON paddr demotion failed to start (%s): %s", exc,
                            "kswapd demotes" if why is None else f"no demotion ({why})")
                self.demotion_method = "kswapd" if why is None else "off"
                for w in self.workers.values():
                    self._configure_worker(w, cfg)
            else:
                self.demoter = demoter
                log.info("demotion: a DAMON paddr migrate_cold scheme makes room on a full "
                         "fast tier, its quota following the room needed")
        if self.demotion_method == "kswapd":
            targets = {n: down for n in self.topology.fast_nodes
                       if (down := self.topology.demotion_target(n)) is not None}
            self.demoter = KswapdDemotion(
                self.fs, demotion.state_path(cfg.sampler.hint_faults.state_file), targets,
                self._count_demoted, target_floor_bytes=cfg.workers.min_free_bytes,
                on_short=self._headroom_changed)
            await self.demoter.start()
        if self.demoter is not None:
            self._demoter_task = self._spawn(self.demoter.run(), "demoter")

    async def _start_sweep(self, cfg: Config) -> None:
        """The start-up sweep: beside a sampler that waits for the kernel's reports, a
        sampler reading accessed bits runs for sampler.startup_sweep_ms, offering hot
        pages only (its context has no demotion queues)."""
        if (cfg.sampler.startup_sweep_ms <= 0 or self.sampler is None
                or self.sampler.name not in WAITING_SAMPLERS):
            return
        ctx = self._sampler_context(cfg)
        ctx.demote_queues = None
        why = []
        for name in SWEEP_SAMPLERS:
            if name == "damon" and self.demotion_method == "damon-paddr":
                why.append("damon: the damon-paddr demoter runs DAMON")
                continue
            missing = samplers.FACTORIES[name].probe(ctx)
            if missing is not None:
                why.append(f"{name}: {missing}")
                continue
            sweep = samplers.FACTORIES[name].create(ctx)
            try:
                await sweep.start()
            except (KmigratedError, OSError) as exc:
                why.append(f"{name}: {exc}")
                continue
            self.sweep = sweep
            log.info("start-up sweep: %s for %.0f s beside %s", name,
                     cfg.sampler.startup_sweep_ms / 1000, self.sampler.name)
            self._spawn(self._end_sweep(cfg.sampler.startup_sweep_ms / 1000), "sweep")
            return
        log.info("no start-up sweep (%s)", "; ".join(why))

    async def _end_sweep(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        sweep, self.sweep = self.sweep, None
        if sweep is not None:
            await _stop_within(sweep.stop(), self.config.daemon.shutdown_timeout_ms / 1000,
                               "start-up sweep")
            log.info("start-up sweep ended: %s offered %d candidates", sweep.name,
                     sweep.stats().get("candidates_offered", 0))

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def startup(self) -> None:
        cfg = self.config
        self._start_nice = os.getpriority(os.PRIO_PROCESS, 0)
        self._apply_nice(cfg.daemon.nice)
        # Whatever the sampler: a killed hint-faults run may have left sysctls changed, a
        # killed kswapd demotion demotion_enabled.
        sysctl.recover(self.fs, cfg.sampler.hint_faults.state_file)
        sysctl.recover(self.fs, demotion.state_path(cfg.sampler.hint_faults.state_file))
        demotion.recover_kdamonds(self.fs,
                                  demotion.owner_path(cfg.sampler.hint_faults.state_file))
        self.topology = topo = self._discover(cfg)
        for line in topo.describe().splitlines():
            log.info("%s", line)
        self.queues = CandidateQueues(online_cpus(self.fs), cfg.queues.capacity_per_cpu,
                                      topo.page_size)
        self.metrics = Metrics(MetricsSources(
            fs=self.fs, topology=lambda: self.topology, workers=lambda: self.workers,
            router=lambda: self.router, queues=lambda: self.queues, sampler=lambda: self.sampler,
            paused=lambda: self.paused, dry_run=lambda: self.config.workers.dry_run,
            pressure=lambda: self.pressure))
        if cfg.metrics.enabled:
            self.metrics_server = MetricsServer(self.metrics, cfg.metrics.listen_address,
                                                cfg.metrics.port)
            await self.metrics_server.start()
        self.control = ControlServer(cfg.control.socket_path, {
            "status": self._rpc_status, "pause": self._rpc_pause, "resume": self._rpc_resume,
            "reload": self._rpc_reload, "config": self._rpc_config}, cfg.control.group,
            source=self.config_path or config_mod.DEFAULT_SOURCE, fs=self.fs)
        await self.control.start()
        if topo.targets:
            ctx = self._sampler_context(cfg)
            self.sampler = samplers.create(cfg.sampler.name, ctx)
            self.demotion_method = self._demotion_method(cfg, self.sampler.name)
            if self.demotion_method == "sampler":
                # The sampler chosen demotes: build it again with its demotion queues (building
                # has no side effect; start() does the work).
                ctx.demote_queues = self.demote_queues = self._demotion_queues(cfg)
                self.sampler = samplers.create(self.sampler.name, ctx)
                log.info("demotion: cold pages from the %s sampler make room on a full fast "
                         "tier", self.sampler.name)
            await self.sampler.start()
            log.info("sampler %s started", self.sampler.name)
            self.pressure = PressureMonitor(self.fs, cfg.scope.cgroups,
                                            cfg.workers.pressure_hold_percent,
                                            on_release=self._wake_workers)
            self.pressure.poll()
            self._spawn(self.pressure.run(), "pressure")
            self._start_workers()
            await self._start_demoter(cfg)
            await self._start_sweep(cfg)
        else:
            log.warning("no node has a promotion target (one memory tier): nothing to promote; "
                        "set topology.tiers if the kernel's tiers are wrong")
        self._spawn(self._refresh_loop(), "topology-refresh")
        if self.notifier.watchdog_s:
            self._spawn(self._watchdog_loop(self.notifier.watchdog_s), "watchdog")
        self.notifier.ready(self.status_line())

    def _pool(self, threads: int, name: str, *, moves: bool = False) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name,
                                  initializer=self._move_thread if moves else None)
        self._pools.append(pool)
        return pool

    def _move_thread(self) -> None:
        """A thread that calls move_pages runs at the niceness the daemon started with,
        not daemon.nice: the pages of its batch are out of the application's reach until
        the kernel has copied them, so the batch must not wait for a CPU behind the
        application itself."""
        tid = threading.get_native_id()
        self._move_tids.add(tid)
        try:
            os.setpriority(os.PRIO_PROCESS, tid, self._start_nice)
        except OSError as exc:
            log.warning("move thread: could not keep niceness %d (%s): it runs at %d",
                        self._start_nice, exc.strerror, os.getpriority(os.PRIO_PROCESS, tid))

    def _start_workers(self) -> None:
        assert self.topology is not None and self.queues is not None
        cfg = self.config.workers
        offload = self._pool(2, "kmigratedd-io")
        self.mover = self.mover or ShimMover(self._pool(64, "kmigratedd-copy", moves=True))
        idle = IdleCpus(self.fs)
        inboxes: dict[int, Inbox] = {}
        cold: dict[int, Inbox] = {}
        for node in self.topology.fast_nodes:
            inboxes[node] = Inbox(inbox_limit(cfg))
            # Demotion goes to the nearest slower node that promotes to this one.
            down = self.topology.demotion_target(node)
            if self.demote_queues is not None and down is not None:
                cold[node] = Inbox(inbox_limit(cfg))
            pipeline = MovePipeline(node, self.mover, WorkerStats(),
                                    self._pool(1, f"kmigratedd-move{node}", moves=True),
                                    page_size=self.topology.page_size, idle_cpus=idle)
            w = NodeWorker(node, topology=self.topology, inbox=inboxes[node], pipeline=pipeline,
                           cfg=self._workers_config(self.config), fs=self.fs,
                           demote_inbox=cold.get(node),
                           demote_to=down if node in cold else None,
                           demotion=self.config.demotion)
            w.paused = self.paused
            w.pressure = self.pressure
            self._configure_worker(w, self.config)
            self.workers[node] = w
            self._worker_tasks[node] = self._spawn(w.run(), f"worker-node{node}")
        self.router = Router(self.queues, inboxes, self.topology, self.mover, cfg,
                             executor=offload, demote_queues=self.demote_queues,
                             cold_inboxes=cold,
                             capacity=self.capacity_pages if self.demotion_method == "sampler"
                             else None)
        self.router.paused = self.paused
        self._router_task = self._spawn(self.router.run(), "router")

    # --- running -----------------------------------------------------------

    def status_line(self) -> str:
        if not self.workers:
            return "idle: nothing to promote"
        promoted = sum(w.snapshot().promoted_pages for w in self.workers.values())
        state = "paused" if self.paused else ("dry-run" if self.config.workers.dry_run
                                              else "promoting")
        name = self.sampler.name if self.sampler else "-"
        return f"{state}; sampler {name}; {promoted} pages promoted"

    def _update_rates(self, now: float) -> None:
        promoted = {n: w.snapshot().promoted_pages for n, w in self.workers.items()}
        if self._rate_snap is not None:
            then, before = self._rate_snap
            dt = max(now - then, 1e-6)
            page = self.topology.page_size if self.topology else 4096
            for n, c in promoted.items():
                pps = (c - before.get(n, 0)) / dt
                self._rates[n] = (pps, pps * page)
        self._rate_snap = (now, promoted)

    def status(self) -> dict[str, object]:
        """What ``kmigratedctl status`` shows (JSON-ready)."""
        topo = self.topology
        assert topo is not None
        qs = self.queues.stats() if self.queues is not None else None
        nodes = {}
        for nid, node in topo.nodes.items():
            tier = topo.tier_of(nid)
            info = read_node_meminfo(self.fs, nid)
            entry: dict[str, object] = {
                "tier": tier.rank if tier else None,
                "kernel_tier": tier.kernel_id if tier else None,
                "cpus": len(node.cpus),
                "mem_total_bytes": info.get("MemTotal", 0),
                "mem_free_bytes": info.get("MemFree", 0),
                "promotes_to": topo.targets.get(nid),
            }
            w = self.workers.get(nid)
            if w is not None:
                snap = w.snapshot()
                pps, bps = self._rates.get(nid, (0.0, 0.0))
                entry.update({
                    "worker": {
                        "promoted_pages": snap.promoted_pages,
                        "promoted_pages_per_s": round(pps, 1),
                        "promoted_mb_per_s": round(bps / 1e6, 3),
                        "inbox_pages": snap.inbox_pages,
                        "batches": snap.batches,
                        "batch_pages_now": snap.batch_pages_now,
                        "errors": {k: v for k, v in sorted(snap.outcomes.items())
                                   if k not in ("moved",)} | {
                            f"call:{k}": v for k, v in snap.whole_call_errors.items()},
                        "headroom_blocked": snap.headroom_blocked,
                        "headroom_floor_bytes": snap.headroom_floor_bytes,
                        "pressure_held_s": round(snap.pressure_held_seconds, 1),
                        "room_needed_bytes": snap.room_needed_bytes,
                        "demoted_pages": snap.demoted_pages,
                        "demote_inbox_pages": snap.demote_inbox_pages,
                        "demotion_refused": snap.demote_refused,
                        "demotion_regrets": snap.demote_regrets,
                        "promoted_then_cold": snap.promoted_then_cold,
                        "promoted_protect_s": round(snap.protect_s, 1),
                        "pingpongs": snap.pingpongs,
                        "pingpong_window_s": round(snap.pingpong_window_s, 1),
                        "dry_run_pages": snap.dry_run_pages,
                        "heartbeat_age_s": round(time.time() - snap.heartbeat, 3)
                        if snap.heartbeat else None,
                    }})
            nodes[str(nid)] = entry
        return {
            "version": __version__, "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "state": ("idle" if not self.workers else "paused" if self.paused else
                      "dry-run" if self.config.workers.dry_run else "promoting"),
            "paused": self.paused, "dry_run": self.config.workers.dry_run,
            "sampler": self.sampler.name if self.sampler else None,
            "sampler_stats": self.sampler.stats() if self.sampler else {},
            "sweep": ({"sampler": self.sweep.name, **self.sweep.stats()}
                      if self.sweep is not None else None),
            "demotion": (self.demoter.stats() if self.demoter is not None
                         else {"method": self.demotion_method}),
            "pressure": self.pressure.stats() if self.pressure is not None else None,
            "rate_interval_s": self.config.topology.refresh_interval_ms / 1000,
            "hot_threshold": self.router.threshold.value if self.router is not None else None,
            "queues": {"depth": qs.depth, "capacity_per_cpu": self.queues.capacity_per_cpu,
                       "dropped": qs.dropped, "coalesced": qs.coalesced,
                       "drained": qs.drained} if qs is not None and self.queues is not None
            else None,
            "nodes": nodes,
            "config_file": self.config_path,
        }

    async def _rpc_status(self) -> object:
        return self.status()

    async def _rpc_pause(self) -> object:
        self.pause()
        return {"paused": True}

    async def _rpc_resume(self) -> object:
        self.resume()
        return {"paused": False}

    async def _rpc_reload(self) -> object:
        ok = await self.reload()
        if not ok:
            raise KmigratedError(self._last_reload_error or "reload rejected")
        return {"reloaded": True, "config_file": self.config_path}

    async def _rpc_config(self) -> object:
        return self.config.to_dict()

    async def _refresh_loop(self) -> None:
        while True:
            assert self.topology is not None
            self._update_rates(time.monotonic())
            for nid in self.topology.nodes:
                self.free_bytes[nid] = read_node_meminfo(self.fs, nid, "MemFree").get("MemFree", 0)
            log.debug("free memory: %s", ", ".join(
                f"node {n} {b >> 20} MiB" for n, b in self.free_bytes.items()))
            self.notifier.status(self.status_line())
            await asyncio.sleep(self.config.topology.refresh_interval_ms / 1000)

    async def _watchdog_loop(self, period_s: float) -> None:
        while True:
            # Only pet the watchdog while the router and every worker are making rounds.
            now = time.time()
            beats = {f"worker for node {n}": w.snapshot().heartbeat
                     for n, w in self.workers.items()}
            if self.router is not None:
                beats["router"] = self.router.stats.heartbeat
            stale = [who for who, beat in beats.items() if beat and now - beat > period_s]
            if not stale:
                self.notifier.watchdog()
            else:
                log.error("%s stalled; not petting the watchdog", ", ".join(stale))
            await asyncio.sleep(period_s / 2)

    def pause(self) -> None:
        self.paused = True
        if self.router is not None:
            self.router.paused = True
        for w in self.workers.values():
            w.paused = True
        log.info("promotion paused")

    def resume(self) -> None:
        self.paused = False
        if self.router is not None:
            self.router.paused = False
            self.router.wake()
        for w in self.workers.values():
            w.paused = False
            w.wake()
        log.info("promotion resumed")

    async def reload(self) -> bool:
        """Re-read the config file; on any error keep the running config.

        Accepts what ``--check-config`` and start accept (``config.load_checked``), and
        always ends with READY=1 after its RELOADING=1, whatever happens in between.
        """
        self.notifier.reloading()
        try:
            return await self._reload()
        except Exception as exc:  # a bug: say so, keep running on the current config
            log.exception("reload failed, keeping the running config")
            self._last_reload_error = f"reload failed: {type(exc).__name__}: {exc}"[:200]
            return False
        finally:
            self.notifier.ready(self.status_line())

    async def _reload(self) -> bool:
        try:
            # Off the event loop: up to 1 MiB of YAML, a DNS lookup, the sysfs topology.
            cfg, topo = await asyncio.to_thread(config_mod.load_checked, self.config_path,
                                                self.fs)
            cfg = with_overrides(cfg, dry_run=self.dry_run_override)
            fixed = config_mod.changed_keys(self.config, cfg)
            if cfg.demotion.method != self.config.demotion.method:
                fixed.append("demotion.method")
            if fixed:
                raise KmigratedError(f"{', '.join(fixed)}: changed; the running daemon cannot "
                                     "apply that: restart it")
            if topo.targets != (self.topology.targets if self.topology else {}):
                raise KmigratedError("topology.tiers/promotion_targets change the workers; "
                                     "restart the daemon to apply that")
            new_sampler = None
            if (cfg.sampler, cfg.scope) != (self.config.sampler, self.config.scope) and \
                    self.workers:
                new_sampler = samplers.create(cfg.sampler.name, self._sampler_context(cfg))
        except (KmigratedError, OSError) as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            self._last_reload_error = str(exc)
            return False
        if new_sampler is not None:
            old = self.sampler
            if old is not None:
                await old.stop()
            try:
                await new_sampler.start()
                self.sampler = new_sampler
                log.info("sampler %s started", new_sampler.name)
            except (KmigratedError, OSError) as exc:
                log.error("new sampler failed (%s); restarting the previous one", exc)
                self._last_reload_error = f"new sampler failed: {exc}"
                if old is not None:
                    await old.start()
                return False
        self.config = cfg
        for w in self.workers.values():
            self._configure_worker(w, cfg)
            w.configure_demotion(cfg.demotion)
            w.wake()
        if isinstance(self.demoter, PaddrDemoter):
            self.demoter.configure(cfg.demotion)
        if self.pressure is not None:
            self.pressure.configure(cfg.scope.cgroups, cfg.workers.pressure_hold_percent)
        self._apply_nice(cfg.daemon.nice)
        if self.router is not None:
            self.router.configure(cfg.workers)
        logsetup.set_level(cfg.log_level)
        log.info("config reloaded from %s", self.config_path or config_mod.DEFAULT_SOURCE)
        return True

    def stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        self.notifier.stopping()
        timeout = self.config.daemon.shutdown_timeout_ms / 1000
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.sampler is not None:
            await _stop_within(self.sampler.stop(), timeout, "sampler")
        if self.sweep is not None:
            await _stop_within(self.sweep.stop(), timeout, "start-up sweep")
        if self.demoter is not None:
            # Off before the workers stop: nothing demotes once promotion has ended.
            if self._demoter_task is not None:
                self._demoter_task.cancel()
            await _stop_within(self.demoter.stop(), timeout, "demotion")
        # The router stops taking candidates; workers finish the batch in flight, then leave.
        if self.router is not None:
            self.router.stop()
        for w in self.workers.values():
            w.stop()
        pending = [t for t in self._worker_tasks.values() if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            for t in late:
                t.cancel()
            if late:
                log.warning("%d worker(s) did not finish within %.1fs", len(late), timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(0.1, deadline - loop.time()))
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.control is not None:
            await self.control.stop()
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)
        promoted = sum(w.snapshot().promoted_pages for w in self.workers.values())
        log.info("stopped (%d pages promoted)", promoted)
        self.notifier.close()


async def _stop_within(stop: Awaitable[None], timeout: float, what: str) -> None:
    """Await ``stop`` for at most ``timeout`` seconds; a timeout or an error is logged and
    the shutdown goes on."""
    try:
        await asyncio.wait_for(stop, timeout)
    except TimeoutError:
        log.warning("%s did not stop within %.1fs", what, timeout)
    except Exception:  # keep shutting down
        log.exception("stopping the %s failed", what)


async def _main(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.stop)
    loop.add_signal_handler(signal.SIGINT, daemon.stop)
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(daemon.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await daemon.startup()
        log.info("running (pid %d)", os.getpid())
        await daemon.serve()
    finally:
        await daemon.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0


def run(cfg: Config, config_path: str | None, fs: KernelFs, *,
        dry_run: bool | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT, on uvloop."""
    import uvloop

    async def main() -> int:
        return await _main(Daemon(config=with_overrides(cfg, dry_run=dry_run),
                                  config_path=config_path, fs=fs, dry_run_override=dry_run))

    return uvloop.run(main())


def with_overrides(cfg: Config, *, dry_run: bool | None = None) -> Config:
    """Command-line overrides of config values."""
    if dry_run is not None:
        cfg = dataclasses.replace(cfg, workers=dataclasses.replace(cfg.workers, dry_run=dry_run))
    return cfg
