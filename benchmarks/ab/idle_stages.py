"""An idle worker (before the split) against an idle router + worker (after), natively on this
host, CPU over the window; nothing to promote (a pretend node 1 promotes to node 0)."""
import asyncio, dataclasses, os, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
import uvloop
from kmigratedd import config
from kmigratedd.kernelfs import KernelFs
from kmigratedd.queues import CandidateQueues
from kmigratedd.topology import discover

SECONDS = float(sys.argv[1])
fs = KernelFs(); topo = discover(fs); n0 = min(topo.nodes)
topo = dataclasses.replace(topo, targets={n0 + 1: n0}, nodes={**topo.nodes, n0 + 1: topo.nodes[n0]})
cfg = config.WorkersConfig()

async def main():
    queues = CandidateQueues(list(range(os.cpu_count() or 1)), 65536)
    try:
        from kmigratedd.router import Router
        from kmigratedd.inbox import Inbox
        from kmigratedd.pipeline import MovePipeline, ShimMover
        from kmigratedd.worker import NodeWorker, WorkerStats, inbox_limit
        inbox = Inbox(inbox_limit(cfg)); mover = ShimMover()
        w = NodeWorker(n0, topology=topo, inbox=inbox, cfg=cfg, fs=fs,
                       pipeline=MovePipeline(n0, mover, WorkerStats(), ThreadPoolExecutor(1), page_size=topo.page_size))
        stages = [w, Router(queues, {n0: inbox}, topo, mover, cfg, executor=ThreadPoolExecutor(1))]
        code = "after"
    except ImportError:
        from kmigratedd.worker import NodeWorker, ShimMover
        stages = [NodeWorker(n0, topology=topo, queues=queues, mover=ShimMover(), cfg=cfg, fs=fs,
                             executor=ThreadPoolExecutor(1))]
        code = "before"
    tasks = [asyncio.create_task(s.run()) for s in stages]
    await asyncio.sleep(1)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await asyncio.sleep(SECONDS)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    for s in stages: s.stop()
    await asyncio.gather(*tasks)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    print(f"{code}: {100 * cpu / (t1 - t0):.4f}% of one CPU over {t1 - t0:.0f} s", flush=True)

uvloop.run(main())
