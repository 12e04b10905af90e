from __future__ import annotations

import os
import subprocess
import sys
import time

from kmigratedd.config import ScopeConfig
from kmigratedd.kernelfs import KernelFs
from kmigratedd.scope import Scope


def spawn(name: str) -> subprocess.Popen[bytes]:
    """A child whose comm is ``name`` (prctl PR_SET_NAME); it says when it is set."""
    code = ("import ctypes,sys,time; ctypes.CDLL(None).prctl(15, ctypes.c_char_p(%r), 0, 0, 0); "
            "print('named', flush=True); time.sleep(60)" % name.encode())
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"named\n"
    return p


def test_all_excludes_self_and_kernel_threads():
    s = Scope(ScopeConfig(), KernelFs())
    pids = set(s.pids())
    assert os.getpid() not in pids
    assert 2 not in pids  # kthreadd
    assert s.is_kernel_thread(2) is True
    assert s.is_kernel_thread(os.getpid()) is False
    assert os.getppid() in pids  # the shell or runner that started us


def test_by_command_and_exclude():
    a, b = spawn("kmtest_db"), spawn("kmtest_web")
    try:
        s = Scope(ScopeConfig(commands=(r"kmtest_.*",), exclude_commands=("kmtest_web",)),
                  KernelFs())
        pids = set(s.pids())
        assert a.pid in pids and b.pid not in pids
        assert not s.contains(os.getpid())
    finally:
        a.kill(), b.kill(), a.wait(), b.wait()


def test_by_pid_and_gone_pid():
    a = spawn("kmtest_x")
    try:
        s = Scope(ScopeConfig(pids=(a.pid, 2**22 + 1)), KernelFs())
        assert list(s.pids()) == [a.pid]
        s2 = Scope(ScopeConfig(pids=(a.pid,), exclude_pids=(a.pid,)), KernelFs())
        assert list(s2.pids()) == []
    finally:
        a.kill(), a.wait()
    assert not Scope(ScopeConfig(pids=(a.pid,)), KernelFs()).contains(a.pid)


def test_by_cgroup():
    own = open("/proc/self/cgroup").read().splitlines()
    path = next((line[3:] for line in own if line.startswith("0::")), None)
    if path is None:
        import pytest
        pytest.skip("no cgroup v2 here")
    a = spawn("kmtest_cg")
    try:
        s = Scope(ScopeConfig(cgroups=(path,)), KernelFs(), self_pid=1)
        assert s.contains(a.pid)
        parent = path.rsplit("/", 1)[0] or "/"
        assert Scope(ScopeConfig(cgroups=(parent,)), KernelFs(), self_pid=1).contains(a.pid)
        assert not Scope(ScopeConfig(cgroups=("/nonexistent.slice",)), KernelFs()).contains(a.pid)
    finally:
        a.kill(), a.wait()


def test_processes_are_read_once_per_listing_cycle(monkeypatch):
    """Kernel threads and user processes are remembered between listings: a second
    listing reads no /proc/PID/stat again, but a pid new to the listing is read."""
    from kmigratedd import scope as scope_mod

    fs = KernelFs()
    s = Scope(ScopeConfig(), fs)
    first = set(s.pids())
    reads: list[str] = []
    real = fs.read_optional

    def counting(path: str):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(fs, "read_optional", counting)
    known = {f"/proc/{p}/stat" for p in first | s._kthreads}
    assert 2 not in set(s.pids()) and os.getppid() in first
    assert not known & set(reads) and 2 in s._kthreads  # (a process new since: read)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert child.pid in set(s.pids())
        assert f"/proc/{child.pid}/stat" in reads and not known & set(reads)
    finally:
        child.kill(), child.wait()
    assert child.pid not in set(s.pids())  # gone from the listing: forgotten
    assert child.pid not in s._users
    # every KTHREAD_CACHE_LISTINGS listings the memory is rebuilt
    s._listings = scope_mod.KTHREAD_CACHE_LISTINGS - 1
    reads.clear()
    list(s.pids())
    assert "/proc/2/stat" in reads and f"/proc/{os.getppid()}/stat" in reads
