"""What every sampler is: a producer of candidates, never a migrator.

A sampler is built by its factory from a :class:`SamplerContext` (nothing else:
no globals), probed, started, and stopped. It pushes candidates into the
per-CPU queues: perf samplers into the queue of the CPU whose ring produced the
sample; scanners (idle, DAMON) into the queue of the CPU the task last ran on.
Failures at run time (a pid that vanished, a mapping it may not read) are
counted in ``stats()`` and never raised out of the sampler.

:class:`SamplerBase` owns what they share: start/stop, the round loop, the
one-thread executor a round's kernel work runs on, ``push`` and the counters.
A sampler brings only its signal: :meth:`~SamplerBase.open` and
:meth:`~SamplerBase.close` for its kernel resources, :meth:`~SamplerBase.collect`
(one round, in the executor) and :meth:`~SamplerBase.deliver` (its result, on the
event loop).  The queues are not thread-safe (no lock in C, and cffi releases the
GIL), so only the event-loop thread pushes: ``collect`` computes, ``deliver``
pushes.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
import logging
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ..config import Config
from ..kernelfs import KernelFs
from ..queues import CandidateQueues
from ..scope import Scope
from ..topology import Topology

log = logging.getLogger("kmigratedd.sampler")


@dataclass
class SamplerContext:
    config: Config
    fs: KernelFs
    topology: Topology
    queues: CandidateQueues
    scope: Scope
    # Demotion candidates (cold pages a sampler saw on the fast tier) go to their own
    # queues; None when demotion is off or no sampler offers them.
    demote_queues: CandidateQueues | None = None
    # Bytes of fast-tier room promotion needs now, summed over the fast nodes: a sampler
    # offers cold pages only while this is > 0.
    room_needed: Callable[[], int] = lambda: 0


class Sampler(Protocol):
    name: str

    async def start(self) -> None:
        """Acquire kernel resources and begin producing candidates."""

    async def stop(self) -> None:
        """Release everything start() acquired (idempotent; restores any sysctl)."""

    def stats(self) -> dict[str, int]:
        """Counters since start: candidates produced, samples lost, errors by kind..."""


@dataclass(frozen=True)
class SamplerFactory:
    name: str
    # Returns None when the sampler can run here, else what is missing.
    probe: Callable[[SamplerContext], str | None]
    create: Callable[[SamplerContext], Sampler]
    description: str


@dataclass(slots=True)
class Offer:
    """Candidates of one process for one round, as flat arrays."""

    pid: int
    cpu: int  # the queue they go to
    addrs: array[int]  # 'Q', page addresses
    nodes: array[int]  # 'i', the node each page is on, -1 when not known
    weights: array[int]  # 'I'


RoundT = TypeVar("RoundT")


class SamplerBase(ABC, Generic[RoundT]):
    """The common lifecycle: ``open`` → a round every ``sampler.interval_ms``
    (``collect`` in the executor, ``deliver`` on the loop) → ``close``.

    ``counters`` holds every counter a sampler keeps, under the name ``stats()``
    exports; ``errors`` (rounds that failed, and what a sampler counts as one) is
    always there.
    """

    name = "sampler"

    def __init__(self, ctx: SamplerContext, counters: Iterable[str] = ()) -> None:
        self.ctx = ctx
        self.interval_s = ctx.config.sampler.interval_ms / 1000
        # How long stop() waits for a round in flight before interrupt().
        self.stop_timeout_s = 10 + 2 * self.interval_s
        self.counters: dict[str, int] = dict.fromkeys(("errors", *counters), 0)
        self._stopping = threading.Event()
        self._stop_requested: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- what a sampler supplies ----------------------------------------------

    def open(self) -> None:
        """Acquire the kernel resources (on the event loop, in ``start()``); raise
        :class:`~kmigratedd.errors.SamplerUnavailableError` or ``OSError`` after
        undoing whatever was done."""

    @abstractmethod
    def collect(self) -> RoundT:
        """One round's kernel work, in the executor thread; never touches the queues."""

    @abstractmethod
    def deliver(self, result: RoundT) -> None:
        """Hand a round's result to the queues, on the event-loop thread."""

    def interrupt(self) -> None:
        """Release a round blocked in the kernel past the stop timeout (in a thread)."""

    def close(self) -> None:
        """Release what ``open()`` acquired (idempotent)."""

    def extra_stats(self) -> dict[str, int]:
        """Values ``stats()`` adds to ``counters``: gauges, counts kept elsewhere."""
        return {}

    # --- the common part ----------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Set by ``stop()``: a round in flight stops early and acquires nothing more."""
        return self._stopping.is_set()

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping.clear()
        self.open()
        self._stop_requested = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"kmigratedd-{self.name}")
        self._task = asyncio.create_task(self._run(), name=f"sampler-{self.name}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = self._stop_requested
        assert stop is not None
        while not stop.is_set():
            began = loop.time()
            try:
                result = await loop.run_in_executor(self._executor, self.collect)
                self.deliver(result)
            except Exception:  # a sampler never dies of one bad round
                self.counters["errors"] += 1
                log.exception("%s sampler round failed", self.name)
            try:
                await asyncio.wait_for(stop.wait(),
                                       max(0.0, self.interval_s - (loop.time() - began)))
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Stop the loop, let the round in flight finish (``interrupt()`` it after
        ``stop_timeout_s``), then ``close()``.  Idempotent."""
        self._stopping.set()
        task, self._task = self._task, None
        try:
            if task is not None:
                assert self._stop_requested is not None
                self._stop_requested.set()
                try:
                    await asyncio.wait_for(asyncio.shield(task), self.stop_timeout_s)
                except TimeoutError:
                    log.warning("%s sampler round still running after %.0f s; interrupting "
                                "it", self.name, self.stop_timeout_s)
                    await asyncio.to_thread(self.interrupt)
                    try:
                        await asyncio.wait_for(task, 10)
                    except (TimeoutError, asyncio.CancelledError):
                        log.warning("%s sampler round did not end; releasing it anyway",
                                    self.name)
        finally:
            # Also when the caller's own time-out cancels the wait above (the shutdown's,
            # or the end of the start-up sweep): what start() acquired (a kdamond, a
            # sysctl) is released whatever happens to the round in flight.
            if self._executor is not None:
                executor, self._executor = self._executor, None
                executor.shutdown(wait=False)
            self.close()

    def push(self, offers: Iterable[Offer]) -> int:
        """Offer candidates to the queues (event-loop thread only); returns how many."""
        now = time.monotonic_ns()
        offered = 0
        for o in offers:
            n = len(o.addrs)
            self.ctx.queues.push(o.cpu, array("i", [o.pid]) * n, o.addrs, o.nodes,
                                 array("Q", [now]) * n, o.weights)
            offered += n
        self.counters["candidates_offered"] += offered
        return offered

    def push_cold(self, offers: Iterable[Offer]) -> int:
        """Offer demotion candidates (cold pages on the fast tier) to the demotion queues
        (event-loop thread only); returns how many."""
        queues = self.ctx.demote_queues
        if queues is None:
            return 0
        now = time.monotonic_ns()
        offered = 0
        for o in offers:
            n = len(o.addrs)
            queues.push(o.cpu, array("i", [o.pid]) * n, o.addrs, o.nodes,
                        array("Q", [now]) * n, o.weights)
            offered += n
        self.counters["demotion_candidates_offered"] = (
            self.counters.get("demotion_candidates_offered", 0) + offered)
        return offered

    def stats(self) -> dict[str, int]:
        return {**self.counters, **self.extra_stats()}
