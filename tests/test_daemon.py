"""Daemon lifecycle as a user runs it: a real process, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import urllib.error


# The installed console script, as a user starts it.
KMIGRATEDD = str(Path(sys.executable).with_name("kmigratedd"))


def port0(cwd: Path) -> str:
    """Config lines for a test daemon: a free metrics port and a control socket of its own
    (never the default one a real kmigratedd on the machine may hold)."""
    return f"metrics:\n  port: 0\ncontrol:\n  socket_path: {cwd}/control.sock\n"


class Daemon:
    """A kmigratedd process whose stderr is collected by a reader thread."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        if "--config" not in args:
            cfg = cwd / "port0.yaml"
            cfg.write_text(port0(cwd))
            args = ("--config", str(cfg), *args)
        self.proc = subprocess.Popen([KMIGRATEDD, *args], cwd=cwd,
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self._seen = 0
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 20) -> list[str]:
        """Wait for a new line containing ``text``; return the lines logged so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(self._seen, len(self.lines)):
                    if text in self.lines[i]:
                        self._seen = i + 1
                        return list(self.lines)
                self._seen = max(self._seen, len(self.lines))
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._cond.wait(left)
        raise AssertionError(f"{text!r} not logged; got:\n" + "\n".join(self.lines))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_within_the_drain_bound(tmp_path, sig):
    d = Daemon(cwd=tmp_path)
    try:
        d.wait_for("running (pid")
        t0 = time.monotonic()
        d.proc.send_signal(sig)
        assert d.proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5.0  # daemon.shutdown_timeout_ms default
        d.wait_for("stopped")
    finally:
        d.close()


def test_sighup_reload_good_then_bad_keeps_running_config(tmp_path):
    cfg = tmp_path / "k.yaml"
    cfg.write_text("log_level: info\n" + port0(tmp_path))
    d = Daemon("--config", str(cfg), cwd=tmp_path)
    proc = d.proc
    try:
        d.wait_for("running (pid")
        cfg.write_text("log_level: debug\ntopology:\n  refresh_interval_ms: 100\n"
                       + port0(tmp_path))
        proc.send_signal(signal.SIGHUP)
        d.wait_for("config reloaded from")
        d.wait_for("DEBUG kmigratedd: free memory: node 0")  # new level and interval apply
        cfg.write_text("log_level: loud\n")
        proc.send_signal(signal.SIGHUP)
        out = d.wait_for("reload rejected")
        assert any(f"{cfg}: log_level: must be one of" in line for line in out)
        d.wait_for("DEBUG kmigratedd: free memory")  # still the good config
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        d.close()


def test_journald_format_under_systemd(tmp_path):
    env = dict(os.environ, JOURNAL_STREAM="8:1234")
    d = Daemon(cwd=tmp_path, env=env)
    try:
        lines = d.wait_for("running (pid")
        assert all(line.startswith("<") for line in lines if line)
        assert any(line.startswith("<6>kmigratedd: running") for line in lines)
    finally:
        d.close()


def test_sd_notify_ready_watchdog_stopping(tmp_path):
    import socket as sk

    path = tmp_path / "notify.sock"
    srv = sk.socket(sk.AF_UNIX, sk.SOCK_DGRAM)
    srv.bind(str(path))
    srv.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000")
    d = Daemon(cwd=tmp_path, env=env)
    got: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in got):
            got.append(srv.recv(4096).decode())
        assert any("READY=1" in m and "STATUS=" in m for m in got), got
        assert any("WATCHDOG=1" in m for m in got), got
        d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("STOPPING=1" in m for m in got):
            got.append(srv.recv(4096).decode())
        assert any("STOPPING=1" in m for m in got), got
        assert d.proc.wait(timeout=10) == 0
    finally:
        d.close()
        srv.close()


def test_metrics_endpoint_serves_prometheus_text(tmp_path):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    d = Daemon(cwd=tmp_path)
    try:
        d.wait_for("metrics on http://")
        line = next(x for x in d.lines if "metrics on http://" in x)
        url = line.split("metrics on ", 1)[1].strip()
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        for name in ("kmigratedd_build_info", "kmigratedd_paused", "kmigratedd_dry_run",
                     "kmigratedd_queue_depth", "kmigratedd_kernel_vmstat",
                     "kmigratedd_node_memory_free_bytes", "kmigratedd_node_memory_total_bytes",
                     "kmigratedd_batch_pages", "kmigratedd_move_pages_duration_seconds"):
            assert name in names, name
        assert 'kmigratedd_node_memory_free_bytes{node="0",tier="0"}' in text
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url.replace("/metrics", "/nope"), timeout=10)
        assert info.value.code == 404
    finally:
        d.close()


def thread_nice(pid: int) -> dict[int, int]:
    """The niceness of each thread of ``pid`` (field 19 of /proc/PID/task/TID/stat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        out[int(task.name)] = int(fields[16])
    return out


def test_every_thread_runs_at_daemon_nice_and_a_reload_changes_it(tmp_path):
    """daemon.nice (10 by default) on every thread the daemon runs, so an application's
    threads get the CPU first; a reload applies a new value to every thread."""
    d = Daemon(cwd=tmp_path)
    try:
        d.wait_for("running (pid")
        nice = thread_nice(d.proc.pid)
        assert len(nice) > 1 and set(nice.values()) == {10}, nice
        cfg = tmp_path / "port0.yaml"
        cfg.write_text(port0(tmp_path) + "daemon:\n  nice: 5\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("config reloaded from")
        assert set(thread_nice(d.proc.pid).values()) == {5}
    finally:
        d.close()


def test_a_startup_sweep_runs_beside_a_sampler_that_waits_for_the_kernel(tmp_path,
                                                                        monkeypatch):
    """sampler.startup_sweep_ms: beside hint-faults (or pebs, ibs) a sampler reading
    accessed bits runs for a while, with no demotion queues; idle first, then damon (not
    beside a damon-paddr demoter); none beside samplers that read accessed bits themselves."""
    import asyncio
    from types import SimpleNamespace

    from kmigratedd import config, samplers
    from kmigratedd.engine import Engine
    from kmigratedd.kernelfs import KernelFs
    from kmigratedd.queues import CandidateQueues
    from kmigratedd.samplers.base import SamplerFactory
    from kmigratedd.topology import Topology

    events: list[str] = []

    class Fake:
        def __init__(self, name, ctx):
            self.name, self.ctx = name, ctx

        async def start(self):
            events.append(f"start {self.name} demote_queues={self.ctx.demote_queues}")

        async def stop(self):
            events.append(f"stop {self.name}")

        def stats(self):
            return {"candidates_offered": 7}

    def factory(name, missing=None):
        return SamplerFactory(name, lambda c: missing, lambda c: Fake(name, c), name)

    monkeypatch.setitem(samplers.FACTORIES, "idle", factory("idle", "no page_idle"))
    monkeypatch.setitem(samplers.FACTORIES, "damon", factory("damon"))
    cfg = config.Config()
    topo = Topology(nodes={}, tiers=(), tier_source="kernel", targets={},
                    block_size_bytes=1 << 27, page_size=4096)
    e = Engine(cfg, KernelFs(tmp_path), topo, CandidateQueues([0], 64, 4096),
               spawn=lambda coro, name: asyncio.get_running_loop().create_task(coro),
               pool=lambda *a, **k: None)  # type: ignore[arg-type]
    e.sampler_context = lambda c: SimpleNamespace(demote_queues=object())  # type: ignore

    async def go(sampler: str, method: str, c: config.Config = cfg) -> object:
        events.clear()
        e.sampler, e.sweep = SimpleNamespace(name=sampler), None  # type: ignore[assignment]
        e.method = method
        await e._start_sweep(c)
        sweep = e.sweep
        await e.end_sweep(0, 1)
        return sweep

    assert asyncio.run(go("hint-faults", "kswapd")) is not None
    assert events == ["start damon demote_queues=None", "stop damon"] and e.sweep is None
    assert asyncio.run(go("hint-faults", "damon-paddr")) is None and events == []
    assert asyncio.run(go("damon", "sampler")) is None and events == []
    off = config.Config(sampler=config.SamplerConfig(startup_sweep_ms=0))
    assert asyncio.run(go("pebs", "kswapd", off)) is None and events == []


def test_a_thread_still_busy_at_exit_does_not_keep_the_process_alive() -> None:
    """Python joins the pools' threads at exit: a thread blocked in the kernel (a sampler
    round, a move_pages batch) would keep a stopped daemon alive until systemd killed it.
    exit_within ends the process with the daemon's exit status and names the thread."""
    code = ("import concurrent.futures, time\n"
            "from kmigratedd.threads import exit_within\n"
            "pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='stuck')\n"
            "pool.submit(time.sleep, 120)\n"
            "exit_within(0.5, 3)\n")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 3, res.stderr
    assert time.monotonic() - t0 < 30
    assert "1 thread(s) still busy" in res.stderr and "stuck_0" in res.stderr, res.stderr
