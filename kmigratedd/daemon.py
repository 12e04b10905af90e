"""The composition root: builds every collaborator once and runs the daemon.

Lifecycle (as uvicorn): :meth:`Daemon.startup` → :meth:`Daemon.serve` →
:meth:`Daemon.shutdown`, the last bounded by ``daemon.shutdown_timeout_ms``.
Signals are wired in :func:`run` only: SIGTERM/SIGINT stop, SIGHUP reloads (a
bad file is logged and the running config stays).

This version discovers the topology and keeps per-node free memory fresh; the
samplers, candidate queues and promotion workers plug in here (see DESIGN.md).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

from . import config as config_mod
from . import logsetup
from .config import Config
from .errors import KmigratedError
from .kernelfs import KernelFs
from .topology import Topology, discover, read_node_meminfo

log = logging.getLogger("kmigratedd")


@dataclass
class Daemon:
    config: Config
    config_path: str | None
    fs: KernelFs
    topology: Topology | None = None
    free_bytes: dict[int, int] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def _discover(self, cfg: Config) -> Topology:
        return discover(self.fs, tiers=cfg.topology.tiers,
                        promotion_targets=cfg.topology.promotion_targets)

    async def startup(self) -> None:
        self.topology = self._discover(self.config)
        for line in self.topology.describe().splitlines():
            log.info("%s", line)
        if not self.topology.targets:
            log.warning("no node has a promotion target (one memory tier): nothing to promote; "
                        "set topology.tiers if the kernel's tiers are wrong")
        task = asyncio.create_task(self._refresh_loop(), name="topology-refresh")
        self._tasks.add(task)

    async def _refresh_loop(self) -> None:
        while True:
            assert self.topology is not None
            for nid in self.topology.nodes:
                self.free_bytes[nid] = read_node_meminfo(self.fs, nid).get("MemFree", 0)
            log.debug("free memory: %s", ", ".join(
                f"node {n} {b >> 20} MiB" for n, b in self.free_bytes.items()))
            await asyncio.sleep(self.config.topology.refresh_interval_ms / 1000)

    def reload(self) -> bool:
        """Re-read the config file; on any error keep the running config."""
        try:
            cfg = config_mod.load(self.config_path)
            topo = self._discover(cfg)
        except KmigratedError as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            return False
        self.config, self.topology = cfg, topo
        logsetup.set_level(cfg.log_level)
        log.info("config reloaded from %s", self.config_path or config_mod.DEFAULT_SOURCE)
        return True

    def stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        timeout = self.config.daemon.shutdown_timeout_ms / 1000
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            if pending:
                log.warning("%d task(s) did not stop within %.1fs", len(pending), timeout)
        self._tasks.clear()
        log.info("stopped")


async def _main(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.stop)
    loop.add_signal_handler(signal.SIGINT, daemon.stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.startup()
        log.info("running (pid %d)", __import__("os").getpid())
        await daemon.serve()
    finally:
        await daemon.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def run(cfg: Config, config_path: str | None, fs: KernelFs) -> None:
    """Run the daemon until SIGTERM/SIGINT, on uvloop."""
    import uvloop

    async def main() -> None:
        await _main(Daemon(config=cfg, config_path=config_path, fs=fs))

    uvloop.run(main())
