"""The operator-facing deploy artifacts (deploy/): the systemd unit, the Prometheus
alert rules, the Kubernetes manifests and the Grafana dashboard, checked with the
tools operators use on them (systemd-analyze, promtool, kmigratedd --check-config).

The real-kernel side (every dashboard query through a real Prometheus scraping a
promoting daemon, the unit under a real systemd) is tests/vm/test_vm_prometheus.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kmigratedd import config as config_mod
from kmigratedd.kernelfs import KernelFs
from kmigratedd.metrics import Metrics, MetricsSources
from kmigratedd.queues import CandidateQueues
from kmigratedd.topology import discover
from kmigratedd.inbox import Inbox
from kmigratedd.pipeline import MovePipeline, ShimMover
from kmigratedd.router import Router
from kmigratedd.stats import MoveStats
from kmigratedd.worker import NodeWorker, inbox_limit

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "kmigratedd.service"
RULES = DEPLOY / "prometheus" / "kmigratedd-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "kmigratedd-rules.test.yml"
K8S = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "kmigratedd.json"
KMIGRATEDD = Path(sys.executable).with_name("kmigratedd")
INSTALLED_EXEC = "/usr/local/bin/kmigratedd --config /etc/kmigratedd/kmigratedd.yaml"
MAX_EXPOSURE = 3.0  # systemd-analyze security: the unit scores 2.5 ("OK")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run tests/setup.sh (apt packages)")
    return path


# --- systemd -----------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key → values in file order (keys may repeat), section names prefixed."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


@pytest.fixture
def unit_for_verify(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at the venv's kmigratedd.

    systemd-analyze verify checks that ExecStart's binary exists and is
    executable; the unit names /usr/local/bin/kmigratedd, where a real install
    puts it.  Rather than creating that path on the test machine, verify a copy
    whose only change is ExecStart (the rest of the file is byte-identical)."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_EXEC}\n" in text
    assert KMIGRATEDD.exists(), KMIGRATEDD
    copy = tmp_path / "kmigratedd.service"
    venv_exec = INSTALLED_EXEC.replace("/usr/local/bin/kmigratedd", str(KMIGRATEDD))
    copy.write_text(text.replace(f"ExecStart={INSTALLED_EXEC}", f"ExecStart={venv_exec}"))
    return copy


def test_unit_verifies(unit_for_verify: Path) -> None:
    r = subprocess.run([tool("systemd-analyze"), "verify", str(unit_for_verify)],
                       capture_output=True, text=True, cwd=unit_for_verify.parent)
    # Warnings do not change the status: fail on any line about our unit too.
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "kmigratedd" in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_unit_security_exposure(unit_for_verify: Path) -> None:
    r = subprocess.run([tool("systemd-analyze"), "security", "--offline=true",
                        f"--threshold={int(MAX_EXPOSURE * 10)}", "--no-pager",
                        str(unit_for_verify)],
                       capture_output=True, text=True, cwd=unit_for_verify.parent)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout
    assert r.returncode == 0, r.stdout + r.stderr


def test_unit_matches_the_daemon() -> None:
    s = unit_settings(UNIT.read_text())
    one = {k: v[-1] for k, v in s.items()}
    assert one["Service.Type"] == "notify"
    assert one["Service.NotifyAccess"] == "main"
    assert one["Service.ExecStart"] == INSTALLED_EXEC
    assert one["Service.ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Service.Restart"] == "on-failure"
    assert one["Service.WatchdogSec"].endswith("s")
    # Where the shipped defaults put the state file and the control socket.
    default = config_mod.load(None)
    assert Path(default.sampler.hint_faults.state_file).parent == \
        Path("/var/lib") / one["Service.StateDirectory"]
    assert Path(default.control.socket_path).parent == \
        Path("/run") / one["Service.RuntimeDirectory"]
    # The metrics endpoint (127.0.0.1 by default) is what IPAddressAllow lets in.
    assert default.metrics.listen_address == "127.0.0.1"
    assert one["Service.IPAddressAllow"] == "localhost"
    # The hint-faults sampler's sysctls are the ones carved out of ProtectKernelTunables.
    from kmigratedd.samplers.perf import NUMA_BALANCING, PROMOTE_RATE_LIMIT
    rw = {p.lstrip("-") for p in s["Service.ReadWritePaths"]}
    assert {NUMA_BALANCING, PROMOTE_RATE_LIMIT} <= rw
    assert one["Service.ProtectKernelTunables"] == "yes"
    caps = set(one["Service.CapabilityBoundingSet"].split())
    assert caps == {"CAP_SYS_NICE", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN", "CAP_IPC_LOCK"}
    assert "User" not in one and "DynamicUser" not in one  # root, trimmed capabilities


def test_the_unit_runs_what_the_readme_recipe_installs() -> None:
    """ExecStart names the command that the README's systemd recipe links into place from the
    venv it creates (the guest's systemd test runs the recipe and the unit as shipped)."""
    block = (REPO / "README.md").read_text().split("### systemd", 1)[1]
    block = block.split("```sh\n", 1)[1].split("```", 1)[0]
    venv = re.search(r"^sudo /usr/bin/python3 -m venv (\S+) && sudo \1/bin/pip install \.$",
                     block, re.M)
    assert venv, block  # the system's python: ProtectHome= hides one under /root
    link = re.search(r"^sudo ln -s (.+) (\S+)/$", block, re.M)
    assert link, block
    sources, target_dir = link.group(1).split(), link.group(2)
    assert f"{venv.group(1)}/bin/kmigratedd" in sources
    assert INSTALLED_EXEC.split()[0] == f"{target_dir}/kmigratedd"
    assert "install -D -m 0644 deploy/kmigratedd.yaml /etc/kmigratedd/kmigratedd.yaml" in block
    assert INSTALLED_EXEC.endswith("--config /etc/kmigratedd/kmigratedd.yaml")


# --- Prometheus rules ---------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    r = subprocess.run([tool("promtool"), "check", "rules", str(RULES)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 6 rules found" in r.stdout + r.stderr


def test_promtool_test_rules() -> None:
    r = subprocess.run([tool("promtool"), "test", "rules", str(RULE_TESTS)],
                       capture_output=True, text=True, cwd=RULE_TESTS.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_example_config() -> None:
    example = DEPLOY / "prometheus" / "prometheus-example.yml"
    r = subprocess.run([tool("promtool"), "check", "config", str(example)],
                       capture_output=True, text=True, cwd=example.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_unit_test_and_labels() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        cases = [c for t in tests for c in t.get("alert_rule_test", [])
                 if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in cases), f"{rule['alert']}: no firing case"
        assert any(not c["exp_alerts"] for c in cases), f"{rule['alert']}: no quiet case"


# --- Kubernetes ---------------------------------------------------------------------------


def k8s_objects() -> dict[str, dict[str, Any]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objs: dict[str, dict[str, Any]] = {}
    for name in kust["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                assert doc["kind"] not in objs, doc["kind"]
                objs[doc["kind"]] = doc
    return objs


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    manifests = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kust["resources"]) == manifests
    objs = k8s_objects()
    assert set(objs) == {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet",
                         "NetworkPolicy"}
    assert objs["Namespace"]["metadata"]["name"] == kust["namespace"]
    # Privileged pods need a namespace that Pod Security Admission lets them into.
    assert objs["Namespace"]["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"] == "privileged"
    images = {c["image"] for c in daemonset_containers(objs["DaemonSet"])}
    assert images == {i["name"] for i in kust["images"]}


def daemonset_containers(ds: dict[str, Any]) -> list[dict[str, Any]]:
    spec = ds["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def configmap_config(objs: dict[str, dict[str, Any]]) -> str:
    return str(objs["ConfigMap"]["data"]["kmigratedd.yaml"])


def test_configmap_passes_check_config(tmp_path: Path) -> None:
    cfg = tmp_path / "kmigratedd.yaml"
    cfg.write_text(configmap_config(k8s_objects()))
    r = subprocess.run([str(KMIGRATEDD), "--check-config", str(cfg)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    effective = yaml.safe_load(r.stdout)
    assert effective["metrics"]["enabled"] is True
    assert effective["metrics"]["listen_address"] == "0.0.0.0"


def test_daemonset() -> None:
    objs = k8s_objects()
    ds = objs["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1"
    tmpl = ds["spec"]["template"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= tmpl["metadata"]["labels"].items()
    spec = tmpl["spec"]
    assert spec["hostPID"] is True
    assert spec["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"]
    assert spec["nodeSelector"] and spec["tolerations"]
    (main,) = [c for c in spec["containers"] if c["name"] == "kmigratedd"]
    assert main["securityContext"]["privileged"] is True
    assert main["resources"]["requests"] and main["resources"]["limits"]

    # Mounts: config, the sysctl state and the control socket on the node, sysfs.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    cfg = config_mod.load(None)
    text = configmap_config(objs)
    effective = yaml.safe_load(subprocess.run(
        [str(KMIGRATEDD), "--check-config", "/dev/stdin"], input=text, capture_output=True,
        text=True, check=True).stdout)
    state_dir = str(Path(effective["sampler"]["hint_faults"]["state_file"]).parent)
    run_dir = str(Path(effective["control"]["socket_path"]).parent)
    assert state_dir == str(Path(cfg.sampler.hint_faults.state_file).parent)
    for path, host in ((state_dir, state_dir), (run_dir, run_dir), ("/sys", "/sys")):
        assert path in mounts, f"{path} not mounted"
        assert volumes[mounts[path]]["hostPath"]["path"] == host, path
    config_dir = "/etc/kmigratedd"
    assert volumes[mounts[config_dir]]["configMap"]["name"] == \
        objs["ConfigMap"]["metadata"]["name"]
    for c in daemonset_containers(ds):
        if c["command"][0] == "kmigratedd":
            assert f"{config_dir}/kmigratedd.yaml" in c["command"], c["name"]
    inits = {c["name"]: c for c in spec["initContainers"]}
    assert "--check-config" in inits["check-config"]["command"]
    # kubelet makes hostPath directories 0755; the daemon wants its state directory 0700.
    chmod = inits["state-dir"]
    assert chmod["command"] == ["chmod", "0700", state_dir]
    assert {m["mountPath"] for m in chmod["volumeMounts"]} == {state_dir}
    for init in inits.values():
        assert init["securityContext"].get("privileged") is not True
        assert init["securityContext"]["capabilities"]["drop"] == ["ALL"]

    # The metrics port: ConfigMap == containerPort == scrape annotation == probes.
    port = effective["metrics"]["port"]
    ann = tmpl["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == port
    assert ann["prometheus.io/path"] == "/metrics"
    named = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert named["metrics"] == port
    for probe in ("livenessProbe", "readinessProbe"):
        get = main[probe]["httpGet"]
        assert get["path"] == "/metrics"
        assert named.get(get["port"], get["port"]) == port, probe


def test_network_policy_admits_only_prometheus_to_the_metrics_port() -> None:
    """The ConfigMap listens on 0.0.0.0: the NetworkPolicy selects the daemon's pods, isolates
    their ingress and lets in only TCP to the metrics port, only from pods that match both a
    namespace and a pod selector (one `from` entry: AND), none of them empty."""
    objs = k8s_objects()
    pol = objs["NetworkPolicy"]
    assert pol["apiVersion"] == "networking.k8s.io/v1"
    spec = pol["spec"]
    labels = objs["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"namespaceSelector", "podSelector"}
    assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]["matchLabels"]
    assert "ipBlock" not in peer
    port = config_mod.parse(configmap_config(objs), "configmap").metrics.port
    assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
    text = (K8S / "networkpolicy.yaml").read_text()
    for label in ("kubernetes.io/metadata.name", "app.kubernetes.io/name"):
        assert label in text.split("apiVersion:")[0], f"{label} not documented"


def test_containerfile_builds_the_image_from_the_wheel() -> None:
    """No engine runs here, so the Containerfile is checked, not built: a build stage makes the
    sdist, the wheel from it and the dependencies' wheels; the image installs only those,
    checks the installed command and runs kmigratedd, which the DaemonSet's commands name."""
    text = (K8S / "Containerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and all("python:3.11" in st for st in stages), stages
    build, final = text.split("\nFROM ", 2)[1:]
    assert "python -m build" in build and "pip wheel" in build and "gcc" in build
    assert "COPY --from=build /wheels" in final
    assert "pip install --no-cache-dir --no-index --find-links /wheels kmigratedd" in final
    assert "kmigratedd --version" in final and "gcc" not in final
    assert 'ENTRYPOINT ["kmigratedd"]' in final
    ignore = (REPO / ".dockerignore").read_text().split()
    assert {"tests", ".git", ".venv"} <= set(ignore)
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "Containerfile" in (K8S / "kustomization.yaml").read_text()
    assert [i["name"] for i in kust["images"]] == ["kmigratedd"]


# --- Grafana ------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def exported_metric_names() -> set[str]:
    """Every sample name the daemon exports, rendered from its real collector with a
    worker, queues and a sampler in place (fake sysfs tree tests/data/cxl2)."""
    fs = KernelFs(REPO / "tests" / "data" / "cxl2")
    topo = discover(fs, page_size=4096)
    stats = MoveStats()
    stats.promoted[(1, 0)] = 3
    stats.outcomes["moved"] = 3
    stats.whole_call_errors["ESRCH"] = 1
    stats.batch(3, 0.001, 1)
    cfg = config_mod.WorkersConfig()
    pipeline = MovePipeline(0, ShimMover(), stats, ThreadPoolExecutor(1), page_size=4096)
    inbox = Inbox(inbox_limit(cfg))
    worker = NodeWorker(0, topology=topo, inbox=inbox, pipeline=pipeline, cfg=cfg, fs=fs)
    sampler = SimpleNamespace(name="hint-faults", stats=lambda: {
        "samples": 5, "samples_lost": 0, "candidates_offered": 3, "throttled": 0})
    queues = CandidateQueues([0, 1], 16, 4096)
    router = Router(queues, {0: inbox}, topo, ShimMover(), cfg)
    router.stats.below_threshold = 2
    metrics = Metrics(MetricsSources(fs=fs, topology=lambda: topo, workers=lambda: {0: worker},
                                     router=lambda: router, queues=lambda: queues,
                                     sampler=lambda: sampler))
    text = metrics.render().decode()
    names = set()
    for fam in text_string_to_metric_families(text):
        names |= {s.name for s in fam.samples}
        # Families with no sample here (the fake tree has no vmstat) by their type.
        names |= {f"{fam.name}{suffix}" for suffix in {
            "counter": ("_total",), "info": ("_info",), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count")}.get(fam.type, ())}
    return names


METRIC_RX = re.compile(r"\b(kmigratedd_[a-z0-9_]+)\b")


def test_dashboard_is_generated_and_current() -> None:
    r = subprocess.run([sys.executable, str(DEPLOY / "grafana" / "build_dashboard.py"),
                        "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dashboard_structure() -> None:
    d = dashboard()
    assert d["uid"] and d["title"]
    templ = {v["name"]: v for v in d["templating"]["list"]}
    for name in ("instance", "node"):
        assert templ[name]["type"] == "query", name
        assert templ[name]["definition"].startswith("label_values("), name
        assert templ[name]["multi"] and templ[name]["includeAll"], name
    assert templ["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids))
    exprs = []
    for p in panels(d):
        if p["type"] == "row":
            continue
        targets = p.get("targets", [])
        assert targets and all(t.get("expr", "").strip() for t in targets), p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        exprs += [t["expr"] for t in targets]
    for expr in exprs:
        # Every range is Grafana's rate interval, every selector follows $instance.
        assert set(re.findall(r"\[([^\]]*)\]", expr)) <= {"$__rate_interval"}, expr
        for sel in re.findall(r"\{([^}]*)\}", expr):
            assert 'instance=~"$instance"' in sel, expr


def test_dashboard_and_rules_use_exported_metrics() -> None:
    names = exported_metric_names()
    d = dashboard()
    used = {m for p in panels(d) for t in p.get("targets", [])
            for m in METRIC_RX.findall(t["expr"])}
    used |= {m for v in d["templating"]["list"] for m in METRIC_RX.findall(
        str(v.get("definition", "")))}
    used |= set(METRIC_RX.findall(RULES.read_text()))
    assert used, "no kmigratedd metric referenced"
    assert used <= names, sorted(used - names)
