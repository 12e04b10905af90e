"""DAMON, the kernel's Data Access MONitor, as kmigratedd uses it: for sampling (the
``damon`` sampler's vaddr kdamond) and for demotion (the ``damon-paddr`` demoter's paddr
kdamonds).

- ``model.py``    what DAMON is asked for, as data (contexts, targets, schemes, regions):
                  no I/O
- ``sysfs.py``    /sys/kernel/mm/damon/admin: writes a model, reads tried regions and
                  scheme stats back, waits out the sysfs lock's EBUSY
- ``kdamond.py``  the kdamonds kmigratedd runs, as one session: nr_kdamonds claimed and
                  restored, on/off, the owner file a start after a crash recovers from
"""
