"""kmigratedd: userspace kmigrated — promote hot pages to the fast memory tier,
asynchronously and in batches.

Map of the package. Data flows one way, one stage per module:

    sampler → per-CPU queues → router → inbox → node worker → admission → move pipeline → shim
                                                       ↑ room needed (capacity)
    demoter (demotion/) makes room on a full fast tier;  pressure monitor → workers

Kernel access:
- ``kernelfs.py``  the seam for /sys and /proc: the only module that opens them (root as
                   a parameter, recorded writes)
- ``procfs.py``    readers of /proc over it: PID stat fields, statm, numa_maps, the one
                   vmstat parser, the one pagemap reader, zoneinfo, buddyinfo, CPUs
- ``shim/``        the only importer of the native extension (``native/``): move_pages(2)
                   (``move.py``), candidate queues, perf rings, page_idle, batch helpers;
                   statuses as data, whole-call failures as OSError
- ``topology.py``  nodes, memory tiers, HMAT, memory blocks, PFN → node, promotion targets
- ``sysctl.py``    sysctls set and restored (with a crash-safe state file)

Stages:
- ``samplers/``    the name → factory table with ``auto`` and the start-up sweep
                   (``__init__.py``); the Sampler protocol and SamplerBase (``base.py``);
                   ``perf.py``: hint-faults, pebs, ibs; ``idle.py`` over ``idle_walk.py``
                   (scan cursor, budget, per-process state), ``idle_batch.py`` (the batch,
                   hot ageing) and ``idle_cold.py`` (cold ageing); ``damon.py`` (policy) over
                   ``damon_targets.py``, ``damon_hot.py``, ``damon_cold.py`` and
                   ``damon_quiet.py``; ``offers.py``: the cold budget and offer builder both
                   scanning samplers share.  Samplers only produce candidates.
- ``damon/``       what DAMON is asked for (``model.py``), writing it (``sysfs.py``), one
                   kdamond session with crash recovery (``kdamond.py``): shared by the damon
                   sampler and the paddr demoter
- ``scope.py``     which processes are watched;  ``ranking.py``: with more in scope than a
                   scanning sampler watches, which ones
- ``queues.py``    per-CPU bounded, coalescing candidate queues (native; loop thread only)
- ``router.py``    one per daemon: drain the queues, fold, locate each page once, route it
                   to its target's inbox (and cold pages to a demotion inbox)
- ``inbox.py``     a worker's bounded pages-to-promote, by pid
- ``worker.py``    one node worker per fast node: rounds, pause, pressure, reactions to what
                   the kernel did (retries, back-off, forgetting exited pids)
- ``admission.py`` between inbox and pipeline: ping-pong hold-off, headroom, rate limit
- ``capacity.py``  a node's free memory, watermarks and in-flight pages, read once per
                   tick: the headroom floor and the room promotion needs
- ``pipeline.py``  a worker's move pipeline: batches on its move thread, every page's
                   outcome counted; the Mover seam; parallel copy
- ``demotion/``    the Demoter protocol and name → factory table (``__init__.py``):
                   ``lane.py`` (the sampler's cold pages on the workers' pipelines),
                   ``paddr.py`` (DAMON paddr migrate_cold), ``kswapd.py`` (demotion_enabled)
- ``policy.py``    token bucket, headroom hysteresis, ping-pong damping, busy retry,
                   adaptive threshold;  ``pressure.py``: PSI, the pressure guard

Wiring, accounting, interfaces:
- ``engine.py``    builds the stages for a config (sampler and demoter resolved first, each
                   built once), wires and runs them
- ``daemon.py``    the lifecycle (startup → serve → reload → shutdown);  ``threads.py``:
                   its thread pools and their niceness;  ``instance.py``: one daemon per
                   control socket (a lock);  ``supervise.py``: periodic tasks retried with
                   back-off, their failures counted
- ``stats.py``     move stats (the pipeline's), policy stats (the worker's), the frozen
                   snapshot; ``families.py``: the one table metrics and status are built from
- ``metrics.py``   Prometheus text on /metrics on the event loop;  ``status.py``: the status
- ``control.py``   JSON-RPC control socket (``jsonstrict.py``: duplicate keys refused);
                   ``sdnotify.py``: systemd notifications
- ``processes.py`` the per-process view: pages moved per pid (bounded), where each
                   process's memory sits (``kmigratedctl top``, top-N metrics)
- ``config/``      the sections (``schema.py``, the sampler's in ``samplers.py``), strict
                   YAML (``yamlload.py``), decoding (``decode.py``), the environment check
                   (``environment.py``); ``default.yaml`` is the embedded default
- ``units.py``     human units ("200MiB", "100ms") parsed in one place
- ``cli.py``       ``kmigratedd``;  ``ctl.py``: ``kmigratedctl``;  ``errors.py``: the one
                   exception hierarchy;  ``probe.py``: ``--probe``;  ``manpages.py`` and
                   ``completion.py``: the manual pages and shell completion, generated from
                   the parsers and the embedded config
"""

__version__ = "0.1.0"
