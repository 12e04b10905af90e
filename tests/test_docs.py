"""The operator's front door: the README's size and its yaml, the probe, the manual pages,
the completion script, and the quick loop's set-up (no apt)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KMIGRATEDD = str(BIN / "kmigratedd")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines"
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_yaml_block_passes_check_config(doc, tmp_path):
    blocks = YAML_BLOCK.findall(doc.read_text())
    for i, block in enumerate(blocks):
        cfg = tmp_path / f"block{i}.yaml"
        cfg.write_text(block)
        r = subprocess.run([KMIGRATEDD, "--check-config", str(cfg)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, f"{doc.name}, yaml block {i + 1}:\n{block}\n{r.stderr}"


def test_probe_on_a_one_tier_host():
    r = subprocess.run([KMIGRATEDD, "--probe"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in ("hint-faults", "idle", "damon", "pebs", "ibs", "kswapd", "damon-paddr"):
        assert re.search(rf"^  {re.escape(name)} +(available|not available: .+)$", r.stdout,
                         re.M), name
    assert "nothing would be promoted" in r.stdout
    j = subprocess.run([KMIGRATEDD, "--probe", "--json"], capture_output=True, text=True,
                       timeout=60)
    found = json.loads(j.stdout)
    assert found["auto"]["sampler"] is None and "one memory tier" in found["auto"]["why"]
    assert set(found["samplers"]) == {"hint-faults", "idle", "damon", "pebs", "ibs"}


def test_probe_on_a_two_tier_tree():
    """The checked-in CXL tree (no NUMA balancing, DAMON or idle tracking in it): every
    sampler says what is missing, and auto says none can run."""
    r = subprocess.run([KMIGRATEDD, "--probe", "--json", "--root",
                        str(REPO / "tests/data/cxl2")], capture_output=True, text=True,
                       timeout=60)
    found = json.loads(r.stdout)
    assert found["nodes"]["1"]["promotes_to"] == 0
    assert all(not s["available"] and s["why_not"] for s in found["samplers"].values())
    assert found["auto"]["why"] == "no sampler can run here"


def test_check_config_json():
    r = subprocess.run([KMIGRATEDD, "--check-config", "--json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["sampler"]["name"] == "auto"


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db not installed (apt: man-db)")
@pytest.mark.parametrize("page", ["kmigratedd.8", "kmigratedctl.8", "kmigratedd.yaml.5"])
def test_man_pages_render(page, tmp_path):
    roff = subprocess.run([KMIGRATEDD, "--man", page], capture_output=True, text=True,
                          check=True).stdout
    f = tmp_path / page
    f.write_text(roff)
    r = subprocess.run(["man", "-l", str(f)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MANWIDTH": "100"})
    assert r.returncode == 0 and not r.stderr, r.stderr
    out = re.sub(".\b", "", r.stdout)  # bold and underline are overstruck on a pipe
    assert "NAME" in out and "SEE ALSO" in out
    if page == "kmigratedd.8":
        assert "--probe" in out and "--check-config" in out
    elif page == "kmigratedctl.8":
        assert "--watch" in out and "topology" in out
    else:  # every key of the shipped config
        assert "workers.batch_pages (default: 512)" in out
        assert "demotion.method (default: auto)" in out


def test_bash_completion():
    script = subprocess.run([KMIGRATEDD, "--completion", "bash"], capture_output=True,
                            text=True, check=True).stdout
    probe = script + ('COMP_WORDS=(kmigratedctl status --w); COMP_CWORD=2; _kmigratedctl; '
                      'echo "${COMPREPLY[@]}"; COMP_WORDS=(kmigratedd --pro); COMP_CWORD=1; '
                      '_kmigratedd; echo "${COMPREPLY[@]}"\n')
    r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert r.stdout.split("\n")[:2] == ["--watch", "--probe"], r.stdout + r.stderr


def test_quick_loop_calls_no_apt(tmp_path):
    """tests/run.sh -m "not vm" sets up without apt: apt-get, apt and dpkg-query fail and
    log their calls here; the set-up (artifacts already built) passes without one."""
    log = tmp_path / "calls"
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("apt-get", "apt", "dpkg-query", "dpkg"):
        (fake / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {log}\nexit 100\n")
        (fake / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "KMIGRATEDD_FRESH_VENV"}
    env["PATH"] = f"{fake}:{env.get('PATH', '/usr/bin:/bin')}"
    r = subprocess.run(["bash", "tests/run.sh", "-m", "not vm", "--collect-only", "-q",
                        "-p", "no:cacheprovider", "tests/test_units.py"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert not log.exists(), log.read_text()
    assert "test_units.py::" in r.stdout
