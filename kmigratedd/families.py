"""The node workers' metric families and status fields, declared once.

Each :class:`Family` names a Prometheus family (its kind, help text and labels) and says
how to read its samples from a :class:`~kmigratedd.stats.WorkerSnapshot`; where the
figure also shows in ``kmigratedctl status``, it names the status key and how to read
it.  :func:`collect` builds the families of every worker for /metrics, :func:`status`
a worker's status entry: both from the same rows, so a counter cannot drift between
them.  A few rows are status only (a derived figure) and have no metric name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from .stats import DEMOTE_REFUSALS, Histogram, WorkerSnapshot

Samples = Iterable[tuple[tuple[str, ...], float]]


@dataclass(frozen=True)
class Family:
    name: str                   # the metric name ("" for a status-only row)
    kind: str                   # counter, gauge or histogram
    help: str
    labels: tuple[str, ...]
    # The samples of a worker: (label values, value); None for a status-only row.
    samples: Callable[[WorkerSnapshot, str, int], Samples] | None
    status_key: str | None = None
    status: Callable[[WorkerSnapshot], Any] | None = None


def _node(value: Callable[[WorkerSnapshot], float]) -> Callable[[WorkerSnapshot, str, int],
                                                                Samples]:
    """The samples of a family with the one label ``node``."""
    return lambda s, n, page: [((n,), value(s))]


def _by_reason(values: Callable[[WorkerSnapshot], Mapping[str, int]]
               ) -> Callable[[WorkerSnapshot, str, int], Samples]:
    return lambda s, n, page: [((n, k), v) for k, v in sorted(values(s).items())]


def _moved(pairs: Callable[[WorkerSnapshot], Mapping[tuple[int, int], int]], scale: bool,
           demotions: bool = False) -> Callable[[WorkerSnapshot, str, int], Samples]:
    """Samples by (source, destination) node, each pair the worker moves pages between a
    series from the start (at 0), so that dashboards and rate() see the first move: the
    worker's sources to its node, or for ``demotions`` its node to its demotion target."""
    def samples(s: WorkerSnapshot, n: str, page: int) -> Samples:
        if demotions:
            start = [(n, "" if s.demote_to is None else str(s.demote_to))]
        else:
            start = [(str(src), n) for src in s.sources]
        got = {(str(a), str(b)): c * (page if scale else 1) for (a, b), c in pairs(s).items()}
        # a pair with no target yet ("") only while nothing has moved
        zeros = {pair: 0 for pair in start if not got or "" not in pair}
        return sorted((zeros | got).items())
    return samples


FAMILIES: tuple[Family, ...] = (
    Family("kmigratedd_promoted_pages", "counter",
           "Pages promoted, by source and destination node", ("src_node", "dst_node"),
           _moved(lambda s: s.promoted, False), "promoted_pages", lambda s: s.promoted_pages),
    Family("kmigratedd_promoted_bytes", "counter",
           "Bytes promoted, by source and destination node", ("src_node", "dst_node"),
           _moved(lambda s: s.promoted, True)),
    Family("kmigratedd_page_outcomes", "counter",
           "Per-page move_pages outcomes by reason (moved, not_moved, or the errno name)",
           ("node", "reason"), _by_reason(lambda s: s.moves.outcomes), "errors",
           lambda s: s.errors),
    Family("kmigratedd_move_call_errors", "counter",
           "move_pages calls that failed as a whole, by errno name (node is empty for the "
           "router's location queries)", ("node", "reason"),
           _by_reason(lambda s: s.moves.whole_call_errors)),
    Family("kmigratedd_worker_dropped_pages", "counter",
           "Candidates dropped before moving, by reason (node is empty for the router's: "
           "below_threshold, below_adaptive_threshold, on_fast_tier, gone)", ("node", "reason"),
           _by_reason(lambda s: {"inbox_full": s.inbox_dropped})),
    Family("kmigratedd_batches", "counter", "move_pages batches issued", ("node", "mode"),
           lambda s, n, page: [((n, "single"), s.moves.batches - s.moves.parallel_batches),
                               ((n, "parallel"), s.moves.parallel_batches)],
           "batches", lambda s: s.moves.batches),
    Family("kmigratedd_rate_limited_seconds", "counter",
           "Time a worker waited for the rate limit", ("node",),
           _node(lambda s: s.policy.rate_limited_seconds)),
    Family("kmigratedd_headroom_blocked_seconds", "counter",
           "Time promotion was blocked by the target's free-memory headroom", ("node",),
           _node(lambda s: s.policy.headroom_blocked_seconds)),
    Family("kmigratedd_pressure_held_seconds", "counter",
           "Time pages waited while memory pressure held promotion and demotion back "
           "(workers.pressure_hold_percent)", ("node",),
           _node(lambda s: s.policy.pressure_held_seconds), "pressure_held_s",
           lambda s: round(s.policy.pressure_held_seconds, 1)),
    Family("kmigratedd_headroom_floor_bytes", "gauge",
           "Free memory promotion stops at: workers.min_free_bytes, or with kswapd demoting, "
           "half way from the node's low to its min watermarks", ("node",),
           _node(lambda s: s.headroom_floor_bytes), "headroom_floor_bytes",
           lambda s: s.headroom_floor_bytes),
    Family("kmigratedd_batch_pages_target", "gauge",
           "Pages per move_pages call now: workers.batch_pages, cut to what moves within "
           "workers.max_batch_ms", ("node",), _node(lambda s: s.batch_pages_now),
           "batch_pages_now", lambda s: s.batch_pages_now),
    Family("kmigratedd_enomem_backoff_seconds", "counter",
           "Time a worker backed off after -ENOMEM", ("node",),
           _node(lambda s: s.policy.enomem_backoff_seconds)),
    Family("kmigratedd_dry_run_pages", "counter", "Pages that would have been promoted (dry run)",
           ("node",), _node(lambda s: s.moves.dry_run_pages), "dry_run_pages",
           lambda s: s.moves.dry_run_pages),
    Family("kmigratedd_pingpong_pages", "counter",
           "Pages held off because they bounced back to a slow node", ("node",),
           _node(lambda s: s.policy.pingpong_held)),
    Family("kmigratedd_busy_retries", "counter", "Busy (-EBUSY) pages by what happened next",
           ("node", "result"), _by_reason(lambda s: {"retried": s.policy.busy_retried,
                                                     "dropped": s.policy.busy_dropped})),
    Family("kmigratedd_worker_heartbeat_timestamp_seconds", "gauge",
           "Unix time of each worker's last round", ("node",),
           _node(lambda s: s.policy.heartbeat), "heartbeat_age_s",
           lambda s: round(time.time() - s.policy.heartbeat, 3) if s.policy.heartbeat else None),
    Family("kmigratedd_worker_inbox_pages", "gauge",
           "Pages routed to a worker and waiting for a batch", ("node",),
           _node(lambda s: s.inbox_pages), "inbox_pages", lambda s: s.inbox_pages),
    Family("kmigratedd_headroom_blocked", "gauge", "1 while the target node is out of headroom",
           ("node",), _node(lambda s: int(s.headroom_blocked)), "headroom_blocked",
           lambda s: s.headroom_blocked),
    # The exchange: demotion to make room.
    Family("kmigratedd_demoted_pages", "counter",
           "Cold pages demoted to make room, by source and destination node",
           ("src_node", "dst_node"), _moved(lambda s: s.demoted, False, demotions=True),
           "demoted_pages", lambda s: s.demoted_pages),
    Family("kmigratedd_demoted_bytes", "counter",
           "Bytes demoted to make room, by source and destination node",
           ("src_node", "dst_node"), _moved(lambda s: s.demoted, True, demotions=True)),
    Family("kmigratedd_demotion_outcomes", "counter",
           "Per-page move_pages outcomes of demotions by reason", ("node", "reason"),
           _by_reason(lambda s: {"moved": 0} | dict(s.moves.demote_outcomes))),
    Family("kmigratedd_demotion_refused_pages", "counter",
           "Demotion candidates not demoted, by reason (promoted_recently, rate_limited, busy, "
           "gone, not_needed)", ("node", "reason"),
           _by_reason(lambda s: dict.fromkeys(DEMOTE_REFUSALS, 0) | dict(s.policy.demote_refused)),
           "demotion_refused", lambda s: dict(s.policy.demote_refused)),
    Family("", "", "", (), None, "demote_inbox_pages", lambda s: s.demote_inbox_pages),
    Family("kmigratedd_room_needed_bytes", "gauge",
           "Fast-tier bytes to free before the hot pages waiting fit (waiting + headroom - "
           "free)", ("node",), _node(lambda s: s.room_needed_bytes), "room_needed_bytes",
           lambda s: s.room_needed_bytes),
    Family("kmigratedd_room_starved_seconds", "counter",
           "Time room was needed with no cold page to demote", ("node",),
           _node(lambda s: s.policy.room_starved_seconds)),
    Family("kmigratedd_demotion_regrets", "counter",
           "Demoted pages offered for promotion again within workers.pingpong_window_ms",
           ("node",), _node(lambda s: s.demote_regrets), "demotion_regrets",
           lambda s: s.demote_regrets),
    Family("kmigratedd_promoted_then_cold_pages", "counter",
           "Precision guard: pages promoted that the sampler then saw cold (no access for "
           "demotion.cold_age_ms) while still remembered, each counted once", ("node",),
           _node(lambda s: s.promoted_then_cold), "promoted_then_cold",
           lambda s: s.promoted_then_cold),
    Family("kmigratedd_promoted_protect_seconds", "gauge",
           "How long a promoted page is not demoted: the ping-pong window, longer while "
           "demoted pages come back", ("node",), _node(lambda s: s.protect_s),
           "promoted_protect_s", lambda s: round(s.protect_s, 1)),
    Family("kmigratedd_pingpong_window_seconds", "gauge",
           "How long after its promotion a page seen back on a slow node counts as a bounce "
           "(and is held off): workers.pingpong_window_ms, wider while promoted pages keep "
           "bouncing", ("node",), _node(lambda s: s.pingpong_window_s), "pingpong_window_s",
           lambda s: round(s.pingpong_window_s, 1)),
    Family("kmigratedd_pingpong_widenings", "counter",
           "Times the ping-pong window and holdoff were widened because promoted pages kept "
           "bouncing", ("node",), _node(lambda s: s.pingpong_widenings), "pingpong_widenings",
           lambda s: s.pingpong_widenings),
    Family("kmigratedd_pingpong_bounces", "counter",
           "Promoted pages seen back on a slow node within the ping-pong window, each bounce "
           "counted once", ("node",), _node(lambda s: s.pingpongs), "pingpongs",
           lambda s: s.pingpongs),
    Family("kmigratedd_batch_pages", "histogram", "Pages per move_pages batch", ("node",),
           lambda s, n, page: [((n,), s.moves.batch_pages)]),  # type: ignore[list-item]
    Family("kmigratedd_move_pages_duration_seconds", "histogram",
           "Wall time of one move_pages batch (all copy threads)", ("node",),
           lambda s, n, page: [((n,), s.moves.move_durations)]),  # type: ignore[list-item]
)


def _family(f: Family) -> Any:
    if f.kind == "counter":
        return CounterMetricFamily(f.name, f.help, labels=list(f.labels))
    if f.kind == "gauge":
        return GaugeMetricFamily(f.name, f.help, labels=list(f.labels))
    return HistogramMetricFamily(f.name, f.help, labels=list(f.labels))


def _add_histogram(fam: Any, labels: tuple[str, ...], h: Histogram) -> None:
    buckets, cum = [], 0
    for bound, n in zip(h.bounds, h.counts):
        cum += n
        buckets.append((repr(float(bound)), cum))
    buckets.append(("+Inf", cum + h.counts[-1]))
    fam.add_metric(list(labels), buckets, h.total)


def collect(snaps: Mapping[int, WorkerSnapshot], page: int) -> dict[str, Any]:
    """Every worker's families, by metric name (the caller may add samples, as the router
    adds its drops, and yields them)."""
    out = {f.name: _family(f) for f in FAMILIES if f.samples is not None}
    for node, s in sorted(snaps.items()):
        n = str(node)
        for f in FAMILIES:
            if f.samples is None:
                continue
            fam = out[f.name]
            for labels, value in f.samples(s, n, page):
                if f.kind == "histogram":
                    _add_histogram(fam, labels, value)  # type: ignore[arg-type]
                else:
                    fam.add_metric(list(labels), value)
    return out


def status(s: WorkerSnapshot) -> dict[str, Any]:
    """A worker's fields in ``kmigratedctl status``."""
    return {f.status_key: f.status(s) for f in FAMILIES
            if f.status_key is not None and f.status is not None}
