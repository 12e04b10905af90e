"""Every input of tests/hardening/cases_config.py, against the installed ``kmigratedd``:
exit 2 and one stderr line that names the problem; and a reload of such an input keeps the
running config and ends with READY=1."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("cases_config", HERE / "hardening" /
                                               "cases_config.py")
assert _spec is not None and _spec.loader is not None
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

KMIGRATEDD = str(Path(sys.executable).with_name("kmigratedd"))


@pytest.mark.parametrize("name,before,run", cases.CASES, ids=[c[0] for c in cases.CASES])
def test_case_exits_2_with_one_line(name, before, run, hardening_row):
    now = run()
    hardening_row(name, before, now)
    assert now.startswith("exit 2: kmigratedd: "), now
    assert "more lines" not in now, now
    assert cases.EXPECT[name] in now, now
    assert len(now) < 200, now


def test_every_case_has_an_expectation():
    assert set(cases.EXPECT) == {c[0] for c in cases.CASES}


def test_start_refuses_before_side_effects(tmp_path):
    """Start checks the same things as --check-config: exit 2, one line, no socket made."""
    sock = tmp_path / "control.sock"
    cfg = tmp_path / "k.yaml"
    cfg.write_text(f"metrics:\n  port: 0\ncontrol:\n  socket_path: {sock}\n"
                   "  group: kmigratedd-no-such-group\n")
    r = subprocess.run([KMIGRATEDD, "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"kmigratedd: {cfg}: control.group: no group named "
                        "'kmigratedd-no-such-group'\n")
    assert not sock.exists()


# Inputs a reload must refuse as --check-config does, each with the key it names.
RELOAD_BAD = [
    ("workers:\n  max_wait_ms: .inf\n", "workers.max_wait_ms: must be <= 60000 ms, got inf"),
    ("workers:\n  max_wait_ms: .nan\n", "workers.max_wait_ms: must be a number, got nan"),
    ("workers:\n  rate_limit_mb_per_s: .nan\n", "workers.rate_limit_mb_per_s: must be a number"),
    ("workers:\n  batch_pages: " + "9" * 400 + "\n", "workers.batch_pages: must be <= 65536"),
    ("? [a, b]\n: 1\n", "<document>: keys must be strings, got a list"),
    (cases.nested(300), "nested more than 64 deep"),
    (cases.alias_bomb(9), "more than 100000 nodes once aliases are expanded"),
    (f"topology:\n  tiers: [[0], [{cases.OFFLINE_NODE}]]\n",
     f"topology.tiers: node {cases.OFFLINE_NODE} is not online"),
]


class Notified:
    """A NOTIFY_SOCKET that collects the daemon's sd_notify datagrams."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.5)
        self.got: list[str] = []

    def wait_for(self, text: str, after: int = 0, timeout: float = 30) -> int:
        """Index of the first datagram from ``after`` on that contains ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.got)):
                if text in self.got[i]:
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after #{after}: {self.got}")
            try:
                self.got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass


def test_reload_refuses_the_same_inputs_and_always_ends_ready(tmp_path):
    notify = Notified(tmp_path / "notify.sock")
    cfg = tmp_path / "k.yaml"
    good = f"metrics:\n  port: 0\ncontrol:\n  socket_path: {tmp_path / 'control.sock'}\n"
    cfg.write_text(good)
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([KMIGRATEDD, "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                stderr=err, env=dict(os.environ, NOTIFY_SOCKET=str(notify.path)))
    try:
        at = notify.wait_for("READY=1")
        for text, expect in RELOAD_BAD:
            cfg.write_text(good + text)
            proc.send_signal(signal.SIGHUP)
            at = notify.wait_for("RELOADING=1", at + 1)
            at = notify.wait_for("READY=1", at + 1)
            lines = log.read_text().splitlines()
            rejected = [ln for ln in lines if "reload rejected" in ln]
            assert rejected and expect in rejected[-1], (expect, lines[-3:])
            assert f"{cfg}: " in rejected[-1]
            assert proc.poll() is None
            assert not any("Traceback" in ln for ln in lines), lines
        # A FIFO in place of the file: refused at once, no hang, READY=1 again.
        cfg.unlink()
        os.mkfifo(cfg)
        proc.send_signal(signal.SIGHUP)
        at = notify.wait_for("RELOADING=1", at + 1)
        at = notify.wait_for("READY=1", at + 1)
        assert "not a regular file (a FIFO)" in log.read_text().splitlines()[-1]
        # Still running on the first config: a good reload applies.
        cfg.unlink()
        cfg.write_text(good + "log_level: debug\n")
        proc.send_signal(signal.SIGHUP)
        at = notify.wait_for("RELOADING=1", at + 1)
        notify.wait_for("READY=1", at + 1)
        assert "config reloaded from" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.sock.close()


def test_ctl_config_prints_yaml_that_loads_back_with_promotion_targets(tmp_path):
    """``kmigratedctl config`` of a daemon with topology.promotion_targets: JSON turns the
    node ids into strings; the printed YAML is the running config again."""
    import json
    import threading

    from kmigratedd import config

    running = config.parse("topology:\n  promotion_targets: {1: 0, 3: 2}\n"
                           "workers:\n  rate_limit_mb_per_s: 1.5GB/s\n", "running")
    path = tmp_path / "control.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(30)

    def answer() -> None:  # the daemon's side of one JSON-RPC "config" call
        conn, _ = srv.accept()
        with conn:
            request = json.loads(conn.makefile().readline())
            assert request["method"] == "config"
            conn.sendall((json.dumps({"jsonrpc": "2.0", "id": request["id"],
                                      "result": running.to_dict()}) + "\n").encode())

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        r = subprocess.run([str(Path(sys.executable).with_name("kmigratedctl")), "-s",
                            str(path), "config"], capture_output=True, text=True, timeout=60)
    finally:
        t.join(timeout=30)
        srv.close()
    assert r.returncode == 0, r.stderr
    assert config.parse(r.stdout, "printed") == running
    assert "promotion_targets:\n    1: 0\n    3: 2\n" in r.stdout
