"""Readers of /proc: a fake tree for the parsing, this host's /proc for the real thing."""

from __future__ import annotations

import os
from pathlib import Path

from kmigratedd import procfs
from kmigratedd.kernelfs import KernelFs


def fake_stat(root: Path, pid: int, comm: str, *, flags: int = 0, start: int = 77,
              cpu: int = 3) -> None:
    # Fields after "(comm) ": [0] state (field 3) ... [6] flags (9), [19] starttime (22),
    # [36] processor (39).
    rest = ["0"] * 50
    rest[0], rest[6], rest[19], rest[36] = "S", str(flags), str(start), str(cpu)
    d = root / f"proc/{pid}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(rest) + "\n")


def test_stat_fields_split_after_the_last_parenthesis(tmp_path: Path) -> None:
    fake_stat(tmp_path, 10, "a) (b c)", flags=procfs.PF_KTHREAD | 0x40, start=1234, cpu=5)
    fake_stat(tmp_path, 11, "user", flags=0x400000)
    fs = KernelFs(tmp_path)
    assert procfs.stat_fields(fs, 10)[:1] == ["S"]  # type: ignore[index]
    assert (procfs.last_cpu(fs, 10), procfs.start_time(fs, 10)) == (5, 1234)
    assert procfs.is_kernel_thread(fs, 10) is True
    assert procfs.is_kernel_thread(fs, 11) is False
    for reader in (procfs.stat_fields, procfs.last_cpu, procfs.start_time,
                   procfs.is_kernel_thread):
        assert reader(fs, 12) is None  # gone
    (tmp_path / "proc/13").mkdir()
    (tmp_path / "proc/13/stat").write_text("13 (short) S 1\n")
    assert procfs.last_cpu(fs, 13) is None and procfs.start_time(fs, 13) is None


def test_last_cpu_of_self_and_of_a_gone_pid() -> None:
    fs = KernelFs()
    cpu = procfs.last_cpu(fs, os.getpid())
    assert cpu is not None and cpu in os.sched_getaffinity(0) | {cpu}
    assert procfs.last_cpu(fs, 2**22 + 99) is None
    assert procfs.is_kernel_thread(fs, 2) is True  # kthreadd


def test_vmstat_finds_the_counters_asked_for(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/vmstat").write_text("nr_free_pages 7\npgpromote_success 12\n"
                                          "pgpromote_success_later 3\nnuma_pte_updates 5")
    fs = KernelFs(tmp_path)
    assert procfs.vmstat(fs, "pgpromote_success", "numa_pte_updates", "nope") == {
        "pgpromote_success": 12, "numa_pte_updates": 5}
    assert procfs.vmstat(fs, "nr_free_pages") == {"nr_free_pages": 7}
    assert procfs.vmstat(KernelFs(tmp_path / "missing"), "nr_free_pages") == {}


def test_online_cpus_and_capabilities(tmp_path: Path) -> None:
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-2,5\n")
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/status").write_text("Name:\tx\nCapEff:\t0000000000200000\n")
    fs = KernelFs(tmp_path)
    assert procfs.online_cpus(fs) == [0, 1, 2, 5]
    assert procfs.has_capability(fs, 21) and not procfs.has_capability(fs, 12)
    assert procfs.online_cpus(KernelFs(tmp_path / "missing")) == list(range(os.cpu_count() or 1))
    assert procfs.has_capability(KernelFs(tmp_path / "missing"), 21)  # cannot tell


def test_cpu_times(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/stat").write_text("cpu  10 0 5 100 7 0 0 0 0 0\ncpu0 5 0 2 50 3 0 0 0\n"
                                        "cpu1 5 0 3 50 4 0 0 0\nintr 1 2\n")
    assert procfs.cpu_times(KernelFs(tmp_path)) == (122, 107, 2)
    assert procfs.cpu_times(KernelFs(tmp_path / "missing")) is None


def test_numa_pages_and_rss(tmp_path: Path) -> None:
    d = tmp_path / "proc/20"
    d.mkdir(parents=True)
    (d / "numa_maps").write_text(
        "55aa00000000 default file=/usr/bin/x mapped=4 N0=3 N1=1 kernelpagesize_kB=4\n"
        "55aa00004000 default file=/usr/bin/x anon=2 dirty=2 N1=2 kernelpagesize_kB=4\n"
        "7f0000000000 default anon=300 dirty=300 N0=100 N1=200 kernelpagesize_kB=4\n"
        "7f1000000000 default anon=1 dirty=1 N1=1 kernelpagesize_kB=2048\n"
        "7f2000000000 default stack\n"
        "7ffd00000000 default anon=3 dirty=3 N0=3 kernelpagesize_kB=4\n")
    (d / "statm").write_text("1000 420 30 1 0 200 0\n")
    fs = KernelFs(tmp_path)
    # the shared file mapping (no anon=) is left out; the 2 MiB page counts 512 pages
    assert procfs.numa_pages(fs, 20) == {0: 103, 1: 2 + 200 + 512}
    assert procfs.rss_pages(fs, 20) == 420
    assert procfs.numa_pages(fs, 21) is None and procfs.rss_pages(fs, 21) is None


def test_numa_pages_of_self() -> None:
    counts = procfs.numa_pages(KernelFs(), os.getpid())
    assert counts and sum(counts.values()) > 0
    assert (procfs.rss_pages(KernelFs(), os.getpid()) or 0) > 0
