"""The composition root and the lifecycle: builds every collaborator once and runs them.

    config → topology → per-CPU queues → engine (sampler, router, workers, demoter:
             kmigratedd/engine.py, on a machine with a slower memory tier)
           metrics registry + /metrics endpoint, control socket, sd_notify

Thread pools are created here and nowhere else (:meth:`Daemon.pool`): one for work off
the event loop (the router's location queries and the samplers' rounds), one move thread
per worker, and the copy threads that split a batch for parallel copy.  Every thread
runs at ``daemon.nice`` but those that call move_pages, which keep the niceness the
daemon started with.

Lifecycle (as uvicorn): :meth:`Daemon.startup` → :meth:`Daemon.serve` →
:meth:`Daemon.shutdown`.  Shutdown stops the sampler first (restoring any sysctl it
changed), then lets the workers finish the batch in flight, bounded by
``daemon.shutdown_timeout_ms``.  Signals are wired in :func:`run` only: SIGTERM/SIGINT
stop, SIGHUP reloads (a bad file is logged and the running config stays).

On a machine with no slower memory tier there is nothing to promote: the daemon says so,
runs no sampler and no worker, and keeps serving its metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import demotion, logsetup, status, sysctl
from . import config as config_mod
from .capacity import node_free_bytes
from .config import Config
from .control import ControlServer
from .damon import kdamond
from .engine import Engine
from .errors import KmigratedError
from .kernelfs import KernelFs
from .metrics import Metrics, MetricsServer, MetricsSources
from .pipeline import Mover
from .procfs import online_cpus
from .queues import CandidateQueues
from .sdnotify import Notifier
from .topology import Topology, discover

log = logging.getLogger("kmigratedd")


@dataclass
class Daemon:
    config: Config
    config_path: str | None
    fs: KernelFs
    mover: Mover | None = None
    notifier: Notifier = field(default_factory=Notifier)
    topology: Topology | None = None
    queues: CandidateQueues | None = None
    engine: Engine | None = None      # the stages, on a machine with a slower tier
    # --dry-run on the command line: it holds across reloads too.
    dry_run_override: bool | None = None
    metrics: Metrics | None = None
    metrics_server: MetricsServer | None = None
    control: ControlServer | None = None
    started_at: float = field(default_factory=time.time)
    rates: dict[int, tuple[float, float]] = field(default_factory=dict)  # node -> pages/s, B/s
    paused: bool = False
    _rate_snap: tuple[float, dict[int, int]] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _pools: list[ThreadPoolExecutor] = field(default_factory=list)
    _move_tids: set[int] = field(default_factory=set)
    _start_nice: int = 0
    _last_reload_error: str = ""

    # --- threads ---------------------------------------------------------------------

    def pool(self, threads: int, name: str, *, moves: bool = False) -> ThreadPoolExecutor:
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

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- lifecycle -----------------------------------------------------------------

    async def startup(self) -> None:
        cfg = self.config
        self._start_nice = os.getpriority(os.PRIO_PROCESS, 0)
        self._apply_nice(cfg.daemon.nice)
        # Whatever the sampler: a killed hint-faults run may have left sysctls changed, a
        # killed kswapd demotion demotion_enabled, a killed paddr demoter kdamonds on.
        state = cfg.sampler.hint_faults.state_file
        sysctl.recover(self.fs, state)
        sysctl.recover(self.fs, demotion.state_path(state))
        kdamond.recover(self.fs, demotion.owner_path(state))
        self.topology = topo = discover(self.fs, tiers=cfg.topology.tiers,
                                        promotion_targets=cfg.topology.promotion_targets)
        for line in topo.describe().splitlines():
            log.info("%s", line)
        self.queues = CandidateQueues(online_cpus(self.fs), cfg.queues.capacity_per_cpu,
                                      topo.page_size)
        self.metrics = Metrics(self._metrics_sources())
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
            self.engine = Engine(cfg, self.fs, topo, self.queues, spawn=self._spawn,
                                 pool=self.pool, mover=self.mover)
            self.engine.paused = self.paused
            await self.engine.start()
        else:
            log.warning("no node has a promotion target (one memory tier): nothing to promote; "
                        "set topology.tiers if the kernel's tiers are wrong")
        self._spawn(self._refresh_loop(), "topology-refresh")
        if self.notifier.watchdog_s:
            self._spawn(self._watchdog_loop(self.notifier.watchdog_s), "watchdog")
        self.notifier.ready(status.line(self))

    def _metrics_sources(self) -> MetricsSources:
        def part(name: str) -> Any:
            return getattr(self.engine, name) if self.engine is not None else None

        return MetricsSources(
            fs=self.fs, topology=lambda: self.topology, workers=lambda: part("workers") or {},
            router=lambda: part("router"), queues=lambda: self.queues,
            sampler=lambda: part("sampler"), paused=lambda: self.paused,
            dry_run=lambda: self.config.workers.dry_run, pressure=lambda: part("pressure"))

    def stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        self.notifier.stopping()
        timeout = self.config.daemon.shutdown_timeout_ms / 1000
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.engine is not None:
            await self.engine.stop(timeout)
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
        log.info("stopped (%d pages promoted)",
                 self.engine.promoted_pages() if self.engine else 0)
        self.notifier.close()

    # --- running ---------------------------------------------------------------------

    def _update_rates(self, now: float) -> None:
        workers = self.engine.workers if self.engine else {}
        promoted = {n: w.moves.promoted_pages for n, w in workers.items()}
        if self._rate_snap is not None:
            then, before = self._rate_snap
            dt = max(now - then, 1e-6)
            page = self.topology.page_size if self.topology else 4096
            for n, c in promoted.items():
                pps = (c - before.get(n, 0)) / dt
                self.rates[n] = (pps, pps * page)
        self._rate_snap = (now, promoted)

    async def _refresh_loop(self) -> None:
        while True:
            self._update_rates(time.monotonic())
            if log.isEnabledFor(logging.DEBUG) and self.topology is not None:
                log.debug("free memory: %s", ", ".join(
                    f"node {n} {node_free_bytes(self.fs, n) >> 20} MiB"
                    for n in self.topology.nodes))
            self.notifier.status(status.line(self))
            await asyncio.sleep(self.config.topology.refresh_interval_ms / 1000)

    async def _watchdog_loop(self, period_s: float) -> None:
        while True:
            # Only pet the watchdog while the router and every worker are making rounds.
            now = time.time()
            beats = self.engine.heartbeats() if self.engine else {}
            stale = [who for who, beat in beats.items() if beat and now - beat > period_s]
            if not stale:
                self.notifier.watchdog()
            else:
                log.error("%s stalled; not petting the watchdog", ", ".join(stale))
            await asyncio.sleep(period_s / 2)

    def status(self) -> dict[str, object]:
        """What ``kmigratedctl status`` shows (JSON-ready)."""
        return status.build(self)

    def pause(self) -> None:
        self.paused = True
        if self.engine is not None:
            self.engine.pause(True)
        log.info("promotion paused")

    def resume(self) -> None:
        self.paused = False
        if self.engine is not None:
            self.engine.pause(False)
        log.info("promotion resumed")

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
            self.notifier.ready(status.line(self))

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
        except (KmigratedError, OSError) as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            self._last_reload_error = str(exc)
            return False
        e = self.engine
        if e is not None and e.workers and \
                (cfg.sampler, cfg.scope) != (self.config.sampler, self.config.scope):
            try:
                await e.replace_sampler(cfg)
            except (KmigratedError, OSError) as exc:
                log.error("new sampler failed (%s); restarting the previous one", exc)
                self._last_reload_error = f"new sampler failed: {exc}"
                return False
        self.config = cfg
        if e is not None:
            e.apply(cfg)
        self._apply_nice(cfg.daemon.nice)
        logsetup.set_level(cfg.log_level)
        log.info("config reloaded from %s", self.config_path or config_mod.DEFAULT_SOURCE)
        return True


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
