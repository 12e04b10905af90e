"""Prometheus metrics: the daemon's own registry, collected on the event loop.

Every stage is counted where it happens (sampler, queues, workers); this module
only *reads* those counters when Prometheus scrapes, so there is one source of
truth and no double bookkeeping. The endpoint is a small asyncio HTTP server on
the daemon's loop (127.0.0.1 by default): collection never races the workers.

Besides kmigratedd's own figures it re-exports what node_exporter hides by
default: the promotion, demotion, migration and NUMA-hinting counters of
/proc/vmstat and of each node's vmstat, and per-node free/total memory labelled
with the node's tier.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from . import __version__, families
from .kernelfs import KernelFs
from .procfs import node_vmstat, vmstat
from .router import Router
from .topology import Topology, read_node_meminfo
from .worker import NodeWorker

log = logging.getLogger("kmigratedd.metrics")

# vmstat counters worth having next to ours (prefix match).
VMSTAT_PREFIXES = ("pgpromote_", "pgdemote_", "pgmigrate_", "numa_", "thp_migration_",
                   "pgsteal_demote", "nr_promoted", "nr_demoted")
# Processes with a series of their own in kmigratedd_process_moved_pages_total.
PROCESS_SERIES = 10


@dataclass
class MetricsSources:
    """What the collector reads; filled in by the daemon's composition root."""

    fs: KernelFs
    topology: Callable[[], Topology | None]
    workers: Callable[[], Mapping[int, NodeWorker]] = dict
    router: Callable[[], Router | None] = lambda: None
    queues: Callable[[], Any] = lambda: None
    sampler: Callable[[], Any] = lambda: None
    paused: Callable[[], bool] = lambda: False
    dry_run: Callable[[], bool] = lambda: False
    pressure: Callable[[], Any] = lambda: None
    task_failures: Callable[[], Mapping[str, int]] = dict
    connections: Callable[[], Mapping[str, int]] = dict  # the metrics server's, by outcome
    # (pid, promoted, demoted) of the processes most pages moved for
    processes: Callable[[], list[tuple[int, int, int]]] = list


class KmigratedCollector(Collector):
    def __init__(self, src: MetricsSources) -> None:
        self.src = src

    def collect(self) -> Iterator[Any]:
        src = self.src
        info = InfoMetricFamily("kmigratedd_build", "kmigratedd build information")
        info.add_metric([], {"version": __version__})
        yield info
        yield GaugeMetricFamily("kmigratedd_paused", "1 while promotion is paused",
                                value=int(src.paused()))
        yield GaugeMetricFamily("kmigratedd_dry_run", "1 in dry-run mode (nothing is moved)",
                                value=int(src.dry_run()))
        failures = CounterMetricFamily("kmigratedd_task_failures",
                                       "Exceptions of the daemon's periodic tasks (each logged "
                                       "and retried with back-off)", labels=["task"])
        for task, n in sorted(src.task_failures().items()):
            failures.add_metric([task], n)
        yield failures
        conns = CounterMetricFamily("kmigratedd_metrics_connections",
                                    "Connections to /metrics by outcome: served, shed (idle, "
                                    "closed to make room), rejected (503), timed_out",
                                    labels=["outcome"])
        for outcome, n in sorted(src.connections().items()):
            conns.add_metric([outcome], n)
        yield conns
        yield from self._processes()
        yield from self._workers()
        yield from self._pressure()
        yield from self._queues()
        yield from self._sampler()
        yield from self._kernel()

    def _processes(self) -> Iterator[Any]:
        """Pages moved for the PROCESS_SERIES processes most moved for (bounded
        cardinality: a process that drops out of the top, or exits, leaves the set)."""
        fam = CounterMetricFamily("kmigratedd_process_moved_pages",
                                  f"Pages moved for each of the {PROCESS_SERIES} processes most "
                                  "pages were moved for, by direction (promoted, demoted)",
                                  labels=["pid", "comm", "direction"])
        for pid, promoted, demoted in self.src.processes()[:PROCESS_SERIES]:
            comm = self.src.fs.read_optional(f"/proc/{pid}/comm")
            if comm is None:
                continue  # exited
            fam.add_metric([str(pid), comm.strip(), "promoted"], promoted)
            fam.add_metric([str(pid), comm.strip(), "demoted"], demoted)
        yield fam

    def _workers(self) -> Iterator[Any]:
        """The workers' families (kmigratedd/families.py), the router's drops and query
        errors added with an empty node (they happen before a page has a target), and the
        router's threshold."""
        workers = self.src.workers()
        topo = self.src.topology()
        fams = families.collect({n: w.snapshot() for n, w in workers.items()},
                                topo.page_size if topo else 4096)
        router = self.src.router()
        if router is not None:
            r = router.stats
            yield GaugeMetricFamily("kmigratedd_hot_threshold",
                                    "Folded samples a candidate needs to be promoted: "
                                    "workers.min_samples, raised while the fast tier has "
                                    "less room than the candidates want",
                                    value=router.threshold.value)
            yield CounterMetricFamily("kmigratedd_hot_threshold_raised_seconds",
                                      "Time the adaptive hotness threshold was above "
                                      "workers.min_samples",
                                      value=router.threshold.raised_seconds)
            dropped = fams["kmigratedd_worker_dropped_pages"]
            for reason, c in (("below_threshold", r.below_threshold),
                              ("below_adaptive_threshold", r.below_adaptive),
                              ("on_fast_tier", r.on_fast_tier), ("gone", r.gone_before_move),
                              ("cold_not_on_fast", r.cold_not_on_fast),
                              ("cold_gone", r.cold_gone)):
                dropped.add_metric(["", reason], c)
            for reason, c in sorted(r.query_errors.items()):
                fams["kmigratedd_move_call_errors"].add_metric(["", reason], c)
        yield from fams.values()

    def _pressure(self) -> Iterator[Any]:
        mon = self.src.pressure()
        if mon is None:
            return
        yield GaugeMetricFamily("kmigratedd_pressure_held",
                                "1 while memory pressure holds promotion and demotion back",
                                value=int(mon.held))
        share = GaugeMetricFamily("kmigratedd_memory_pressure_ratio",
                                  "Share of the last poll tasks stalled on memory (PSI), of "
                                  "the line held on: the system's full line, a scoped "
                                  "cgroup's some line", labels=["source"])
        for name, ratio in sorted(mon.guard.ratios.items()):
            share.add_metric([name], ratio)
        yield share
        total = CounterMetricFamily("kmigratedd_memory_pressure_stalled_seconds",
                                    "Time tasks stalled on memory (PSI total), by source "
                                    "(system or a scoped cgroup) and line (some, full)",
                                    labels=["source", "kind"])
        for (name, kind), us in sorted(mon.totals.items()):
            total.add_metric([name, kind], us / 1e6)
        yield total

    def _queues(self) -> Iterator[Any]:
        q = self.src.queues()
        if q is None:
            return
        s = q.stats()
        yield CounterMetricFamily("kmigratedd_queue_candidates_coalesced",
                                  "Samples folded into an existing candidate", value=s.coalesced)
        yield CounterMetricFamily("kmigratedd_queue_candidates_dropped",
                                  "Candidates dropped because a per-CPU queue was full",
                                  value=s.dropped)
        yield CounterMetricFamily("kmigratedd_queue_candidates_drained",
                                  "Candidates handed to the workers", value=s.drained)
        depth = GaugeMetricFamily("kmigratedd_queue_depth", "Candidates waiting, per CPU queue",
                                  labels=["cpu"])
        for cpu, d in zip(q.cpus, s.per_cpu_depth):
            depth.add_metric([str(cpu)], d)
        yield depth
        yield GaugeMetricFamily("kmigratedd_queue_capacity",
                                "Candidates each per-CPU queue holds at most",
                                value=q.capacity_per_cpu)

    def _sampler(self) -> Iterator[Any]:
        sampler = self.src.sampler()
        if sampler is None:
            return
        name = sampler.name
        st = sampler.stats()
        active = GaugeMetricFamily("kmigratedd_sampler_active", "The sampler in use",
                                   labels=["sampler"])
        active.add_metric([name], 1)
        yield active
        produced = CounterMetricFamily("kmigratedd_sampler_candidates",
                                       "Candidates a sampler offered to the queues",
                                       labels=["sampler"])
        produced.add_metric([name], st.get("candidates_offered", 0))
        yield produced
        lost = CounterMetricFamily("kmigratedd_perf_samples_lost",
                                   "Samples the kernel reported lost (PERF_RECORD_LOST)",
                                   labels=["sampler"])
        lost.add_metric([name], st.get("samples_lost", 0))
        yield lost
        samples = CounterMetricFamily("kmigratedd_sampler_samples",
                                      "Raw samples or page observations a sampler decoded",
                                      labels=["sampler"])
        samples.add_metric([name], st.get("samples", st.get("pages_scanned", 0)))
        yield samples
        other = CounterMetricFamily("kmigratedd_sampler_events",
                                    "Other sampler counters (throttling, errors, ...)",
                                    labels=["sampler", "event"])
        for k, v in sorted(st.items()):
            if k not in ("candidates_offered", "samples_lost", "samples"):
                other.add_metric([name, k], v)
        yield other

    def _kernel(self) -> Iterator[Any]:
        fs = self.src.fs
        topo = self.src.topology()
        total = CounterMetricFamily("kmigratedd_kernel_vmstat",
                                    "Promotion/demotion/migration/NUMA counters of /proc/vmstat",
                                    labels=["counter"])
        for k, v in sorted(vmstat(fs, prefixes=VMSTAT_PREFIXES).items()):
            total.add_metric([k], v)
        yield total
        if topo is None:
            return
        per_node = CounterMetricFamily("kmigratedd_kernel_node_vmstat",
                                       "The same counters per node (node*/vmstat)",
                                       labels=["node", "counter"])
        free = GaugeMetricFamily("kmigratedd_node_memory_free_bytes", "Free memory per node",
                                 labels=["node", "tier"])
        size = GaugeMetricFamily("kmigratedd_node_memory_total_bytes", "Memory per node",
                                 labels=["node", "tier"])
        for nid in topo.nodes:
            tier = topo.tier_of(nid)
            t = str(tier.rank) if tier else ""
            for k, v in sorted(node_vmstat(fs, nid, VMSTAT_PREFIXES).items()):
                per_node.add_metric([str(nid), k], v)
            info = read_node_meminfo(fs, nid)
            free.add_metric([str(nid), t], info.get("MemFree", 0))
            size.add_metric([str(nid), t], info.get("MemTotal", 0))
        yield from (per_node, free, size)


class Metrics:
    """The daemon's registry: one collector reads everything when Prometheus scrapes."""

    def __init__(self, sources: MetricsSources) -> None:
        self.sources = sources
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(KmigratedCollector(sources))

    def render(self) -> bytes:
        return generate_latest(self.registry)


# Deadlines of one /metrics request: the request line and headers must arrive within
# HEADER_TIMEOUT_S of the connection, and the whole exchange (the reply written too)
# must end within TOTAL_TIMEOUT_S; then the connection is closed.  A client trickling
# bytes cannot hold a connection longer.
HEADER_TIMEOUT_S = 5.0
TOTAL_TIMEOUT_S = 10.0
MAX_HEADER_LINES = 100
MAX_CLIENTS = 64
MAX_PER_PEER = 32


@dataclass(eq=False)
class _Conn:
    peer: str
    since: float
    writer: asyncio.StreamWriter
    idle: bool = True  # its request has not arrived yet


class MetricsServer:
    """GET /metrics over HTTP/1.0 on the event loop: bounded request size, header and total
    deadlines, at most :data:`MAX_CLIENTS` connections at once and :data:`MAX_PER_PEER`
    from one address.  A connection beyond a cap first sheds the oldest idle connection
    (one whose request has not arrived: a scraper sends its request at once, a client
    that holds connections open does not), and is answered 503 only when none is idle.
    Connections served, shed, rejected and timed out are counted (``stats``, and
    kmigratedd_metrics_connections_total)."""

    def __init__(self, metrics: Metrics, address: str, port: int, *,
                 header_timeout_s: float = HEADER_TIMEOUT_S,
                 total_timeout_s: float = TOTAL_TIMEOUT_S, max_clients: int = MAX_CLIENTS,
                 max_per_peer: int = MAX_PER_PEER) -> None:
        self.metrics = metrics
        self.address = address
        self.port = port
        self.header_timeout_s = header_timeout_s
        self.total_timeout_s = total_timeout_s
        self.max_clients = max_clients
        self.max_per_peer = max_per_peer
        self.server: asyncio.base_events.Server | None = None
        self.conns: list[_Conn] = []
        self.stats = {"served": 0, "shed": 0, "rejected": 0, "timed_out": 0}
        self._warned = False

    @property
    def clients(self) -> int:
        return len(self.conns)

    @property
    def timed_out(self) -> int:
        return self.stats["timed_out"]

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.address, self.port,
                                                 limit=8192)
        sock = self.server.sockets[0].getsockname()
        self.port = sock[1]
        log.info("metrics on http://%s:%d/metrics", self.address, self.port)

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The request line, the headers read and dropped."""
        request = await reader.readline()
        for _ in range(MAX_HEADER_LINES):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                return request
        raise ValueError("too many header lines")

    def _admit(self, conn: _Conn) -> bool:
        """Make room for ``conn`` under the caps (shedding an idle connection), or say no."""
        for over, pool in ((len(self.conns) >= self.max_clients, self.conns),
                           (sum(c.peer == conn.peer for c in self.conns) >= self.max_per_peer,
                            [c for c in self.conns if c.peer == conn.peer])):
            if not over:
                continue
            idle = [c for c in pool if c.idle]
            if not idle:
                return False
            victim = min(idle, key=lambda c: c.since)
            self.conns.remove(victim)
            victim.writer.transport.abort()
            self.stats["shed"] += 1
            if not self._warned:
                self._warned = True
                log.warning("metrics: more than %d connections (or %d from %s) at once: idle "
                            "ones are closed, counted in kmigratedd_metrics_connections_total",
                            self.max_clients, self.max_per_peer, conn.peer)
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = _Conn(str(peer[0]) if isinstance(peer, tuple) else str(peer),
                     asyncio.get_running_loop().time(), writer)
        if not self._admit(conn):
            self.stats["rejected"] += 1
            writer.write(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        self.conns.append(conn)
        try:
            async with asyncio.timeout(self.total_timeout_s):
                request = await asyncio.wait_for(self._read_request(reader),
                                                 self.header_timeout_s)
                conn.idle = False
                parts = request.decode("latin-1").split()
                if len(parts) >= 2 and parts[0] in ("GET", "HEAD") and \
                        parts[1].split("?")[0] in ("/metrics", "/"):
                    body = self.metrics.render()
                    head = (f"HTTP/1.0 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n")
                    writer.write(head.encode() + (body if parts[0] == "GET" else b""))
                else:
                    writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                self.stats["served"] += 1
        except TimeoutError:
            self.stats["timed_out"] += 1
            writer.transport.abort()  # do not wait to flush to a client that stalls
        except (asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass
        finally:
            if conn in self.conns:
                self.conns.remove(conn)
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
