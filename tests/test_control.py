"""Control socket and kmigratedctl against a running daemon (host, nothing to promote
here: the daemon runs idle but serves status, pause, resume, reload and config)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "vm" / "guest"))
from daemonproc import DaemonProcess  # noqa: E402

CTL = str(Path(sys.executable).with_name("kmigratedctl"))


@pytest.fixture
def daemon(tmp_path: Path):
    sockdir = tmp_path / "run"
    sockdir.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(sockdir, 0o755)
    sock = sockdir / "control.sock"
    d = DaemonProcess(f"metrics:\n  port: 0\ncontrol:\n  socket_path: {sock}\n", tmp_path)
    d.wait_for("running (pid", 30)
    d.sock = sock  # type: ignore[attr-defined]
    yield d
    assert d.stop() == 0
    assert not sock.exists()


def rpc(sock: Path, payload: bytes, timeout: float = 10) -> list[dict]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(sock))
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return [json.loads(line) for line in buf.splitlines() if line.strip()]


def ctl(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    def drop() -> None:
        if user is not None:
            os.setgid(user)
            os.setuid(user)

    return subprocess.run([CTL, *args], capture_output=True, text=True, timeout=30,
                          preexec_fn=drop if user is not None else None)


def test_socket_is_root_only(daemon):
    st = daemon.sock.stat()
    assert oct(st.st_mode & 0o777) == "0o600" and st.st_uid == os.geteuid()


def test_status_pause_resume_reload_round_trip(daemon):
    s = str(daemon.sock)
    r = ctl("-s", s, "status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["state"] in ("idle", "promoting") and st["paused"] is False
    assert "0" in st["nodes"] and st["nodes"]["0"]["mem_total_bytes"] > 0
    assert ctl("-s", s, "pause").stdout.strip() == "paused: True"
    assert json.loads(ctl("-s", s, "status", "--json").stdout)["paused"] is True
    assert "[PAUSED]" in ctl("-s", s, "status").stdout
    assert ctl("-s", s, "resume").stdout.strip() == "paused: False"
    assert json.loads(ctl("-s", s, "status", "--json").stdout)["paused"] is False
    r = ctl("-s", s, "reload")
    assert r.returncode == 0 and "reloaded: True" in r.stdout
    daemon.config.write_text(daemon.config.read_text() + "log_level: loud\n")
    r = ctl("-s", s, "reload")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "log_level: must be one of" in r.stderr
    r = ctl("-s", s, "config")
    assert r.returncode == 0 and "log_level: info" in r.stdout  # still the running config


def test_human_status_output(daemon):
    r = ctl("-s", str(daemon.sock), "status")
    assert r.returncode == 0
    out = r.stdout
    assert out.startswith("kmigratedd ") and "sampler:" in out and "queues:" in out
    assert "node tier cpus" in out and "(rates over the last 5s)" in out


def test_status_says_why_it_is_idle_on_one_tier(daemon):
    """This host has one NUMA node: the status names the reason nothing is promoted."""
    st = json.loads(ctl("-s", str(daemon.sock), "status", "--json").stdout)
    assert st["state"] == "idle" and "one memory tier" in st["idle_reason"]
    assert "idle: one memory tier" in ctl("-s", str(daemon.sock), "status").stdout


def test_status_watch_refreshes(daemon):
    r = ctl("-s", str(daemon.sock), "status", "--watch", "0.2", "--count", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("every 0.2s, ") == 3
    assert r.stdout.count("kmigratedd ") >= 3 and "sampler:" in r.stdout
    bad = ctl("-s", str(daemon.sock), "status", "--watch", "0")
    assert bad.returncode == 2 and bad.stderr.strip().endswith("SECONDS must be > 0")


def test_top_says_why_it_is_idle_on_one_tier(daemon):
    r = ctl("-s", str(daemon.sock), "top", "--interval", "0.1")
    assert r.returncode == 0 and r.stdout.startswith("idle: one memory tier"), r.stderr
    j = json.loads(ctl("-s", str(daemon.sock), "top", "--json", "--interval", "0.1").stdout)
    assert j["processes"] == [] and j["cgroups"] == []
    bad = ctl("-s", str(daemon.sock), "top", "--interval", "0")
    assert bad.returncode == 2 and "must be > 0" in bad.stderr


def test_not_running_message(tmp_path):
    r = ctl("-s", str(tmp_path / "none.sock"), "status")
    assert r.returncode == 1
    assert r.stderr == f"kmigratedctl: kmigratedd is not running (no control socket at " \
                       f"{tmp_path / 'none.sock'})\n"
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on
    r = ctl("-s", str(stale), "status")
    assert r.returncode == 1 and "kmigratedd is not running (nothing listens" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_non_root_caller_is_refused(daemon):
    """kmigratedctl's main() in a forked child that dropped to nobody (the venv's
    interpreter under /root is not executable by nobody, so no exec)."""
    import io
    from contextlib import redirect_stderr

    from kmigratedd import ctl as ctl_mod

    for mode in (0o600, 0o666):  # the file mode, then SO_PEERCRED behind an open mode
        os.chmod(daemon.sock, mode)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            buf = io.StringIO()
            try:
                os.setgid(65534)
                os.setuid(65534)
                with redirect_stderr(buf):
                    rc = ctl_mod.main(["-s", str(daemon.sock), "status"])
            except BaseException as exc:  # noqa: BLE001
                rc, buf = 99, io.StringIO(repr(exc))
            os.write(w, json.dumps([rc, buf.getvalue()]).encode())
            os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        rc, err = json.loads(data)
        assert rc == 1, err
        assert err.startswith("kmigratedctl: permission denied"), err
        assert err.count("\n") == 1
    assert daemon.proc.poll() is None


def test_malformed_requests_get_errors_and_the_daemon_keeps_serving(daemon):
    sock = daemon.sock
    out = rpc(sock, b"this is not json\n")
    assert out[0]["error"]["code"] == -32700
    out = rpc(sock, b'{"jsonrpc": "2.0", "id": 3, "method": "explode"}\n')
    assert out[0]["id"] == 3 and out[0]["error"]["code"] == -32601
    out = rpc(sock, b'{"jsonrpc": "1.0", "id": 4, "method": "status"}\n')
    assert out[0]["error"]["code"] == -32600
    out = rpc(sock, b'{"jsonrpc": "2.0", "id": 5, "method": "status", "params": [1]}\n')
    assert out[0]["error"]["code"] == -32602
    out = rpc(sock, b'[1, 2]\n')
    assert out[0]["error"]["code"] == -32600
    # Several requests on one connection, answered in order.
    out = rpc(sock, b'{"jsonrpc":"2.0","id":1,"method":"pause"}\n'
                    b'{"jsonrpc":"2.0","id":2,"method":"resume"}\n')
    assert [o["id"] for o in out] == [1, 2] and out[1]["result"] == {"paused": False}
    # A huge line: an error, then the connection is closed.
    out = rpc(sock, b'{"jsonrpc":"2.0","id":1,"method":"' + b"x" * 200_000 + b'"}\n')
    assert out[0]["error"]["code"] == -32600 and "longer than" in out[0]["error"]["message"]
    # A slow client holding a half-written request does not block others.
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(str(sock))
    slow.sendall(b'{"jsonrpc": "2.0", "id": 9, ')
    t0 = time.monotonic()
    out = rpc(sock, b'{"jsonrpc":"2.0","id":10,"method":"status"}\n')
    assert out[0]["id"] == 10 and "result" in out[0] and time.monotonic() - t0 < 5
    slow.close()
    assert daemon.proc.poll() is None


@pytest.mark.skipif(shutil.which("nc") is None, reason="netcat-openbsd not installed")
def test_scriptable_with_nc(daemon):
    r = subprocess.run(["nc", "-U", "-N", str(daemon.sock)], capture_output=True, text=True,
                       input='{"jsonrpc":"2.0","id":1,"method":"status"}\n', timeout=30)
    reply = json.loads(r.stdout)
    assert reply["id"] == 1 and reply["result"]["pid"] == daemon.proc.pid


def test_second_daemon_refuses_a_live_socket(daemon, tmp_path):
    other = DaemonProcess(f"metrics:\n  port: 0\ncontrol:\n  socket_path: {daemon.sock}\n",
                          tmp_path / "..")
    rc = other.proc.wait(timeout=30)
    other.stop()
    assert rc == 2  # a start-up error: systemd's RestartPreventExitStatus=2 stops retrying
    assert any("another kmigratedd" in line for line in other.lines), other.lines
    assert daemon.sock.exists() and daemon.proc.poll() is None


def test_reload_refuses_keys_that_need_a_restart(daemon):
    """metrics.*, control.* and queues.* are built once at start: a reload that changes one
    is refused, naming the key, and the running config stays what it was."""
    s = str(daemon.sock)
    before = ctl("-s", s, "config").stdout
    text = daemon.config.read_text()
    assert "  port: 0\n" in text
    for new, key in ((text + "queues:\n  capacity_per_cpu: 1024\n", "queues.capacity_per_cpu"),
                     (text.replace("  port: 0\n", "  port: 0\n  listen_address: 127.0.0.2\n"),
                      "metrics.listen_address")):
        daemon.config.write_text(new)
        r = ctl("-s", s, "reload")
        assert r.returncode == 1 and f"{key}: changed" in r.stderr, (key, r.stderr)
        assert ctl("-s", s, "config").stdout == before
    daemon.config.write_text(text)
    assert ctl("-s", s, "reload").returncode == 0


def test_dry_run_from_the_command_line_holds_across_a_reload(tmp_path):
    """--dry-run overrides workers.dry_run of the file at start and at every reload."""
    sockdir = tmp_path / "run"
    sockdir.mkdir()
    os.chmod(tmp_path, 0o755)
    sock = sockdir / "control.sock"
    d = DaemonProcess(f"metrics:\n  port: 0\ncontrol:\n  socket_path: {sock}\n"
                      "workers:\n  dry_run: false\n", tmp_path, "--dry-run")
    try:
        d.wait_for("running (pid", 30)
        assert json.loads(ctl("-s", str(sock), "status", "--json").stdout)["dry_run"] is True
        r = ctl("-s", str(sock), "reload")
        assert r.returncode == 0, r.stderr
        assert json.loads(ctl("-s", str(sock), "status", "--json").stdout)["dry_run"] is True
        assert "dry_run: true" in ctl("-s", str(sock), "config").stdout
    finally:
        assert d.stop() == 0
