"""Readers of /proc (and the online-CPU list of /sys) over :class:`~kmigratedd.kernelfs.KernelFs`.

/proc/PID/stat is parsed here and nowhere else: its second field (``comm``, in
parentheses) may hold spaces and parentheses, so the fields are split after the
last ``)`` (proc(5)).  Field numbers below are proc(5)'s, counting from 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .kernelfs import KernelFs, line_with, parse_cpulist

PF_KTHREAD = 0x00200000  # include/linux/sched.h


def stat_fields(fs: KernelFs, pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after ``comm``: index 0 is field 3 (state); None
    if the process is gone."""
    text = fs.read_optional(f"/proc/{pid}/stat")
    if text is None:
        return None
    return text[text.rfind(")") + 2:].split()


def _field(fields: list[str] | None, number: int) -> int | None:
    if fields is None:
        return None
    try:
        return int(fields[number - 3])
    except (IndexError, ValueError):
        return None


def last_cpu(fs: KernelFs, pid: int) -> int | None:
    """CPU the task last ran on (field 39, ``processor``), or None if it is gone."""
    return _field(stat_fields(fs, pid), 39)


def start_time(fs: KernelFs, pid: int) -> int | None:
    """Field 22 (``starttime``, clock ticks after boot): tells a reused pid from the
    process known before; None if it is gone."""
    return _field(stat_fields(fs, pid), 22)


def is_kernel_thread(fs: KernelFs, pid: int) -> bool | None:
    """Whether ``pid`` is a kernel thread (PF_KTHREAD in field 9, ``flags``); None if
    it is gone."""
    flags = _field(stat_fields(fs, pid), 9)
    return None if flags is None else bool(flags & PF_KTHREAD)


def has_capability(fs: KernelFs, cap: int) -> bool:
    """Whether this process has ``cap`` in its effective set (True if it cannot tell)."""
    line = line_with("\n" + (fs.read_optional("/proc/self/status") or ""), "\nCapEff:")
    if line is None:
        return True
    try:
        return bool(int(line.split()[1], 16) >> cap & 1)
    except (IndexError, ValueError):
        return True


VMSTAT = "/proc/vmstat"


def node_vmstat_path(node: int) -> str:
    return f"/sys/devices/system/node/node{node}/vmstat"


def vmstat(fs: KernelFs, *keys: str, path: str = VMSTAT,
           prefixes: tuple[str, ...] = ()) -> dict[str, int]:
    """Counters of a vmstat file (/proc/vmstat, or a node's: :func:`node_vmstat_path`): the
    ``keys`` named, found by search rather than by splitting every line (the hint-fault
    sampler reads one every interval), and every counter whose name starts with one of
    ``prefixes``."""
    raw = fs.read_optional(path) or ""
    text = "\n" + raw
    out: dict[str, int] = {}
    for k in keys:
        line = line_with(text, f"\n{k} ")
        if line is not None:
            out[k] = int(line[len(k) + 1:])
    if prefixes:
        for line in raw.splitlines():
            name, _, value = line.partition(" ")
            if name.startswith(prefixes) and value.strip().isdigit():
                out[name] = int(value)
    return out


def node_vmstat(fs: KernelFs, node: int, prefixes: tuple[str, ...]) -> dict[str, int]:
    """The counters of ``node``'s vmstat whose names start with one of ``prefixes``."""
    return vmstat(fs, path=node_vmstat_path(node), prefixes=prefixes)


def online_cpus(fs: KernelFs) -> list[int]:
    """The online CPUs (/sys/devices/system/cpu/online), or 0..cpu_count-1 without it."""
    text = fs.read_optional("/sys/devices/system/cpu/online")
    return sorted(parse_cpulist(text)) if text else list(range(os.cpu_count() or 1))


def cpu_times(fs: KernelFs) -> tuple[int, int, int] | None:
    """From /proc/stat: (total jiffies, idle + iowait jiffies, CPUs listed), or None."""
    text = fs.read_optional("/proc/stat")
    if text is None:
        return None
    ncpus, total = 0, None
    for line in text.splitlines():
        if line.startswith("cpu "):
            f = [int(x) for x in line.split()[1:]]
            total = (sum(f[:8]), f[3] + (f[4] if len(f) > 4 else 0))
        elif line.startswith("cpu"):
            ncpus += 1
    return None if total is None else (total[0], total[1], ncpus)


def peer_ids(fs: KernelFs, pid: int) -> tuple[frozenset[int], frozenset[int]] | None:
    """From /proc/PID/status: (the real, effective, saved and filesystem uids, the
    supplementary groups), or None if the process is gone (proc(5): ``Uid:``, ``Groups:``)."""
    text = fs.read_optional(f"/proc/{pid}/status")
    if text is None:
        return None
    text = "\n" + text
    uid_line, groups_line = line_with(text, "\nUid:"), line_with(text, "\nGroups:")
    if uid_line is None or groups_line is None:
        return None
    try:
        return (frozenset(int(x) for x in uid_line.split()[1:]),
                frozenset(int(x) for x in groups_line.split()[1:]))
    except ValueError:
        return None


def cgroup_path(fs: KernelFs, pid: int) -> str | None:
    """The cgroup v2 path of ``pid`` (the ``0::`` line of /proc/PID/cgroup); None if the
    process is gone or has none."""
    text = fs.read_optional(f"/proc/{pid}/cgroup")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def rss_pages(fs: KernelFs, pid: int) -> int | None:
    """Resident pages (/proc/PID/statm, field 2): kept in counters, so reading it
    walks no page table; None if the process is gone (proc(5))."""
    text = fs.read_optional(f"/proc/{pid}/statm")
    if text is None:
        return None
    parts = text.split(None, 2)
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return None


def numa_pages(fs: KernelFs, pid: int, page_size: int = 4096) -> dict[int, int] | None:
    """Base pages of ``pid`` on each node, from /proc/PID/numa_maps (the ``N<node>=<pages>``
    of every mapping, in pages of the mapping's ``kernelpagesize_kB``, turned into
    ``page_size`` pages), file pages not written by the process left out; None if
    the process is gone or may not be read.  The kernel
    walks the page tables of every mapping to write it (fs/proc/task_mmu.c,
    ``show_numa_map``): its cost grows with the pages mapped."""
    try:
        text = fs.read(f"/proc/{pid}/numa_maps")
    except OSError:
        return None
    out: dict[int, int] = {}
    kb = page_size >> 10
    for line in text.splitlines():
        i = line.find(" N")
        # Pages of a file mapping are counted only where the process wrote its own
        # (``anon=``): shared library text is on whichever node loaded it, for everyone.
        if i < 0 or (" file=" in line and " anon=" not in line):
            continue
        scale = 1
        k = line.find("kernelpagesize_kB=")
        if k >= 0:
            size = line[k + 18:].split(None, 1)[0]
            if size.isdigit() and int(size) != kb and kb:
                scale = int(size) // kb
        for tok in line[i + 1:].split():
            if tok[0] == "N" and "=" in tok:
                node, _, count = tok[1:].partition("=")
                if node.isdigit() and count.isdigit():
                    n = int(node)
                    out[n] = out.get(n, 0) + int(count) * scale
    return out


#: The watermarks of a zone, in pages (/proc/zoneinfo), and what it keeps back from a
#: movable allocation (``protection``, the lowmem reserve, indexed by the highest zone
#: an allocation may use).
@dataclass(frozen=True)
class ZoneMarks:
    node: int
    name: str
    min: int
    low: int
    high: int
    managed: int
    protection: tuple[int, ...]
    # kswapd gave the node up (its reclaim failed MAX_RECLAIM_RETRIES times in a row) and
    # is not woken again until some reclaim on the node succeeds.
    node_unreclaimable: bool = False


def zone_marks(fs: KernelFs) -> list[ZoneMarks]:
    """Every zone's watermarks from /proc/zoneinfo ([] without it).  Only the lines named
    are parsed: the file also lists every CPU's page sets, long on a large machine."""
    out: list[ZoneMarks] = []
    text = fs.read_optional("/proc/zoneinfo") or ""
    for block in text.split("\nNode "):
        head, _, body = block.partition("\n")
        head = head.removeprefix("Node ")
        node_s, _, zone = head.partition(", zone")
        if not node_s.strip().isdigit():
            continue
        vals: dict[str, int] = {}
        prot: tuple[int, ...] = ()
        for line in body.splitlines():
            words = line.split()
            if not words:
                continue
            key = words[0]
            if key in ("min", "low", "high", "managed") and len(words) == 2:
                vals[key] = int(words[1])
            elif key == "protection:":
                prot = tuple(int(x) for x in line.split("(", 1)[1].rstrip(")").split(","))
            elif key == "nr_free_pages" and prot:
                break  # the zone's counters follow: nothing more of ours in this block
        if len(vals) == 4:
            flag = line_with(body, "node_unreclaimable:")
            out.append(ZoneMarks(int(node_s), zone.strip(), vals["min"], vals["low"],
                                 vals["high"], vals["managed"], prot,
                                 flag is not None and flag.split(":")[1].strip() == "1"))
    return out


def zone_free_pages(fs: KernelFs) -> dict[tuple[int, str], int]:
    """Free pages of every zone, from /proc/buddyinfo (one line per zone: free blocks of
    each order), keyed by (node, zone name)."""
    out: dict[tuple[int, str], int] = {}
    for line in (fs.read_optional("/proc/buddyinfo") or "").splitlines():
        head, _, counts = line.partition(", zone")
        words = counts.split()
        node_s = head.removeprefix("Node").strip()
        if not words or not node_s.isdigit():
            continue
        try:
            out[(int(node_s), words[0])] = sum(int(c) << order
                                               for order, c in enumerate(words[1:]))
        except ValueError:
            continue
    return out


def pressure_totals(fs: KernelFs, path: str) -> dict[str, int] | None:
    """The cumulative stall times (microseconds) of a pressure file (/proc/pressure/memory
    or a cgroup's memory.pressure): ``{"some": µs, "full": µs}``; None where it does not
    exist (CONFIG_PSI off, psi=0 on the command line, no such cgroup)."""
    try:
        text = fs.read(path)
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        i = rest.find("total=")
        if kind in ("some", "full") and i >= 0:
            value = rest[i + 6:].split(None, 1)[0]
            if value.isdigit():
                out[kind] = int(value)
    return out or None


class Pagemap:
    """/proc/PID/pagemap of one process, read in 8-byte entries by C (``shim.pread_words``):
    bit 63 present, bits 0-54 the PFN (shown to CAP_SYS_ADMIN only).  The one reader of
    pagemap; opening it checks ptrace read access (PermissionError), and a process that
    exited gives FileNotFoundError or ESRCH."""

    def __init__(self, fs: KernelFs, pid: int) -> None:
        self.pid = pid
        self.fd = fs.open(f"/proc/{pid}/pagemap", os.O_RDONLY)

    def read(self, vpn: int, entries: Any) -> int:
        """Entries from virtual page ``vpn`` into ``entries`` (a buffer of 8-byte words);
        returns how many were read (fewer once the mm is gone)."""
        from . import shim

        return shim.pread_words(self.fd, vpn, entries)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Pagemap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
