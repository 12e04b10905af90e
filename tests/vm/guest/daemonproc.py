"""Run kmigratedd as a user would (its console script, a config file) and read its
/metrics, inside the guest or on the host."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

KMIGRATEDD = str(Path(sys.executable).with_name("kmigratedd"))
# Bounds on how long a line may take to be logged (and a kmigratedctl call to answer), not
# timings: under TCG, with another guest and the host tests beside it, the interpreter's
# imports over 9p and the daemon's start are slow.
LOG_TIMEOUT_S = 180
START_TIMEOUT_S = 360


class DaemonProcess:
    def __init__(self, config_text: str | None, workdir: Path, *args: str,
                 echo: Callable[[str], None] | None = None) -> None:
        """``config_text`` None runs it with no --config (the embedded default).  Each
        log line goes to ``echo`` (default: our stderr, prefixed [kmigratedd])."""
        cmd = [KMIGRATEDD]
        # The control socket the config names, for kmigratedctl (default: its default).
        m = re.search(r"^\s*socket_path:\s*(\S+)", config_text or "", re.M)
        self.socket = m.group(1) if m else None
        if config_text is not None:
            self.config = workdir / "kmigratedd.yaml"
            self.config.write_text(config_text)
            cmd += ["--config", str(self.config)]
        self.proc = subprocess.Popen([*cmd, *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port: int | None = None
        self._echo = echo or (lambda line: sys.stderr.write(f"[kmigratedd] {line}\n"))
        self._cond = threading.Condition()
        self._eof = False
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self._echo(line)
            with self._cond:
                if "metrics on http://" in line:
                    self.port = int(line.rsplit(":", 1)[1].split("/")[0])
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_running(self) -> str:
        """The daemon's 'running (pid N)' line, once it has started."""
        return self.wait_for("running (pid", START_TIMEOUT_S)

    def wait_for(self, text: str, timeout: float = LOG_TIMEOUT_S) -> str:
        """The first line logged so far that contains ``text``, waiting for it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._cond.wait(left)
        raise AssertionError(f"{text!r} not logged:\n" + "\n".join(self.lines[-30:]))

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """One scrape.  The daemon runs at daemon.nice 10: on a guest whose vCPUs the
        workload and a filler keep busy, under TCG, rendering can take longer than a
        scraper's usual 10 s, so a scrape waits up to 30 s and is tried three times."""
        assert self.port is not None, "metrics endpoint not up"
        for attempt in range(3):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                            timeout=30) as r:
                    text = r.read().decode()
                break
            except OSError:  # TimeoutError, or URLError wrapping one
                if attempt == 2 or self.proc.poll() is not None:
                    raise
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric_sum(self, name: str, **labels: str) -> float:
        return metric_total(self.metrics(), name, **labels)

    def status(self) -> dict[str, Any]:
        """``kmigratedctl status --json``, through the daemon's control socket."""
        st: dict[str, Any] = json.loads(self.ctl("status", "--json"))
        return st

    def ctl(self, *args: str) -> str:
        """The output of ``kmigratedctl ARGS`` (the installed one, default socket)."""
        ctl = Path(self.proc.args[0]).with_name("kmigratedctl")
        sock = ["-s", self.socket] if self.socket else []
        r = subprocess.run([str(ctl), *sock, *args], capture_output=True, text=True,
                           timeout=LOG_TIMEOUT_S)
        assert r.returncode == 0, f"kmigratedctl {' '.join(args)}: {r.stderr.strip()}"
        return r.stdout

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` (a bound, not a timing: on a TCG guest
        whose CPUs the workloads saturate, the stop waits for CPU time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._t.join(timeout=5)
        return self.proc.returncode


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (OSError once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_total(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
                 **labels: str) -> float:
    """The sum of ``name``'s samples in a :meth:`DaemonProcess.metrics` snapshot whose labels
    include ``labels``."""
    return sum(v for (n, ls), v in metrics.items()
               if n == name and all(dict(ls).get(k) == val for k, val in labels.items()))
