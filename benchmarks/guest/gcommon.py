"""Helpers shared by the guest halves of the benchmarks (run inside the tiered VM only).

Memory is mapped with ctypes (anonymous, private, optionally 2 MiB aligned and
THP-advised), placed on a node with mbind(MPOL_BIND) while it is first touched,
then unbound so it may move.  Every page query and every move goes through
kmigratedd's shim (``kmigratedd.shim``) — the code the daemon runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import statistics
import sys
import time
from array import array
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# The guest helpers other engineers wrote: Workload, DaemonProcess, fill_node.
sys.path.insert(0, str(REPO / "tests" / "vm" / "guest"))

from kmigratedd import shim  # noqa: E402
from kmigratedd.kernelfs import KernelFs  # noqa: E402
from kmigratedd.damon.sysfs import retry_busy  # noqa: E402
from kmigratedd.topology import read_node_meminfo  # noqa: E402

MiB = 1 << 20
PAGE = shim.PAGE_SIZE
HPAGE = 2 * MiB
FS = KernelFs()
CLK_TCK = os.sysconf("SC_CLK_TCK")

SYS_MBIND = 237
MPOL_DEFAULT, MPOL_BIND = 0, 2
PROT_RW = 0x1 | 0x2
MAP_PRIVATE_ANON = 0x02 | 0x20
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def in_vm() -> bool:
    return os.environ.get("KMIGRATEDD_IN_VM") == "1"


def require_vm(what: str) -> None:
    if not in_vm():
        sys.exit(f"{what}: this is the guest half; run the host script (it boots the VM)")


def say(msg: str) -> None:
    """A progress line (the host streams the guest console)."""
    print(msg, flush=True)


def _check(ret: int, what: str) -> None:
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


class Buffer:
    """An anonymous private mapping placed on ``node`` page by page at first touch."""

    def __init__(self, size: int, node: int, *, thp: bool = False, fill: int = 0x5A) -> None:
        align = HPAGE if thp else PAGE
        self.size = size
        self._len = size + align
        raw = _libc.mmap(None, self._len, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
        if raw in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        self._raw = int(raw)
        self.addr = (self._raw + align - 1) // align * align
        self.thp = thp
        _check(_libc.madvise(self.addr, size, MADV_HUGEPAGE if thp else MADV_NOHUGEPAGE),
               "madvise")
        mbind(self.addr, size, MPOL_BIND, node)
        ctypes.memset(self.addr, fill, size)
        mbind(self.addr, size, MPOL_DEFAULT, None)

    def pages(self, step: int = PAGE) -> array[int]:
        return array("Q", range(self.addr, self.addr + self.size, step))

    def close(self) -> None:
        if self._raw:
            _libc.munmap(self._raw, self._len)
            self._raw = 0

    def __enter__(self) -> "Buffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mbind(addr: int, length: int, mode: int, node: int | None) -> None:
    mask = (ctypes.c_ulong * 1)(1 << node) if node is not None else None
    ret = _libc.syscall(ctypes.c_long(SYS_MBIND), ctypes.c_void_p(addr), ctypes.c_ulong(length),
                        ctypes.c_int(mode), mask, ctypes.c_ulong(64 if mask else 0),
                        ctypes.c_uint(0))
    _check(int(ret), "mbind")


def anon_huge_bytes(addr: int, pid: str = "self") -> int:
    """AnonHugePages of the mapping holding ``addr`` (from /proc/PID/smaps)."""
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = int(m.group(1), 16) <= addr < int(m.group(2), 16)
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return 0


def nodes_of(pid: int, addrs: array[int]) -> dict[int, int]:
    """Pages per node (negative keys: -errno) through the shim's query form."""
    out: dict[int, int] = {}
    for i in range(0, len(addrs), 65536):
        c = shim.count_statuses(shim.query_nodes(pid, addrs[i:i + 65536]))
        for n, k in c.by_node.items():
            out[n] = out.get(n, 0) + k
        for e, k in c.by_errno.items():
            out[-e] = out.get(-e, 0) + k
    return out


def count_on(pid: int, addrs: array[int], node: int) -> int:
    return nodes_of(pid, addrs).get(node, 0) if len(addrs) else 0


def free_mib(node: int) -> float:
    return read_node_meminfo(FS, node).get("MemFree", 0) / MiB


def proc_cpu(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds; (nan, nan) once it is gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    return int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK


def vmstat(*keys: str) -> dict[str, int]:
    out = dict.fromkeys(keys, 0)
    for line in Path("/proc/vmstat").read_text().splitlines():
        k, _, v = line.partition(" ")
        if k in out:
            out[k] = int(v)
    return out


def read(path: str) -> str:
    """A file's text; DAMON's files answer EBUSY while a kdamond holds their lock, which
    is waited for."""
    return retry_busy(lambda: Path(path).read_text().strip())


def write(path: str, value: str) -> None:
    def once() -> None:
        with open(path, "w") as f:
            f.write(value)
    retry_busy(once)


def spread(values: list[float]) -> dict[str, float]:
    """Median and range of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def guest_info() -> dict[str, Any]:
    return {"kernel_release": os.uname().release,
            "kernel": os.environ.get("KMIGRATEDD_VM_KERNEL", "?"),
            "accel": os.environ.get("KMIGRATEDD_VM_ACCEL", "?"),
            "topology": os.environ.get("KMIGRATEDD_VM_TOPOLOGY", "?"),
            "node_mem_mib": os.environ.get("KMIGRATEDD_VM_NODE_MEM_MIB", "?"),
            "cpus": os.cpu_count(), "page_size": PAGE,
            "thp": read("/sys/kernel/mm/transparent_hugepage/enabled"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def dump(path: str, data: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, p)
    os.sync()
    say(f"raw results written to {p}")
