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
``daemon.shutdown_timeout_ms``.  Signals are wired in :func:`run` only: SIGTERM/SIGINT/
SIGQUIT stop, SIGHUP reloads (a bad file is logged and the running config stays),
SIGUSR1/SIGUSR2 log a status line, and the other signals that would end the process at
once (SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGXCPU, SIGXFSZ...) are logged and
ignored.  SIGKILL cannot be caught: the next start restores what the killed one changed
(sysctls, kdamonds: :func:`kmigratedd.sysctl.recover`, :func:`kmigratedd.damon.kdamond.recover`).

On a machine with no slower memory tier there is nothing to promote: the daemon says so,
runs no sampler and no worker, and keeps serving its metrics.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import errno
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import demotion, logsetup, processes, status, sysctl
from . import config as config_mod
from .capacity import node_free_bytes
from .config import Config
from .control import ControlServer, RequestRefused
from .damon import kdamond
from .engine import Engine
from .instance import InstanceLock
from .supervise import Failures, supervised
from .threads import Threads, exit_within
from .errors import KmigratedError, StartupError, startup_error
from .kernelfs import KernelFs
from .metrics import PROCESS_SERIES, Metrics, MetricsServer, MetricsSources
from .pipeline import Mover
from .procfs import online_cpus
from .queues import CandidateQueues
from .samplers.damon import sampler_owner_path
from .scope import Scope
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
    threads: Threads = field(default_factory=Threads)
    _last_reload_error: str = ""
    _lock: InstanceLock | None = None
    # Failures of the periodic tasks (kmigratedd/supervise.py).
    failures: Failures = field(default_factory=Failures)

    def pool(self, threads: int, name: str, *, moves: bool = False) -> ThreadPoolExecutor:
        return self.threads.pool(threads, name, moves=moves)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- lifecycle -----------------------------------------------------------------

    async def startup(self) -> None:
        """Everything that can refuse the start (another daemon, the metrics port, the
        queues' memory, the open-file limit) is done before the first side effect: the
        recovery of what a killed run left, then the sampler and the workers."""
        try:
            await self._claim()
        except MemoryError:
            raise StartupError(
                f"cannot allocate the candidate queues (queues.capacity_per_cpu "
                f"{self.config.queues.capacity_per_cpu} on each CPU): lower it, or raise the "
                "memory limit") from None
        except OSError as exc:
            raise startup_error(exc) from None
        cfg, topo = self.config, self.topology
        assert topo is not None and self.queues is not None
        # Whatever the sampler: a killed hint-faults run may have left sysctls changed, a
        # killed kswapd demotion demotion_enabled, a killed paddr demoter kdamonds on.
        state = cfg.sampler.hint_faults.state_file
        sysctl.recover(self.fs, state)
        sysctl.recover(self.fs, demotion.state_path(state))
        for owner in (demotion.owner_path(state), sampler_owner_path(state)):
            kdamond.recover(self.fs, owner)
        if topo.targets:
            self.engine = Engine(cfg, self.fs, topo, self.queues, spawn=self._spawn,
                                 pool=self.pool, mover=self.mover)
            self.engine.paused = self.paused
            try:
                await self.engine.start()
            except OSError as exc:
                raise startup_error(exc) from None
        else:
            log.warning("idle: %s", status.IDLE_REASON)
        self._spawn(supervised(self._refresh_loop, "topology refresh", self.failures),
                    "topology-refresh")
        if self.notifier.watchdog_s:
            self._spawn(self._watchdog_loop(self.notifier.watchdog_s), "watchdog")
        self.notifier.ready(status.line(self))

    async def _claim(self) -> None:
        """The instance lock, the topology, the queues, the metrics port and the control
        socket: no side effect on the machine yet."""
        cfg = self.config
        self._lock = InstanceLock(cfg.control.socket_path)
        self._lock.acquire()
        self.threads.start_nice = os.getpriority(os.PRIO_PROCESS, 0)
        self.threads.apply_nice(self.fs, cfg.daemon.nice)
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
            try:
                await self.metrics_server.start()
            except OSError as exc:
                self.metrics_server = None
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(
                        f"metrics.port {cfg.metrics.port} on {cfg.metrics.listen_address} is "
                        "in use (another kmigratedd, or another exporter): choose another "
                        "metrics.port") from None
                raise
        self.control = ControlServer(cfg.control.socket_path, {
            "status": self._rpc_status, "pause": self._rpc_pause, "resume": self._rpc_resume,
            "reload": self._rpc_reload, "config": self._rpc_config,
            "processes": self._rpc_processes}, cfg.control.group,
            source=self.config_path or config_mod.DEFAULT_SOURCE, fs=self.fs)
        await self.control.start()

    def _metrics_sources(self) -> MetricsSources:
        def part(name: str) -> Any:
            return getattr(self.engine, name) if self.engine is not None else None

        return MetricsSources(
            fs=self.fs, topology=lambda: self.topology, workers=lambda: part("workers") or {},
            router=lambda: part("router"), queues=lambda: self.queues,
            sampler=lambda: part("sampler"), paused=lambda: self.paused,
            dry_run=lambda: self.config.workers.dry_run, pressure=lambda: part("pressure"),
            task_failures=lambda: self.failures.total,
            connections=lambda: self.metrics_server.stats if self.metrics_server else {},
            processes=lambda: (self.engine.pid_moves.top(PROCESS_SERIES) if self.engine
                                 else []))

    def stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        self.notifier.stopping()
        # daemon.nice yields the CPUs to the applications while the daemon runs; its stop
        # must not wait behind them (systemd kills a stop that outlasts TimeoutStopSec=).
        if self.threads.start_nice != self.config.daemon.nice:
            self.threads.apply_nice(self.fs, self.threads.start_nice, quiet=True)
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
        self.threads.shutdown()
        if self.control is not None:  # it had started (a refused start says why, once)
            log.info("stopped (%d pages promoted)",
                     self.engine.promoted_pages() if self.engine else 0)
        self.notifier.close()
        if self._lock is not None:
            self._lock.release()

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
            stale += [f"{t} (failing)" for t in self.failures.failing()]
            stale += [f"{t.get_name()} (ended)" for t in self._tasks
                      if t.done() and not t.cancelled() and t.get_name() != "sweep"]
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
        if not ok:  # reload() logged why, once
            raise RequestRefused(self._last_reload_error or "reload rejected")
        return {"reloaded": True, "config_file": self.config_path}

    async def _rpc_config(self) -> object:
        return self.config.to_dict()

    async def _rpc_processes(self) -> object:
        """The per-process view; numa_maps is read off the loop (the kernel walks page
        tables to write it)."""
        e, topo = self.engine, self.topology
        if e is None or topo is None:
            return {"page_size": 4096, "processes": [], "cgroups": [],
                    "idle_reason": status.idle_reason(self)}
        scope = Scope(self.config.scope, self.fs)
        moves = copy.deepcopy(e.pid_moves)
        waiting = processes.waiting_by_pid(w.inbox.keys for w in e.workers.values())
        return await asyncio.get_running_loop().run_in_executor(
            None, processes.report, self.fs, scope.pids(), moves, waiting,
            topo.slow_nodes, topo.page_size)

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
        self.threads.apply_nice(self.fs, cfg.daemon.nice)
        logsetup.set_level(cfg.log_level)
        log.info("config reloaded from %s", self.config_path or config_mod.DEFAULT_SOURCE)
        return True


STATUS_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
IGNORED_SIGNALS = tuple(getattr(signal, name) for name in (
    "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR", "SIGSTKFLT", "SIGXCPU", "SIGXFSZ")
    if hasattr(signal, name))


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
    # Signals whose default action would end the process at once (no shutdown: the
    # control socket left behind, the sysctls changed): SIGQUIT stops it cleanly,
    # SIGUSR1/SIGUSR2 log a status line, the others are logged and ignored.
    loop.add_signal_handler(signal.SIGQUIT, daemon.stop)
    for sig in STATUS_SIGNALS:
        loop.add_signal_handler(sig, lambda: log.info("status: %s", status.line(daemon)))
    for sig in IGNORED_SIGNALS:
        loop.add_signal_handler(sig, log.warning, "%s ignored", sig.name)
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
               *STATUS_SIGNALS, *IGNORED_SIGNALS)
    try:
        await daemon.startup()
        log.info("running (pid %d)", os.getpid())
        await daemon.serve()
    finally:
        await daemon.shutdown()
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 0


def run(cfg: Config, config_path: str | None, fs: KernelFs, *,
        dry_run: bool | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT, on uvloop."""
    import uvloop

    async def main() -> int:
        daemon = Daemon(config=with_overrides(cfg, dry_run=dry_run), config_path=config_path,
                        fs=fs, dry_run_override=dry_run)
        try:
            return await _main(daemon)
        finally:
            # The process ends once this returns: bound the wait for threads still busy.
            from .cli import failure

            error = sys.exc_info()[1]
            exit_within(daemon.config.daemon.shutdown_timeout_ms / 1000 + 1,
                        *((0, None) if error is None else failure(error)))

    return uvloop.run(main())


def with_overrides(cfg: Config, *, dry_run: bool | None = None) -> Config:
    """Command-line overrides of config values."""
    if dry_run is not None:
        cfg = dataclasses.replace(cfg, workers=dataclasses.replace(cfg.workers, dry_run=dry_run))
    return cfg
