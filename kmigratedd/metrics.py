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
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from . import __version__
from .kernelfs import KernelFs
from .router import Router
from .topology import NODE_DIR, Topology, read_node_meminfo
from .worker import DEMOTE_REFUSALS, NodeWorker

log = logging.getLogger("kmigratedd.metrics")

# vmstat counters worth having next to ours (prefix match).
VMSTAT_PREFIXES = ("pgpromote_", "pgdemote_", "pgmigrate_", "numa_", "thp_migration_",
                   "pgsteal_demote", "nr_promoted", "nr_demoted")
_VMSTAT_RX = re.compile(r"^(" + "|".join(VMSTAT_PREFIXES) + r")\S*$")

BATCH_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536)
DURATION_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0)


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


def read_vmstat(fs: KernelFs, path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (fs.read_optional(path) or "").splitlines():
        k, _, v = line.partition(" ")
        if _VMSTAT_RX.match(k):
            try:
                out[k] = int(v)
            except ValueError:
                continue
    return out


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
        yield from self._workers()
        yield from self._pressure()
        yield from self._queues()
        yield from self._sampler()
        yield from self._kernel()

    def _workers(self) -> Iterator[Any]:
        workers = self.src.workers()
        topo = self.src.topology()
        page = topo.page_size if topo else 4096
        pages = CounterMetricFamily("kmigratedd_promoted_pages",
                                    "Pages promoted, by source and destination node",
                                    labels=["src_node", "dst_node"])
        nbytes = CounterMetricFamily("kmigratedd_promoted_bytes",
                                     "Bytes promoted, by source and destination node",
                                     labels=["src_node", "dst_node"])
        outcomes = CounterMetricFamily("kmigratedd_page_outcomes",
                                       "Per-page move_pages outcomes by reason "
                                       "(moved, not_moved, or the errno name)",
                                       labels=["node", "reason"])
        whole = CounterMetricFamily("kmigratedd_move_call_errors",
                                    "move_pages calls that failed as a whole, by errno name "
                                    "(node is empty for the router's location queries)",
                                    labels=["node", "reason"])
        dropped = CounterMetricFamily("kmigratedd_worker_dropped_pages",
                                      "Candidates dropped before moving, by reason (node is "
                                      "empty for the router's: below_threshold, "
                                      "below_adaptive_threshold, on_fast_tier, gone)",
                                      labels=["node", "reason"])
        batches = CounterMetricFamily("kmigratedd_batches", "move_pages batches issued",
                                      labels=["node", "mode"])
        rate_s = CounterMetricFamily("kmigratedd_rate_limited_seconds",
                                     "Time a worker waited for the rate limit", labels=["node"])
        head_s = CounterMetricFamily("kmigratedd_headroom_blocked_seconds",
                                     "Time promotion was blocked by the target's free-memory "
                                     "headroom", labels=["node"])
        press_s = CounterMetricFamily("kmigratedd_pressure_held_seconds",
                                      "Time pages waited while memory pressure held promotion "
                                      "and demotion back (workers.pressure_hold_percent)",
                                      labels=["node"])
        batch_now = GaugeMetricFamily("kmigratedd_batch_pages_target",
                                      "Pages per move_pages call now: workers.batch_pages, "
                                      "cut to what moves within workers.max_batch_ms",
                                      labels=["node"])
        floor = GaugeMetricFamily("kmigratedd_headroom_floor_bytes",
                                  "Free memory promotion stops at: workers.min_free_bytes, or "
                                  "with kswapd demoting, half way from the node's low to its "
                                  "min watermarks", labels=["node"])
        enomem_s = CounterMetricFamily("kmigratedd_enomem_backoff_seconds",
                                       "Time a worker backed off after -ENOMEM", labels=["node"])
        dry = CounterMetricFamily("kmigratedd_dry_run_pages",
                                  "Pages that would have been promoted (dry run)",
                                  labels=["node"])
        pingpong = CounterMetricFamily("kmigratedd_pingpong_pages",
                                       "Pages held off because they bounced back to a slow node",
                                       labels=["node"])
        retried = CounterMetricFamily("kmigratedd_busy_retries",
                                      "Busy (-EBUSY) pages by what happened next",
                                      labels=["node", "result"])
        dpages = CounterMetricFamily("kmigratedd_demoted_pages",
                                     "Cold pages demoted to make room, by source and "
                                     "destination node", labels=["src_node", "dst_node"])
        dbytes = CounterMetricFamily("kmigratedd_demoted_bytes",
                                     "Bytes demoted to make room, by source and destination "
                                     "node", labels=["src_node", "dst_node"])
        doutcomes = CounterMetricFamily("kmigratedd_demotion_outcomes",
                                        "Per-page move_pages outcomes of demotions by reason",
                                        labels=["node", "reason"])
        drefused = CounterMetricFamily("kmigratedd_demotion_refused_pages",
                                       "Demotion candidates not demoted, by reason "
                                       "(promoted_recently, rate_limited, busy, gone, "
                                       "not_needed)", labels=["node", "reason"])
        room = GaugeMetricFamily("kmigratedd_room_needed_bytes",
                                 "Fast-tier bytes to free before the hot pages waiting fit "
                                 "(waiting + headroom - free)", labels=["node"])
        regrets = CounterMetricFamily("kmigratedd_demotion_regrets",
                                      "Demoted pages offered for promotion again within "
                                      "workers.pingpong_window_ms", labels=["node"])
        guard = CounterMetricFamily("kmigratedd_promoted_then_cold_pages",
                                    "Precision guard: pages promoted that the sampler then "
                                    "saw cold (no access for demotion.cold_age_ms) while "
                                    "still remembered, each counted once", labels=["node"])
        protect = GaugeMetricFamily("kmigratedd_promoted_protect_seconds",
                                    "How long a promoted page is not demoted: the ping-pong "
                                    "window, longer while demoted pages come back",
                                    labels=["node"])
        window = GaugeMetricFamily("kmigratedd_pingpong_window_seconds",
                                   "How long after its promotion a page seen back on a slow "
                                   "node counts as a bounce (and is held off): "
                                   "workers.pingpong_window_ms, wider while promoted pages "
                                   "keep bouncing", labels=["node"])
        bounces = CounterMetricFamily("kmigratedd_pingpong_bounces",
                                      "Promoted pages seen back on a slow node within the "
                                      "ping-pong window, each bounce counted once",
                                      labels=["node"])
        starved = CounterMetricFamily("kmigratedd_room_starved_seconds",
                                      "Time room was needed with no cold page to demote",
                                      labels=["node"])
        beat = GaugeMetricFamily("kmigratedd_worker_heartbeat_timestamp_seconds",
                                 "Unix time of each worker's last round", labels=["node"])
        inbox = GaugeMetricFamily("kmigratedd_worker_inbox_pages",
                                  "Pages routed to a worker and waiting for a batch",
                                  labels=["node"])
        blocked = GaugeMetricFamily("kmigratedd_headroom_blocked",
                                    "1 while the target node is out of headroom",
                                    labels=["node"])
        for node, w in sorted(workers.items()):
            n, s = str(node), w.snapshot()
            for (src, dst), c in sorted(s.promoted.items()):
                pages.add_metric([str(src), str(dst)], c)
                nbytes.add_metric([str(src), str(dst)], c * page)
            for reason, c in sorted(s.outcomes.items()):
                outcomes.add_metric([n, reason], c)
            for reason, c in sorted(s.whole_call_errors.items()):
                whole.add_metric([n, reason], c)
            dropped.add_metric([n, "inbox_full"], s.inbox_dropped)
            batches.add_metric([n, "single"], s.batches - s.parallel_batches)
            batches.add_metric([n, "parallel"], s.parallel_batches)
            rate_s.add_metric([n], s.rate_limited_seconds)
            head_s.add_metric([n], s.headroom_blocked_seconds)
            press_s.add_metric([n], s.pressure_held_seconds)
            floor.add_metric([n], s.headroom_floor_bytes)
            batch_now.add_metric([n], s.batch_pages_now)
            enomem_s.add_metric([n], s.enomem_backoff_seconds)
            dry.add_metric([n], s.dry_run_pages)
            pingpong.add_metric([n], s.pingpong_held)
            retried.add_metric([n, "retried"], s.busy_retried)
            retried.add_metric([n, "dropped"], s.busy_dropped)
            beat.add_metric([n], s.heartbeat)
            inbox.add_metric([n], s.inbox_pages)
            blocked.add_metric([n], int(s.headroom_blocked))
            # Every series exists from the start (at 0), demoting or not, so dashboards and
            # rate() see the first demotion.
            down = "" if s.demote_to is None else str(s.demote_to)
            demoted = {(str(a), str(b)): c for (a, b), c in s.demoted.items()} or {(n, down): 0}
            for (down_src, down_dst), c in sorted(demoted.items()):
                dpages.add_metric([down_src, down_dst], c)
                dbytes.add_metric([down_src, down_dst], c * page)
            for reason, c in sorted(({"moved": 0} | s.demote_outcomes).items()):
                doutcomes.add_metric([n, reason], c)
            for reason, c in sorted((dict.fromkeys(DEMOTE_REFUSALS, 0)
                                     | s.demote_refused).items()):
                drefused.add_metric([n, reason], c)
            room.add_metric([n], s.room_needed_bytes)
            starved.add_metric([n], s.room_starved_seconds)
            regrets.add_metric([n], s.demote_regrets)
            guard.add_metric([n], s.promoted_then_cold)
            protect.add_metric([n], s.protect_s)
            window.add_metric([n], s.pingpong_window_s)
            bounces.add_metric([n], s.pingpongs)
        router = self.src.router()
        if router is not None:
            # Dropped before routing: no target node yet (node="").
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
            for reason, c in (("below_threshold", r.below_threshold),
                              ("below_adaptive_threshold", r.below_adaptive),
                              ("on_fast_tier", r.on_fast_tier), ("gone", r.gone_before_move),
                              ("cold_not_on_fast", r.cold_not_on_fast),
                              ("cold_gone", r.cold_gone)):
                dropped.add_metric(["", reason], c)
            for reason, c in sorted(r.query_errors.items()):
                whole.add_metric(["", reason], c)
        yield from (dpages, dbytes, doutcomes, drefused, room, starved, regrets, guard, protect,
                    window, bounces)
        yield from (pages, nbytes, outcomes, whole, dropped, batches, rate_s, head_s, press_s,
                    floor, batch_now, enomem_s, dry, pingpong, retried, beat, inbox, blocked)

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
        for k, v in sorted(read_vmstat(fs, "/proc/vmstat").items()):
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
            for k, v in sorted(read_vmstat(fs, f"{NODE_DIR}/node{nid}/vmstat").items()):
                per_node.add_metric([str(nid), k], v)
            info = read_node_meminfo(fs, nid)
            free.add_metric([str(nid), t], info.get("MemFree", 0))
            size.add_metric([str(nid), t], info.get("MemTotal", 0))
        yield from (per_node, free, size)


class Metrics:
    """The registry plus the histograms fed from workers' observations."""

    def __init__(self, sources: MetricsSources) -> None:
        self.sources = sources
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(KmigratedCollector(sources))
        self.batch_pages = Histogram("kmigratedd_batch_pages", "Pages per move_pages batch",
                                     ["node"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.move_seconds = Histogram("kmigratedd_move_pages_duration_seconds",
                                      "Wall time of one move_pages batch (all copy threads)",
                                      ["node"], buckets=DURATION_BUCKETS, registry=self.registry)

    def observe(self) -> None:
        """Move the workers' batch observations into the histograms."""
        for node, w in self.sources.workers().items():
            sizes, durations = w.take_observations()
            h1 = self.batch_pages.labels(str(node))
            h2 = self.move_seconds.labels(str(node))
            for v in sizes:
                h1.observe(v)
            for d in durations:
                h2.observe(d)

    def render(self) -> bytes:
        self.observe()
        return generate_latest(self.registry)


# Deadlines of one /metrics request: the request line and headers must arrive within
# HEADER_TIMEOUT_S of the connection, and the whole exchange (the reply written too)
# must end within TOTAL_TIMEOUT_S; then the connection is closed.  A client trickling
# bytes cannot hold a connection longer.
HEADER_TIMEOUT_S = 5.0
TOTAL_TIMEOUT_S = 10.0
MAX_HEADER_LINES = 100
MAX_CLIENTS = 64


class MetricsServer:
    """GET /metrics over HTTP/1.0 on the event loop: bounded request size, header and total
    deadlines, at most :data:`MAX_CLIENTS` connections at once."""

    def __init__(self, metrics: Metrics, address: str, port: int, *,
                 header_timeout_s: float = HEADER_TIMEOUT_S,
                 total_timeout_s: float = TOTAL_TIMEOUT_S) -> None:
        self.metrics = metrics
        self.address = address
        self.port = port
        self.header_timeout_s = header_timeout_s
        self.total_timeout_s = total_timeout_s
        self.server: asyncio.base_events.Server | None = None
        self.clients = 0
        self.timed_out = 0

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            if self.clients > MAX_CLIENTS:
                return
            async with asyncio.timeout(self.total_timeout_s):
                request = await asyncio.wait_for(self._read_request(reader),
                                                 self.header_timeout_s)
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
        except TimeoutError:
            self.timed_out += 1
            writer.transport.abort()  # do not wait to flush to a client that stalls
        except (asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass
        finally:
            self.clients -= 1
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
