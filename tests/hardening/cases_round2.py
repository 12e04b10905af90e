"""Reliability, round 2: a local user must not blind the daemon, and no signal, limit or
path loses state.  Run against the installed console scripts (and, for the periodic
task supervisor, the installed package in-process).

``CASES`` is a list of ``(name, before, run)``, as in cases_net.py: ``before`` is what
the daemon gave before this round, ``run()`` does it now and returns one line.
tests/test_hardening_round2.py asserts the safe outcomes; the runner prints the table.
Nothing here uses pytest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases_net import KMIGRATEDCTL, KMIGRATEDD, Daemon, rpc, running, tempdir  # noqa: E402

STATUS = b'{"jsonrpc":"2.0","id":1,"method":"status"}\n'


def _port(d: Daemon) -> int:
    line = d.wait_for("metrics on http://") or ""
    return int(re.search(r":(\d+)/metrics", line).group(1))  # type: ignore[union-attr]


def _scrape(port: int, timeout: float = 5) -> int | None:
    """The HTTP status of one GET /metrics, or None without an answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


def case_idle_metrics_connections() -> str:
    with tempdir() as tmp, running(tmp) as d:
        port = _port(d)
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
        try:
            time.sleep(0.5)
            codes = [_scrape(port) for _ in range(20)]
        finally:
            for s in held:
                s.close()
        metrics = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"],
                                 capture_output=True, text=True, timeout=30).stdout
        shed = re.search(r'kmigratedd_metrics_connections_total\{outcome="shed"\} (\d+)',
                         metrics)
        ok = sum(c == 200 for c in codes)
        return (f"{ok} of 20 scrapes answered 200; idle connections shed: "
                f"{'counted' if shed and int(shed.group(1)) >= 20 else 'NOT COUNTED'}")


def case_state_file_is_not_a_state_file() -> str:
    with tempdir() as tmp:
        conf_dir = tmp / "etc"
        conf_dir.mkdir(mode=0o755)
        cfg = conf_dir / "kmigratedd.yaml"
        text = (f"metrics:\n  port: 0\ncontrol:\n  socket_path: {tmp}/control.sock\n"
                f"sampler:\n  hint_faults:\n    state_file: {cfg}\n")
        cfg.write_text(text)
        check = subprocess.run([KMIGRATEDD, "--check-config", str(cfg)], capture_output=True,
                               text=True, timeout=60)
        start = subprocess.run([KMIGRATEDD, "--config", str(cfg)], capture_output=True,
                               text=True, timeout=60)
        intact = cfg.read_text() == text and not (conf_dir / "kmigratedd.yaml.corrupt").exists()
        err = start.stderr.strip().splitlines()[-1] if start.stderr.strip() else ""
        return (f"--check-config exit {check.returncode}, start exit {start.returncode}: "
                f"{err.replace(str(tmp), '$TMP')}; the file "
                f"{'intact' if intact else 'RENAMED OR CHANGED'}")


def case_periodic_task_fails() -> str:
    """The supervisor of the daemon's periodic tasks, in-process: a task that meets EMFILE
    once, then runs."""
    from kmigratedd.supervise import Failures, supervised

    failures = Failures()
    calls = {"n": 0}
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                records.append(record.getMessage())

    async def body() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(24, "Too many open files")
        await asyncio.sleep(0)

    handler = Keep()
    logging.getLogger("kmigratedd").addHandler(handler)
    try:
        t0 = time.monotonic()
        asyncio.run(supervised(body, "topology refresh", failures, first_backoff_s=0.2))
        took = time.monotonic() - t0
    finally:
        logging.getLogger("kmigratedd").removeHandler(handler)
    return (f"logged {len(records)} line(s) ({records[0][:60] if records else '-'}...), counted "
            f"{failures.total.get('topology refresh', 0)}, run again after {took:.1f}s")


def case_signals() -> str:
    with tempdir() as tmp:
        d = Daemon(tmp, tmp / "control.sock")
        if d.wait_for("running (pid") is None:
            return f"did not start: {d.last_error()}"
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
            d.proc.send_signal(sig)
            time.sleep(0.5)
        alive = d.proc.poll() is None
        logged = d.wait_for("SIGALRM ignored", 5) is not None and \
            sum("status:" in x for x in d.lines) >= 2
        rc = d.stop()
        gone = not (tmp / "control.sock").exists()
        return (f"{'still running' if alive else 'DIED'}; "
                f"{'status lines and the ignored signal logged' if logged else 'NOT LOGGED'}; "
                f"then SIGTERM: exit {rc}, socket {'removed' if gone else 'LEFT BEHIND'}")


def case_ctl_broken_pipe() -> str:
    with tempdir() as tmp, running(tmp):
        sock = tmp / "control.sock"
        out = []
        for cmd in (f"{KMIGRATEDCTL} -s {sock} status | head -1",
                    f"{KMIGRATEDCTL} -s {sock} config | true"):
            r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
            out.append("Traceback" in r.stderr or "BrokenPipe" in r.stderr)
        return "traceback" if any(out) else "quiet, no traceback"


def case_refused_reload() -> str:
    with tempdir() as tmp:
        cfg_extra = ""
        with running(tmp, cfg_extra) as d:
            cfg = tmp / "kmigratedd.yaml"
            cfg.write_text(cfg.read_text() + "workers:\n  batch_pages: -3\n")
            r = subprocess.run([KMIGRATEDCTL, "-s", str(tmp / "control.sock"), "reload"],
                               capture_output=True, text=True, timeout=60)
            time.sleep(0.5)
            errors = [x for x in d.lines if " ERROR " in x]
            tb = any("Traceback" in x for x in d.lines)
            raw, _ = rpc(tmp / "control.sock",
                         b'{"jsonrpc":"2.0","id":7,"method":"reload"}\n')
        code = json.loads(raw[0])["error"]["code"] if raw else None
        return (f"client exit {r.returncode}, code {code}; log: {len(errors)} ERROR line(s)"
                f"{', a traceback' if tb else ', no traceback'}")


class _FakeDaemon:
    """A control socket that answers every request with ``reply``."""

    def __init__(self, path: Path, reply: bytes) -> None:
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(4)
        self.reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            with c:
                c.recv(65536)
                c.sendall(self.reply + b"\n")

    def close(self) -> None:
        self.srv.close()


def case_malformed_replies() -> str:
    out = []
    with tempdir() as tmp:
        for i, (reply, cmd) in enumerate(((b"1", "status"), (b"[]", "status"),
                                          (b'{"jsonrpc":"2.0","id":1}', "status"),
                                          (b'{"jsonrpc":"2.0","id":1,"result":null}', "config"),
                                          (b'{"jsonrpc":"2.0","id":1,"result":{}}', "status"))):
            path = tmp / f"s{i}.sock"
            fake = _FakeDaemon(path, reply)
            try:
                r = subprocess.run([KMIGRATEDCTL, "-s", str(path), cmd], capture_output=True,
                                   text=True, timeout=30)
            finally:
                fake.close()
            lines = r.stderr.strip().splitlines()
            out.append(r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr
                       and not r.stdout)
    return f"{sum(out)} of {len(out)} give one line and a non-zero exit"


def _limited(limit: Callable[[], None], extra: str = "") -> str:
    with tempdir() as tmp:
        cfg = tmp / "kmigratedd.yaml"
        cfg.write_text(f"metrics:\n  port: 0\ncontrol:\n  socket_path: {tmp}/control.sock\n"
                       + extra)
        r = subprocess.run([KMIGRATEDD, "--config", str(cfg)], capture_output=True, text=True,
                           timeout=120, preexec_fn=limit)
        lines = [x for x in r.stderr.strip().splitlines() if x]
        tb = "Traceback" in r.stderr
        last = lines[-1].replace(str(tmp), "$TMP") if lines else "(nothing)"
        return (f"exit {r.returncode}, {'a TRACEBACK' if tb else 'no traceback'}: "
                f"{re.sub(r' is [0-9]+', ' is N', last)[:140]}")


def case_nofile_limit() -> str:
    return _limited(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12)))


def case_unallocatable_queues() -> str:
    return _limited(lambda: resource.setrlimit(resource.RLIMIT_AS, (700 << 20, 700 << 20)),
                    "queues:\n  capacity_per_cpu: 16777216\n")


def case_bad_paths_checked() -> str:
    out = []
    with tempdir() as tmp:
        shared = tmp / "shared"
        shared.mkdir()
        os.chmod(shared, 0o770)
        for name, extra in (("socket under /proc",
                             "control:\n  socket_path: /proc/kmigratedd.sock\n"),
                            ("group-writable state dir",
                             f"sampler:\n  hint_faults:\n    state_file: {shared}/s.json\n")):
            cfg = tmp / "c.yaml"
            cfg.write_text("metrics:\n  port: 0\n" + extra)
            r = subprocess.run([KMIGRATEDD, "--check-config", str(cfg)], capture_output=True,
                               text=True, timeout=60)
            out.append(f"{name}: --check-config exit {r.returncode}")
    return "; ".join(out)


def case_non_root_start() -> str:
    with tempdir() as tmp:
        cfg = tmp / "c.yaml"
        cfg.write_text(f"metrics:\n  port: 0\ncontrol:\n  socket_path: {tmp}/control.sock\n")
        os.chmod(cfg, 0o644)
        # Imported as root (the venv lives under /root, which nobody may not read), then
        # run as nobody, as a user who starts the installed command would.
        code = ("import os, sys, locale, gettext, encodings.idna; "
                "from kmigratedd.cli import main; from kmigratedd import daemon; "
                "os.setgroups([]); os.setgid(65534); os.setuid(65534); "
                "sys.exit(main(sys.argv[1:]))")
        r = subprocess.run([sys.executable, "-c", code, "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        line = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "(nothing)"
        return f"exit {r.returncode}: {line[:110]}"


def case_duplicate_method_keys() -> str:
    with tempdir() as tmp, running(tmp):
        sock = tmp / "control.sock"
        out, _ = rpc(sock, b'{"jsonrpc":"2.0","id":1,"method":"pause","method":"status"}\n'
                           b'{"jsonrpc":"2.0","id":2,"method":"status","method":"pause"}\n')
        note, _ = rpc(sock, b'{"jsonrpc":"2.0","method":"status"}\n', timeout=5)
        st, _ = rpc(sock, STATUS)
        paused = json.loads(st[0])["result"]["paused"] if st else None
        codes = [json.loads(x).get("error", {}).get("code") for x in out]
        return (f"duplicate keys: errors {codes}, paused {paused}; a notification: "
                f"{len(note)} repl{'y' if len(note) == 1 else 'ies'}")


def case_socket_deleted() -> str:
    with tempdir() as tmp, running(tmp) as first:
        (tmp / "control.sock").unlink()
        second = Daemon(tmp, tmp / "control.sock")
        rc = second.exit_code(30)
        if rc is None:
            second.stop()
            return "a SECOND DAEMON started on the same path"
        msg = second.last_error().replace(str(tmp), "$TMP")
        msg = msg.replace(str(first.proc.pid), "PID")
        return f"the second exits {rc}: {msg[:150]}"


def case_idle_blank_lines() -> str:
    with tempdir() as tmp, running(tmp):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(tmp / "control.sock"))
        t0 = time.monotonic()
        closed_after = None
        try:
            while time.monotonic() - t0 < 60:
                s.sendall(b"\n")
                time.sleep(1)
        except OSError:
            closed_after = time.monotonic() - t0
        s.close()
        return (f"closed after {closed_after:.0f}s" if closed_after is not None
                else "held for 60 s and more")


def case_metrics_port_in_use() -> str:
    with tempdir() as tmp, running(tmp) as first:
        port = _port(first)
        other = tmp / "second"
        other.mkdir()
        cfg = other / "c.yaml"
        cfg.write_text(f"metrics:\n  port: {port}\ncontrol:\n  socket_path: {other}/c.sock\n")
        r = subprocess.run([KMIGRATEDD, "--config", str(cfg)], capture_output=True, text=True,
                           timeout=60)
        lines = [x for x in r.stderr.strip().splitlines() if x]
        sampler = any("sampler" in x for x in lines)
        last = lines[-1].replace(str(port), "PORT") if lines else "(nothing)"
        return (f"exit {r.returncode}: {last[:120]}; "
                f"{'sampler STARTED' if sampler else 'nothing started'}")


CASES: list[tuple[str, str, Callable[[], str]]] = [
    ("64 idle TCP connections held to the metrics port, 20 scrapes",
     "0 of 20 scrapes answered; nothing logged or counted", case_idle_metrics_connections),
    ("sampler.hint_faults.state_file names the config file itself",
     "renamed to .corrupt at every start; --check-config accepts it",
     case_state_file_is_not_a_state_file),
    ("EMFILE once in a periodic task",
     "the task dies for good, logged as 'Task exception was never retrieved'",
     case_periodic_task_fails),
    ("SIGUSR1, SIGUSR2, SIGALRM", "dies at once: no log, socket left behind", case_signals),
    ("kmigratedctl status | head -1, kmigratedctl config | true", "BrokenPipeError traceback",
     case_ctl_broken_pipe),
    ("kmigratedctl reload of a bad config",
     "ERROR twice and a traceback in the log; the client gets -32603", case_refused_reload),
    ("malformed replies to kmigratedctl (1, [], no result, null config, {} status)",
     "TypeError/KeyError tracebacks; a null config printed as the running one, exit 0",
     case_malformed_replies),
    ("RLIMIT_NOFILE 12", "chained tracebacks", case_nofile_limit),
    ("queues.capacity_per_cpu that cannot be allocated (RLIMIT_AS 700 MiB)",
     "an unhandled MemoryError", case_unallocatable_queues),
    ("control socket under /proc; a group-writable state directory",
     "--check-config passes; start exits 1 with a raw error", case_bad_paths_checked),
    ("a non-root start", "exit 1: [Errno 13] Permission denied, no path", case_non_root_start),
    ("a JSON-RPC request with two method keys; a notification",
     "the last key wins (a status request paused the daemon); notifications get a reply",
     case_duplicate_method_keys),
    ("the control socket deleted while the daemon runs, then a second start",
     "a second daemon starts on the same path", case_socket_deleted),
    ("blank lines sent on an idle control connection", "the 30 s idle time-out never fires",
     case_idle_blank_lines),
    ("a second daemon with the same metrics port",
     "exit 1 with a raw EADDRINUSE, after it started its sampler", case_metrics_port_in_use),
]


if __name__ == "__main__":
    for name, before, run in CASES:
        print(f"{name} | {before} | {run()}", flush=True)
