"""The operator-facing deploy artifacts against a promoting kmigratedd in the tiered guest.

``test_dashboard_queries_against_real_prometheus``: kmigratedd (hint-faults)
promotes a 64 MiB hot set from node 1 to node 0 while a real Prometheus
(/usr/bin/prometheus, 2 s scrapes, deploy/prometheus/kmigratedd-rules.yml
loaded) scrapes it: the daemon is paused (kmigratedctl's "pause") until
Prometheus has scraped it ten times, then resumed.  Every PromQL expression of
every panel of deploy/grafana/kmigratedd.json then goes through /api/v1/query,
evaluated at the first scrape that saw the final promoted count (so every
[$__rate_interval] window holds promotion), with the template variables
filled in the way Grafana does it, for two selections: every node ("All") and
the fast node only.  Each must parse and return at least one series, and the
panels about promotion must show it (rates > 0, finite batch and latency
quantiles).  The dashboard's variable queries (label_values) must return the
target and both nodes, and every alert rule must evaluate without error.  The
table of panel queries, series counts and values is printed (run with -s).

``test_unit_under_systemd``: deploy/kmigratedd.service, hardening and all,
runs under a real systemd (PID 1 of a fresh pid + mount namespace: the guest's
own init is busybox) and promotes the same kind of hot set: Type=notify
readiness, the capability bounding set, seccomp and no_new_privs in force,
the numa_balancing sysctls written through ProtectKernelTunables' carve-outs and
saved in the StateDirectory, reload by SIGHUP, the control socket in the
RuntimeDirectory, Restart=on-failure after SIGKILL with the sysctls restored
from the state file, and a clean stop that puts them back.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy" / "grafana" / "kmigratedd.json"
RULES = REPO / "deploy" / "prometheus" / "kmigratedd-rules.yml"
UNIT = REPO / "deploy" / "kmigratedd.service"
PROMETHEUS = "/usr/bin/prometheus"
KERNEL = os.environ.get("KMIGRATEDD_VM_KERNEL", "")
HOT_MIB = COLD_MIB = 64
FILL_TO_MIB = 700  # node 0 free memory: below the kernel's own promotion threshold
BOUND_S = float(os.environ.get("KMIGRATEDD_E2E_BOUND_S", "180"))
RATE_INTERVAL = "30s"  # a $__rate_interval that holds several 2 s scrapes, some may fail


# --- helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout: float = 30) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def grafana_regex(values: list[str]) -> str:
    """A multi-value/All variable as Grafana's Prometheus data source writes it into a
    query: each value regex-escaped (backslashes doubled for the PromQL string), joined
    with | in parentheses."""
    esc = [re.sub(r"([\\$^*{}\[\]'+?.()|])", r"\\\\\1", v) for v in values]
    return "(" + "|".join(esc) + ")"


def series_summary(result: list[dict[str, Any]], limit: int = 6) -> str:
    """`{node=0,reason=moved}=12.5; ...` for the table (instance/job left out)."""
    parts = []
    for r in result[:limit]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())
                          if k not in ("instance", "job"))
        value = float(r["value"][1])
        parts.append(f"{{{labels}}}={value:.4g}")
    more = f"; +{len(result) - limit} more" if len(result) > limit else ""
    return "; ".join(parts) + more


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every target of every panel, rows included."""
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((p["title"], t.get("refId", ""), t["expr"]))

    walk(dashboard["panels"])
    return out


class Prometheus:
    def __init__(self, workdir: Path, target: str, rules: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / "prometheus.yml"
        cfg.write_text(json.dumps({  # JSON is YAML
            # 2 s: under TCG a render by the daemon (nice 10) on a busy guest can outlast
            # 1 s, and a [rate_interval] window needs two scrapes that succeeded.
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s",
                       "scrape_timeout": "2s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "kmigratedd",
                                "static_configs": [{"targets": [target]}]}],
        }))
        self.log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited: " + self.log_tail()
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("prometheus not ready: " + self.log_tail())

    def log_tail(self) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text().splitlines()[-20:])

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query (now, or at Unix time ``at``); raises AssertionError with
        Prometheus' error text on failure."""
        args = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode(args)
        try:
            body = http_json(url)
        except urllib.error.HTTPError as exc:  # 400/422: bad expression
            body = json.loads(exc.read().decode() or "{}")
        if body.get("status") != "success":
            raise AssertionError(f"{body.get('errorType')}: {body.get('error')}\n{expr}")
        assert body["data"]["resultType"] == "vector", body["data"]["resultType"]
        return body["data"]["result"]

    def query_range(self, expr: str, start: float, end: float) -> list[tuple[float, float]]:
        """The one series of ``expr`` at 1 s steps, as (time, value)."""
        url = self.url + "/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"})
        result = http_json(url)["data"]["result"]
        assert len(result) == 1, result
        return [(float(t), float(v)) for t, v in result[0]["values"]]

    def value(self, expr: str) -> float:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else 0.0

    def label_values(self, label: str, match: str) -> list[str]:
        url = (self.url + f"/api/v1/label/{label}/values?"
               + urllib.parse.urlencode({"match[]": match}))
        return list(http_json(url)["data"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def daemon_config(tmp: Path) -> str:
    return f"""
log_level: info
sampler:
  name: hint-faults
  interval_ms: 250
  hint_faults:
    state_file: {tmp}/sysctl-state.json
workers:
  rate_limit_mb_per_s: 0
  min_free_bytes: 64MiB
  resume_free_bytes: 96MiB
metrics:
  port: 0
control:
  socket_path: {tmp}/control.sock
"""


# --- the dashboard against a real Prometheus ------------------------------------------------


def test_dashboard_queries_against_real_prometheus(tmp_path: Path) -> None:
    import pytest

    if KERNEL != "debian-6.12":
        pytest.skip("hint faults (the sampler that needs no PMU) are tested on Debian 6.12")
    from daemonproc import DaemonProcess
    from workload import Workload, fill_node

    from kmigratedd.ctl import call

    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard)
    assert queries
    filler = fill_node(0, FILL_TO_MIB)
    prom: Prometheus | None = None
    try:
        with Workload(HOT_MIB, COLD_MIB, node=1) as w:
            assert w.fraction_on(w.hot, 1) == 1.0
            d = DaemonProcess(daemon_config(tmp_path), tmp_path)
            try:
                d.wait_running()
                assert d.port, "metrics port not logged"
                # Hold promotion until Prometheus watches, so that the whole of it is
                # in the TSDB (and kmigratedctl pause/resume works on the way).
                assert call(str(tmp_path / "control.sock"), "pause") == {"paused": True}
                target = f"127.0.0.1:{d.port}"
                sel = f'{{instance="{target}"}}'
                prom = Prometheus(tmp_path, target, RULES)
                prom.wait_ready()
                t0 = time.monotonic()
                # Ten scrapes that succeeded (up == 1): under TCG on a loaded host a
                # scrape can outlast its 2 s timeout, and a failed one marks the series
                # stale, so the paused gauge is read as its last scraped value.
                while prom.value(f"sum_over_time(up{sel}[1m])") < 10:
                    assert time.monotonic() - t0 < 120, "prometheus does not scrape"
                    time.sleep(1)
                assert prom.value(f"last_over_time(kmigratedd_paused{sel}[1m])") == 1
                assert call(str(tmp_path / "control.sock"), "resume") == {"paused": False}
                t_resume = time.time()
                t0 = time.monotonic()
                while True:
                    assert d.proc.poll() is None, "the daemon died"
                    hot0 = w.fraction_on(w.hot, 0)
                    if hot0 >= 0.9:
                        break
                    assert time.monotonic() - t0 < BOUND_S, f"hot on node 0: {hot0:.2f}"
                    time.sleep(1)
                t_promoted = time.monotonic() - t0
                time.sleep(8)  # a few more scrapes
                # Evaluate at the first scrape that saw the final count: the promotion
                # is inside every [$__rate_interval] window then.
                total = f"sum(kmigratedd_promoted_pages_total{sel})"
                series = prom.query_range(total, t_resume, time.time())
                final = max(v for _, v in series)
                at = min(t for t, v in series if v == final)
                print(f"\npromotion: {hot0:.0%} of the hot set on node 0 "
                      f"{t_promoted:.0f}s after resume; {final:.0f} pages promoted; "
                      f"queries evaluated at resume + {at - t_resume:.0f}s")
                assert final > 0

                # The dashboard's variable queries, as Grafana runs them.
                templ = {v["name"]: v for v in dashboard["templating"]["list"]}
                m = re.fullmatch(r"label_values\((.*), *(\w+)\)",
                                 templ["instance"]["definition"])
                assert m and m.group(2) == "instance"
                instances = prom.label_values("instance", m.group(1))
                assert target in instances, instances
                inst = grafana_regex([target])
                m = re.fullmatch(r"label_values\((.*), *(\w+)\)", templ["node"]["definition"])
                assert m and m.group(2) == "node"
                nodes = prom.label_values("node", substitute(m.group(1), {"instance": inst}))
                assert sorted(nodes) == ["0", "1"], nodes

                selections = {
                    "all nodes": {"instance": inst, "node": grafana_regex(sorted(nodes)),
                                  "__rate_interval": RATE_INTERVAL},
                    "node 0": {"instance": inst, "node": grafana_regex(["0"]),
                               "__rate_interval": RATE_INTERVAL},
                }
                rows, failures = [], []
                at_all: dict[tuple[str, str], list[dict[str, Any]]] = {}
                for title, ref, expr in queries:
                    counts, shown = [], ""
                    for sel_name, variables in selections.items():
                        q = substitute(expr, variables)
                        assert "$" not in q, f"unsubstituted variable in {q}"
                        try:
                            result = prom.query(q, at)
                        except AssertionError as exc:
                            failures.append(f"{title} [{ref}] ({sel_name}): {exc}")
                            counts.append(-1)
                            continue
                        if not result:
                            failures.append(f"{title} [{ref}] ({sel_name}): no series\n{q}")
                        counts.append(len(result))
                        shown = shown or series_summary(result)
                        at_all.setdefault((title, ref), result)
                    rows.append((title, ref, " ".join(expr.split()), counts, shown))

                print(f"\n{len(rows)} panel queries, $instance={inst}, "
                      f"$__rate_interval={RATE_INTERVAL}; series with $node=All "
                      f"{selections['all nodes']['node']} / $node=0")
                print("| panel | ref | expr | series (All) | series (node 0) | series (All): "
                      "labels besides instance = value |")
                print("|---|---|---|---|---|---|")
                for title, ref, expr, (n_all, n_0), shown in rows:
                    print(f"| {title} | {ref} | `{expr}` | {n_all} | {n_0} | {shown} |")

                assert not failures, "\n\n".join(failures)

                # The panels that should show the promotion do, at that moment.
                def values(title: str, ref: str, **labels: str) -> list[float]:
                    return [float(r["value"][1]) for r in at_all[(title, ref)]
                            if labels.items() <= r["metric"].items()]

                for title, ref, labels in (
                        ("Promotion rate per node pair", "A", {"src_node": "1"}),
                        ("Promotion throughput per node pair", "A", {"dst_node": "0"}),
                        ("kmigratedd vs the kernel: promotions and demotions", "A", {}),
                        ("kmigratedd vs the kernel: promotions and demotions", "C", {}),
                        ("Page outcomes by reason", "A", {"reason": "moved"}),
                        ("move_pages calls and whole-call errors", "A", {}),
                        ("Sampler rate", "A", {}), ("Candidate flow and drops", "A", {})):
                    assert max(values(title, ref, **labels), default=0) > 0, (title, ref)
                for title, refs in (("Batch size", "ABCD"),
                                    ("move_pages latency per batch", "ABC")):
                    for ref in refs:
                        assert all(math.isfinite(v) and v > 0 for v in values(title, ref)), \
                            (title, ref, at_all[(title, ref)])
                assert max(values("Worker heartbeat age", "A")) < 30

                # The alert rules are loaded and evaluate cleanly on real data.
                groups = http_json(prom.url + "/api/v1/rules")["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                assert len(rules) >= 6, rules
                bad = [(r["name"], r.get("lastError")) for r in rules
                       if r.get("health") != "ok"]
                firing = [(a["labels"]["alertname"], a["state"]) for a in
                          http_json(prom.url + "/api/v1/alerts")["data"]["alerts"]]
                print(f"\nalert rules: {len(rules)} loaded, health ok for "
                      f"{len(rules) - len(bad)}; alerts pending/firing: {firing or 'none'}")
                assert not bad, bad
            finally:
                rc = d.stop()
            assert rc == 0
    finally:
        if prom is not None:
            prom.stop()
        if filler:
            filler.stop()


# --- the systemd unit under a real systemd ----------------------------------------------------

# Capability numbers (linux/capability.h) of the unit's CapabilityBoundingSet.
CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_IPC_LOCK": 14, "CAP_SYS_PTRACE": 19,
        "CAP_SYS_ADMIN": 21, "CAP_SYS_NICE": 23, "CAP_PERFMON": 38}
SYSCTLS = ("/proc/sys/kernel/numa_balancing",
           "/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps")


def unit_caps_mask(unit_text: str) -> int:
    m = re.search(r"^CapabilityBoundingSet=(.*)$", unit_text, re.M)
    assert m
    return sum(1 << CAPS[c] for c in m.group(1).split())


def test_unit_under_systemd(tmp_path: Path) -> None:
    import pytest

    if KERNEL != "debian-6.12":
        pytest.skip("hint faults are tested on Debian 6.12")
    for tool in ("unshare", "nsenter", "systemctl", "journalctl"):
        assert shutil.which(tool), f"{tool} missing"
    assert Path("/lib/systemd/systemd").exists()
    before = [Path(p).read_text().strip() for p in SYSCTLS]

    # Install as the README's systemd recipe says, in the guest's throw-away overlay root:
    # a venv in /opt/kmigratedd, the commands linked into /usr/local/bin, the shipped config
    # and the unit as shipped, ExecStart and all.
    unit = UNIT.read_text()
    kmigratedd = Path("/usr/local/bin/kmigratedd")
    assert f"ExecStart={kmigratedd} " in unit
    install_as_the_readme_says()
    assert kmigratedd.exists() and os.access(kmigratedd, os.X_OK), kmigratedd
    etc = Path("/etc/systemd/system")
    assert (etc / "kmigratedd.service").read_text() == unit
    # Test-only drop-in, nothing of the sandbox is relaxed but ProtectHome for the
    # interpreter: DefaultDependencies=no keeps sysinit.target out (it would run
    # systemd-tmpfiles --remove on the guest's /tmp, systemd-sysctl, udev...), and
    # when the venv's python lives under /root (pyenv) it is bound read-only into
    # the otherwise empty home directories.
    venv_python = Path(os.path.realpath(kmigratedd)).with_name("python3")  # /opt/kmigratedd
    python_prefix = Path(os.path.realpath(venv_python)).parents[1]
    home = ""
    if str(python_prefix).startswith(("/root/", "/home/")):
        home = f"ProtectHome=tmpfs\nBindReadOnlyPaths={python_prefix}\n"
    (etc / "kmigratedd.service.d").mkdir(exist_ok=True)
    (etc / "kmigratedd.service.d" / "test.conf").write_text(
        f"[Unit]\nDefaultDependencies=no\n[Service]\n{home}")
    (etc / "kmvm-test.target").write_text(
        "[Unit]\nDescription=kmigratedd unit test\nDefaultDependencies=no\n"
        "Wants=systemd-journald.socket\n")
    Path("/etc/kmigratedd").mkdir(exist_ok=True)
    Path("/etc/kmigratedd/kmigratedd.yaml").write_text("""
sampler:
  name: hint-faults
  interval_ms: 250
workers:
  rate_limit_mb_per_s: 0
  min_free_bytes: 64MiB
  resume_free_bytes: 96MiB
""")

    # systemd logs to the console (the guest's serial log); the unit's own output
    # goes to the journal and is printed by phase 2.
    sd = subprocess.Popen(["unshare", "--pid", "--fork", "--mount", "--mount-proc",
                           "/lib/systemd/systemd", "--system", "--unit=kmvm-test.target",
                           "--log-target=console", "--log-level=notice",
                           "--show-status=false"],
                          env=dict(os.environ, container="kmvm"))
    try:
        pid1 = 0
        for _ in range(100):
            kids = Path(f"/proc/{sd.pid}/task/{sd.pid}/children").read_text().split()
            if kids:
                pid1 = int(kids[0])
                break
            time.sleep(0.1)
        assert pid1, "systemd did not start"
        # Everything else runs inside systemd's namespaces, where the workload's
        # and the daemon's pids agree (perf reports pids of the opener's namespace).
        out = tmp_path / "facts.json"
        r = subprocess.run(["nsenter", "-t", str(pid1), "-m", "-p", sys.executable,
                            __file__, "systemd-phase2", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=600)
        print(r.stdout)
        assert r.returncode == 0, r.stdout[-3000:]
        facts = json.loads(out.read_text())
    finally:
        sd.kill()
        sd.wait()
        # The namespace's processes die with its PID 1; put the sysctls back in case.
        for p, v in zip(SYSCTLS, before):
            Path(p).write_text(v)

    print("FACTS", json.dumps(facts, indent=1))
    assert facts["active"] == "active", facts
    assert facts["status"].startswith("promoting"), facts
    status = facts["proc_status"]
    assert int(status["CapEff"], 16) == unit_caps_mask(unit), status
    assert int(status["CapBnd"], 16) == unit_caps_mask(unit), status
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status
    assert facts["watchdog_usec"] == str(30_000_000), facts
    assert facts["watchdog_pinged"], facts
    assert facts["hot_on_fast"] >= 0.9, facts
    assert facts["promoted"] > 0, facts
    assert facts["sysctls_running"] == ["2", "0"], facts
    assert json.loads(facts["state_file"]) == dict(zip(SYSCTLS, before)), facts
    assert facts["tunable_elsewhere_writable"] is False, facts
    assert facts["reload_active"] == "active" and facts["reloaded_logged"], facts
    assert facts["ctl_status_ok"], facts
    assert facts["restarted_active"] == "active", facts
    assert facts["restore_logged"], facts
    assert facts["sysctls_after_stop"] == before, facts
    assert not facts["state_file_after_stop"], facts


def readme_systemd_recipe() -> list[str]:
    """The shell lines of the README's systemd recipe, up to installing the unit."""
    text = (REPO / "README.md").read_text()
    block = text.split("### systemd", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [ln.split("#", 1)[0].strip() for ln in block.splitlines()]
    lines = [ln.replace("sudo ", "") for ln in lines if ln]
    return [ln for ln in lines if "systemctl" not in ln]


def install_as_the_readme_says() -> None:
    """Run the README's recipe from the repo root.  The guest has no network: `pip install .`
    takes the wheel tests/setup.sh built from this checkout, and its dependencies, from the
    local wheelhouse tests/setup.sh filled (KMIGRATEDD_TEST_DIST)."""
    dist = Path(os.environ["KMIGRATEDD_TEST_DIST"])
    assert list(dist.glob("wheelhouse/kmigratedd-*.whl")), dist
    offline = f"pip install --no-index --find-links {dist / 'wheelhouse'} kmigratedd"
    for line in readme_systemd_recipe():
        assert "pip install ." in line or "pip install" not in line, line
        # As written, the system's interpreter included (/usr/bin/python3, never one a
        # PATH under /root would pick, which ProtectHome= hides from the unit).
        cmd = line.replace("pip install .", offline)
        r = subprocess.run(cmd, shell=True, cwd=REPO, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=600)
        print(f"$ {cmd}\n{r.stdout}", flush=True)
        assert r.returncode == 0, (cmd, r.stdout)


def _systemd_phase2(out: Path) -> None:
    """Runs inside systemd's pid/mount namespace: start the workload there, then the
    service, and write what was observed to ``out``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from workload import Workload, fill_node

    def sh(cmd: str) -> str:
        r = subprocess.run(cmd, shell=True, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        print(f"$ {cmd}\n{r.stdout}", flush=True)
        return r.stdout.strip()

    def wait_active(timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = sh("systemctl is-active kmigratedd.service")
            if state in ("active", "failed"):
                break
            time.sleep(1)
        return state

    facts: dict[str, Any] = {}
    for _ in range(120):
        if sh("systemctl is-system-running") in ("running", "degraded"):
            break
        time.sleep(1)
    filler = fill_node(0, FILL_TO_MIB)
    try:
        with Workload(HOT_MIB, COLD_MIB, node=1) as w:
            sh("systemctl start kmigratedd.service")  # returns once READY=1 arrived
            facts["active"] = wait_active()
            facts["status"] = sh("systemctl show -p StatusText --value kmigratedd.service")
            main_pid = sh("systemctl show -p MainPID --value kmigratedd.service")
            facts["watchdog_usec"] = sh("systemctl show -p WatchdogUSec --value "
                                        "kmigratedd.service")
            if facts["watchdog_usec"].endswith("s"):  # systemd prints "30s"
                facts["watchdog_usec"] = str(int(facts["watchdog_usec"][:-1]) * 1_000_000)
            facts["watchdog_pinged"] = sh("systemctl show -p WatchdogTimestampMonotonic "
                                          "--value kmigratedd.service") not in ("", "0")
            proc = Path(f"/proc/{main_pid}/status").read_text()
            facts["proc_status"] = dict(re.findall(
                r"^(CapEff|CapBnd|NoNewPrivs|Seccomp):\s*(\S+)", proc, re.M))
            # ProtectKernelTunables: other sysctls stay read-only for the service.
            facts["tunable_elsewhere_writable"] = sh(
                f"nsenter -t {main_pid} -m sh -c 'echo 1 > /proc/sys/vm/drop_caches "
                "&& echo yes || echo no'").endswith("yes")
            t0 = time.monotonic()
            while time.monotonic() - t0 < BOUND_S and w.fraction_on(w.hot, 0) < 0.9:
                time.sleep(2)
            facts["hot_on_fast"] = w.fraction_on(w.hot, 0)
            with urllib.request.urlopen("http://127.0.0.1:9477/metrics", timeout=10) as r:
                text = r.read().decode()
            facts["promoted"] = sum(float(x) for x in re.findall(
                r"^kmigratedd_promoted_pages_total\{[^}]*\} (\S+)$", text, re.M))
            facts["sysctls_running"] = [Path(p).read_text().strip() for p in SYSCTLS]
            state = Path("/var/lib/kmigratedd/sysctl-state.json")
            facts["state_file"] = state.read_text() if state.exists() else ""
            facts["ctl_status_ok"] = "promoting" in sh("/usr/local/bin/kmigratedctl status")
            sh("systemctl reload kmigratedd.service")
            facts["reload_active"] = wait_active()
            time.sleep(1)
            facts["reloaded_logged"] = "config reloaded" in sh(
                "journalctl -u kmigratedd.service --no-pager -o cat")
            # A crash: Restart=on-failure brings it back, and the new instance restores
            # the sysctls the killed one left changed (from the StateDirectory).
            sh("systemctl kill -s SIGKILL kmigratedd.service")
            time.sleep(1)
            deadline = time.monotonic() + 180
            restarted = ""
            while time.monotonic() < deadline:
                restarted = sh("systemctl show -p NRestarts --value kmigratedd.service")
                if restarted not in ("", "0") and wait_active(5) == "active":
                    break
                time.sleep(1)
            facts["restarted_active"] = sh("systemctl is-active kmigratedd.service")
            facts["restore_logged"] = "left changed by a previous run" in sh(
                "journalctl -u kmigratedd.service --no-pager -o cat")
            sh("systemctl stop kmigratedd.service")
            facts["sysctls_after_stop"] = [Path(p).read_text().strip() for p in SYSCTLS]
            facts["state_file_after_stop"] = state.exists()
            sh("journalctl -u kmigratedd.service --no-pager -o cat | tail -25")
    finally:
        if filler:
            filler.stop()
        out.write_text(json.dumps(facts))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "systemd-phase2":
    _systemd_phase2(Path(sys.argv[2]))
