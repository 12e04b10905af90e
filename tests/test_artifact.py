"""What a user installs: the wheel and the sdist that tests/setup.sh built from this checkout,
the wheel installed (not editable) into the venv these tests run in.

Every other test imports kmigratedd from that venv too (tests/conftest.py stops a run that
imports the source tree); this module checks the artifact itself: what the wheel holds, what the
native extension exports, that the installed commands start, and that the sdist installs into a
fresh venv of its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import kmigratedd

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DIST = Path(os.environ.get("KMIGRATEDD_TEST_DIST", "/nonexistent"))
sys.path.insert(0, str(REPO / "tests" / "vm" / "guest"))
from daemonproc import DaemonProcess  # noqa: E402


def _load_build_shim():
    spec = importlib.util.spec_from_file_location("build_shim", REPO / "native" / "build_shim.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _one(pattern: str) -> Path:
    found = sorted(DIST.glob(pattern))
    if not found:
        pytest.fail(f"no {pattern} in {DIST}: run the tests through tests/run.sh, which builds it")
    assert len(found) == 1, found
    return found[0]


def test_the_package_is_the_installed_copy():
    where = Path(kmigratedd.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert not where.is_relative_to(REPO), where
    assert where.is_relative_to(site), (where, site)
    direct_url = next(site.glob("kmigratedd-*.dist-info")) / "direct_url.json"
    if direct_url.exists():  # pip records how it installed: never editable here
        assert not json.loads(direct_url.read_text()).get("dir_info", {}).get("editable")
    for script in ("kmigratedd", "kmigratedctl"):
        assert (BIN / script).exists(), script


def test_the_wheel_holds_every_module_and_data_file():
    names = set(zipfile.ZipFile(_one("kmigratedd-*.whl")).namelist())
    source = {p.relative_to(REPO).as_posix() for p in (REPO / "kmigratedd").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".so"}
    assert source <= names, sorted(source - names)
    assert "kmigratedd/default.yaml" in names and "kmigratedd/samplers/damon.py" in names
    assert [n for n in names if re.fullmatch(r"kmigratedd/_native\..*so", n)], sorted(names)
    assert not [n for n in names if n.endswith(".c")]


def test_the_sdist_holds_the_c_sources_not_generated_code():
    names = {n.split("/", 1)[1] for n in tarfile.open(_one("kmigratedd-*.tar.gz")).getnames()
             if "/" in n}
    for c in sorted((REPO / "native").glob("km*.[ch]")):
        assert f"native/{c.name}" in names, c.name
    assert {"setup.py", "pyproject.toml", "native/build_shim.py", "kmigratedd/default.yaml",
            "kmigratedd/samplers/__init__.py"} <= names
    assert "native/_native.c" not in names


def test_the_extension_declares_exactly_the_functions_python_calls():
    from kmigratedd import _native

    build_shim = _load_build_shim()
    called = set()
    for path in (REPO / "kmigratedd").rglob("*.py"):
        called |= set(re.findall(r"\blib\.(km_\w+)", path.read_text()))
    assert called == set(build_shim.EXPORTED), (called ^ set(build_shim.EXPORTED))
    assert {n for n in dir(_native.lib) if n.startswith("km_")} == set(build_shim.EXPORTED)


def test_the_shared_object_exports_only_its_init_function():
    from kmigratedd import _native

    r = subprocess.run(["nm", "-D", "--defined-only", _native.__file__], capture_output=True,
                       text=True, check=True)
    exported = {line.split()[-1] for line in r.stdout.splitlines() if line.split()[1:2] == ["T"]}
    assert exported == {"PyInit__native"}, exported


def test_the_wrapper_releases_the_gil_around_every_call():
    """The generated wrapper brackets each C call with Py_BEGIN/END_ALLOW_THREADS."""
    build_shim = _load_build_shim()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "_native.c"
        build_shim.make_builder().emit_c_code(str(out))
        src = out.read_text()
    for fn in ("km_move_pages", "km_move_pages_batched", "km_idle_test_batch"):
        body = src[src.index(f"_cffi_f_{fn}("):]
        body = body[:body.index("\n}\n")]
        assert "Py_BEGIN_ALLOW_THREADS" in body and f"{fn}(" in body, fn


def test_version_and_check_config_of_the_shipped_config():
    r = subprocess.run([BIN / "kmigratedd", "--version"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"kmigratedd {kmigratedd.__version__}"
    r = subprocess.run([BIN / "kmigratedd", "--check-config", REPO / "deploy" / "kmigratedd.yaml"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "sampler:" in r.stdout


def test_the_installed_daemon_serves_answers_and_stops_cleanly(tmp_path):
    os.chmod(tmp_path, 0o755)
    sock = tmp_path / "control.sock"
    d = DaemonProcess(f"metrics:\n  port: 0\ncontrol:\n  socket_path: {sock}\n", tmp_path,
                      echo=lambda line: None)
    try:
        d.wait_for("running (pid", 30)
        d.wait_for("metrics on http://", 30)
        assert d.metric_sum("kmigratedd_build_info") == 1
        r = subprocess.run([BIN / "kmigratedctl", "-s", sock, "status", "--json"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["paused"] is False
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=20) == 0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    assert not sock.exists()


def test_the_sdist_installs_into_a_fresh_venv(tmp_path):
    """pip builds the extension from the sdist alone (build isolation: setuptools and cffi
    from the index, a C compiler and the Python headers from the machine)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    r = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", _one("kmigratedd-*.tar.gz")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([venv / "bin" / "kmigratedd", "--version"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"kmigratedd {kmigratedd.__version__}"
    r = subprocess.run([venv / "bin" / "kmigratedd", "--check-config",
                        REPO / "deploy" / "kmigratedd.yaml"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([venv / "bin" / "python", "-c",
                        "import kmigratedd.shim, kmigratedd.samplers.damon; "
                        "print(kmigratedd.shim.__file__)"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve().is_relative_to(venv.resolve())
