"""kmigratedd: userspace kmigrated — promote hot pages to the fast memory tier,
asynchronously and in batches.

Map of the package. Data flows one way, one stage per module:

    sampler → per-CPU queues → router → inbox → node worker → move pipeline → shim


- ``kernelfs.py``  the seam for /sys and /proc: the only module that opens them (root as
                   a parameter, recorded writes)
- ``procfs.py``    readers of /proc over it: PID stat fields, statm, numa_maps, vmstat,
                   /proc/stat, CPUs
- ``topology.py``  nodes, memory tiers, HMAT, PFN → node, promotion targets
- ``shim.py``      the only importer of the native extension (``native/``): batched
                   move_pages(2), statuses as data, whole-call failures as OSError
- ``samplers/``    the name → factory table with ``auto`` (``__init__.py``); the Sampler
                   protocol and SamplerBase, the lifecycle every sampler shares
                   (``base.py``); ``perf.py``: hint-faults, pebs, ibs; ``idle.py``;
                   ``damon.py`` (policy) over ``damon_model.py`` (what DAMON is asked
                   for) and ``damon_sysfs.py`` (writing it).  Samplers only produce
                   candidates.
- ``scope.py``     which processes are watched;  ``sysctl.py``: saved/restored sysctls
- ``ranking.py``   with more in scope than a scanning sampler watches: which ones (most
                   memory on slow nodes, from numa_maps, plus a rotating window)
- ``queues.py``    per-CPU bounded, coalescing candidate queues (native; loop thread only)
- ``router.py``    one per daemon: drain the queues, fold, locate each page once
                   (move_pages query), route it to its target's inbox
- ``inbox.py``     a worker's bounded pages-to-promote, by pid
- ``worker.py``    one node worker per fast node: policy (pause, ping-pong, headroom,
                   rate limit, retries, back-off) and a typed stats snapshot
- ``pipeline.py``  a worker's move pipeline: submit batches to its move thread, complete
                   them, count every page's outcome; the Mover seam; parallel copy
- ``demotion.py``  the kernel demotes on a full fast tier for samplers that do not see
                   it: a DAMON paddr migrate_cold scheme whose quota follows the room
                   the workers need, or kswapd with demotion_enabled
- ``policy.py``    token bucket, headroom hysteresis, ping-pong damping, busy retry
- ``metrics.py``   Prometheus registry and /metrics on the event loop
- ``control.py``   JSON-RPC control socket;  ``sdnotify.py``: systemd notifications
- ``config.py``    strict YAML config into frozen dataclasses; ``default.yaml``
- ``units.py``     human units ("200MiB", "100ms") parsed in one place
- ``daemon.py``    the composition root and lifecycle (startup → serve → shutdown)
- ``cli.py``       ``kmigratedd``;  ``ctl.py``: ``kmigratedctl``
- ``errors.py``    the one exception hierarchy
"""

__version__ = "0.1.0"
