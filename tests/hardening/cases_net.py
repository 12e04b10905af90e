"""Network and control-socket hardening cases, run against the installed console scripts.

``CASES`` is a list of ``(name, before, run)``: what the input is, what kmigratedd gave
before the hardening, and a function that runs the case now (in a temp dir, with short
time-outs) and returns one line saying what it gives.  The runner that prints the table
imports this file by path; tests/test_hardening_net.py asserts the safe outcomes.
Nothing here uses pytest.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
KMIGRATEDD = str(BIN / "kmigratedd")
KMIGRATEDCTL = str(BIN / "kmigratedctl")
REPO = Path(__file__).resolve().parents[2]


class Daemon:
    """kmigratedd with a config in ``tmp``; stderr collected by a thread."""

    def __init__(self, tmp: Path, sock: Path, extra: str = "") -> None:
        cfg = tmp / "kmigratedd.yaml"
        cfg.write_text(f"metrics:\n  port: 0\ncontrol:\n  socket_path: {sock}\n{extra}")
        self.proc = subprocess.Popen([KMIGRATEDD, "--config", str(cfg)], text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 30) -> str | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reading()):
                    return None
                self._cond.wait(min(left, 0.2))

    def _reading(self) -> bool:
        return self.proc.stderr is not None and not self.proc.stderr.closed and \
            self.proc.poll() is None

    def exit_code(self, timeout: float = 30) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def last_error(self) -> str:
        time.sleep(0.2)
        lines = [x for x in self.lines if x.startswith("kmigratedd: ")]
        return lines[-1] if lines else (self.lines[-1] if self.lines else "(nothing logged)")


@contextmanager
def tempdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kmh-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


@contextmanager
def running(tmp: Path, extra: str = "") -> Iterator[Daemon]:
    sock = tmp / "control.sock"
    d = Daemon(tmp, sock, extra)
    try:
        if d.wait_for("running (pid") is None:
            raise RuntimeError(f"kmigratedd did not start: {d.last_error()}")
        yield d
    finally:
        d.stop()


def _refused_path(make: Callable[[Path], None], what: str) -> str:
    """Start kmigratedd with ``make(socket path)`` done first; ``tmp/f`` holds "x"."""
    with tempdir() as tmp:
        target = tmp / "f"
        target.write_text("x\n")
        sock = tmp / "control.sock"
        make(sock)
        d = Daemon(tmp, sock)
        rc = d.exit_code(30)
        if rc is None:
            d.stop()
        intact = target.read_text() == "x\n" and not sock.is_socket() and \
            (sock.is_symlink() or sock.read_text() == "x\n")
        state = f"{what} {'intact' if intact else 'REPLACED by a socket'}"
        if rc is None:
            return f"started and kept running; {state}"
        return f"exit {rc}: {d.last_error()}; {state}".replace(str(tmp), "$TMP")


def case_regular_file() -> str:
    return _refused_path(lambda p: p.write_text("x\n"), "file")


def case_symlink() -> str:
    return _refused_path(lambda p: p.symlink_to(p.parent / "f"), "symlink and target")


def case_shutdown_keeps_a_replacement() -> str:
    with tempdir() as tmp:
        with running(tmp) as d:
            sock = tmp / "control.sock"
            sock.unlink()
            sock.write_text("not ours\n")
            rc = d.stop()
        kept = sock.exists() and sock.read_text() == "not ours\n"
        return f"exit {rc}; the file put in its place is {'kept' if kept else 'DELETED'}"


def case_trickled_metrics_headers() -> str:
    with tempdir() as tmp, running(tmp) as d:
        line = d.wait_for("metrics on http://") or ""
        port = int(re.search(r":(\d+)/metrics", line).group(1))  # type: ignore[union-attr]
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.settimeout(None)  # blocking: MSG_DONTWAIT polls
        t0 = time.monotonic()
        s.sendall(b"GET /metrics HTTP/1.0\r\n")
        held = 0.0
        try:
            while time.monotonic() - t0 < 40:
                s.sendall(b"X-Slow: 1\r\n")  # one header line every half second
                try:
                    if s.recv(1, socket.MSG_DONTWAIT) == b"":
                        break
                except BlockingIOError:
                    pass
                time.sleep(0.5)
        except OSError:
            pass
        held = time.monotonic() - t0
        s.close()
        return f"connection closed after {held:.1f}s" if held < 40 else "held for 40s and more"


def rpc(sock: Path, payload: bytes, timeout: float = 15,
        half_close: bool = True) -> tuple[list[str], float]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(sock))
    t0 = time.monotonic()
    try:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    except OSError as exc:
        return [f"{type(exc).__name__}: {exc}"], time.monotonic() - t0
    finally:
        s.close()
    return buf.decode(errors="replace").splitlines(), time.monotonic() - t0


def _reply(line: str) -> str:
    try:
        err = json.loads(line)["error"]
        return f"JSON-RPC error {err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return line[:120]


def case_deep_json() -> str:
    with tempdir() as tmp, running(tmp) as d:
        out, _ = rpc(tmp / "control.sock", b"[" * 60_000 + b"\n")
        alive, _ = rpc(tmp / "control.sock", b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
        tb = any("RecursionError" in x or "Traceback" in x for x in d.lines)
        return (f"{_reply(out[0]) if out else 'no reply'}; daemon "
                f"{'answers' if alive and 'result' in alive[0] else 'DOES NOT ANSWER'}"
                f"{'; TRACEBACK IN LOG' if tb else ''}")


def case_half_request() -> str:
    with tempdir() as tmp, running(tmp):
        out, took = rpc(tmp / "control.sock", b'{"jsonrpc": "2.0", "id": 9, ', timeout=45,
                        half_close=False)
        return f"{_reply(out[0]) if out else 'closed'} after {took:.1f}s"


def _group_peer(gid_of: Callable[[int], tuple[int, list[int]]]) -> str:
    """kmigratedctl status as uid 65534 with the primary gid and supplementary groups
    ``gid_of(socket_gid)``.  The venv lives where nobody may not exec it, so a root python
    imports the installed kmigratedd.ctl, drops to the user, then runs its main()."""
    import grp

    if os.geteuid() != 0:
        return "skipped: needs root"
    try:
        group = grp.getgrnam("users")
    except KeyError:
        return "skipped: no group 'users'"
    primary, extra = gid_of(group.gr_gid)
    with tempdir() as tmp:
        (tmp / "run").mkdir()
        os.chmod(tmp / "run", 0o755)
        d = Daemon(tmp, tmp / "run" / "control.sock", "  group: users\n")
        try:
            if d.wait_for("running (pid") is None:
                return f"daemon did not start: {d.last_error()}"
            child = (
                "import os, sys\n"
                "from kmigratedd import ctl\n"
                f"os.setgroups({extra!r}); os.setgid({primary}); os.setuid(65534)\n"
                f"sys.exit(ctl.main(['-s', {str(tmp / 'run' / 'control.sock')!r}, 'status']))\n")
            r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                               timeout=30)
        finally:
            d.stop()
    if r.returncode == 0:
        return "allowed: status answered"
    return f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1] if r.stderr else ''}" \
        .replace(str(tmp), "$TMP")


def case_supplementary_group() -> str:
    return _group_peer(lambda gid: (65534, [gid]))


def case_not_in_group() -> str:
    return _group_peer(lambda gid: (65534, []))


LONG = "/tmp/" + "d" * 60 + "/" + "s" * 60 + ".sock"


def case_long_path_daemon() -> str:
    with tempdir() as tmp:
        d = Daemon(tmp, Path(LONG))
        rc = d.exit_code(30)
        if rc is None:
            d.stop()
            return "started"
        return f"exit {rc}: {d.last_error()}"


def case_long_path_ctl() -> str:
    r = subprocess.run([KMIGRATEDCTL, "-s", LONG, "status"], capture_output=True, text=True,
                       timeout=30)
    return f"exit {r.returncode}: {r.stderr.strip()}"


def case_ctl_version() -> str:
    r = subprocess.run([KMIGRATEDCTL, "--version"], capture_output=True, text=True, timeout=30)
    return f"exit {r.returncode}: {(r.stdout or r.stderr).strip().splitlines()[-1]}"


def case_ctl_help() -> str:
    r = subprocess.run([KMIGRATEDCTL, "--help"], capture_output=True, text=True, timeout=30)
    n = r.stdout.count("``")
    first = r.stdout.split("\n\n")[1].strip() if "\n\n" in r.stdout else ""
    return f"exit {r.returncode}: {n} double backticks; description {first!r}"


def case_k8s_metrics_exposure() -> str:
    import yaml

    k8s = REPO / "deploy" / "kubernetes"
    kust = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    docs = [doc for name in kust["resources"]
            for doc in yaml.safe_load_all((k8s / name).read_text()) if doc]
    pols = [d for d in docs if d["kind"] == "NetworkPolicy"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    listen = yaml.safe_load(cm["data"]["kmigratedd.yaml"])["metrics"]["listen_address"]
    if not pols:
        return f"metrics on {listen}, no NetworkPolicy"
    out = []
    for p in pols:
        for rule in p["spec"]["ingress"]:
            ports = ",".join(f"{x['protocol']}/{x['port']}" for x in rule["ports"])
            peers = "; ".join(" and ".join(
                f"{k.replace('Selector', '')} {v['matchLabels']}" for k, v in peer.items())
                for peer in rule["from"])
            out.append(f"{p['metadata']['name']}: {ports} only from {peers}")
    return f"metrics on {listen}; NetworkPolicy " + " | ".join(out)


CASES: list[tuple[str, str, Callable[[], str]]] = [
    ("control.socket_path is an existing regular file",
     "THE FILE IS DELETED and replaced by the socket", case_regular_file),
    ("control.socket_path is a symlink to a regular file",
     "not in the report: the old check followed the symlink and removed it",
     case_symlink),
    ("a file put at the socket path while running, then SIGTERM",
     "not in the report: shutdown unlinked whatever was at the path",
     case_shutdown_keeps_a_replacement),
    ("/metrics request whose headers trickle in (one line every 0.5 s)",
     "held a connection for 25 s and more", case_trickled_metrics_headers),
    ("60,000 '[' on the control socket",
     "RecursionError in the log and no JSON-RPC error", case_deep_json),
    ("control socket: half a request, then silence",
     "not in the report: held until the 30 s idle time-out", case_half_request),
    ("kmigratedctl status from a peer in control.group only as a supplementary group",
     "passes the file mode, is refused by the peer check, and sees \"Broken pipe\"",
     case_supplementary_group),
    ("kmigratedctl status from a peer not in control.group (mode 0660 refuses it)",
     "not in the report: the file mode refuses it", case_not_in_group),
    ("control.socket_path longer than 108 bytes (daemon)", "prints `…: None`",
     case_long_path_daemon),
    ("kmigratedctl -s PATH longer than 108 bytes", "prints `…: None`", case_long_path_ctl),
    ("kmigratedctl --version", "there is no --version", case_ctl_version),
    ("kmigratedctl --help", "shows a literal ``kmigratedctl``", case_ctl_help),
    ("Kubernetes manifests: who can reach /metrics",
     "metrics on 0.0.0.0 with no NetworkPolicy", case_k8s_metrics_exposure),
]


if __name__ == "__main__":
    for name, before, run in CASES:
        print(f"{name} | {before} | {run()}", flush=True)
