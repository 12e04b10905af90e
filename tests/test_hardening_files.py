"""The sysctl state file kmigratedd writes as root: every case of
tests/hardening/cases_files.py gives the safe outcome, plus the validation table,
the originals rule and the installed daemon on a fake ``--root`` tree."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kmigratedd import sysctl
from kmigratedd.kernelfs import KernelFs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "vm" / "guest"))
from daemonproc import KMIGRATEDD, DaemonProcess  # noqa: E402

NB = sysctl.NUMA_BALANCING.kpath
RL = sysctl.PROMOTE_RATE_LIMIT.kpath
WANTED = {NB: "2", RL: "0"}


def load_cases() -> ModuleType:
    """By file path, as the hardening runner imports it."""
    path = HERE / "hardening" / "cases_files.py"
    spec = importlib.util.spec_from_file_location("cases_files", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CASES = load_cases().CASES

SAFE = {
    "symlink at the state file's .tmp path":
        "not followed: target unchanged; state file regular 0600",
    "symlink at the final state file path":
        "not read (set aside as .corrupt); a write replaces the link (state file regular "
        "0600), target unchanged",
    "a FIFO at the state file path": "not read (set aside as .corrupt)",
    "state file names /etc/passwd": "ignored, nothing written (kept as .corrupt)",
    "state file names a known sysctl and /proc/sys/vm/drop_caches":
        "ignored, nothing written (kept as .corrupt)",
    "state file value out of range (numa_balancing 99)":
        "ignored, nothing written (kept as .corrupt)",
    "state file values not decimal integers ('1\\n2', '-1')":
        "ignored, nothing written (kept as .corrupt)",
    # The documented rule (kmigratedd/sysctl.py): the originals went with the file; the
    # values the daemon sets are not recorded as originals and are left as found.
    "truncated state file, sysctls still 2/0 from a killed run":
        "2/0 not taken as originals (no state file while running); clean exit leaves "
        "numa_balancing=2 rate_limit=0 with a warning; truncated file kept as .corrupt",
    "truncated state file, sysctls already set back to 1/65536":
        "running numa_balancing=2 rate_limit=0; clean exit restores numa_balancing=1 "
        "rate_limit=65536",
    "valid state file from a killed run, next start with the damon sampler":
        "restored at daemon start, before the damon sampler: it saw numa_balancing=1 "
        "rate_limit=65536; state file removed",
    "state directory group-writable (0770)":
        "refused: sysctl state directory <dir> is writable by group or others (mode 0770): "
        "make it 0700; numa_balancing=1 rate_limit=65536, no state file",
    "state directory owned by another user":
        "refused: sysctl state directory <dir> is owned by uid 4242, not root: make it "
        "root's, mode 0700; numa_balancing=1 rate_limit=65536, no state file"
        if os.geteuid() == 0 else "skipped (needs root to chown)",
    "state directory missing": "created 0700; state file regular 0600",
}


def test_every_case_has_an_expected_outcome() -> None:
    assert [name for name, _, _ in CASES] == list(SAFE)


@pytest.mark.parametrize("name,before,run", CASES, ids=[c[0] for c in CASES])
def test_case(name: str, before: str, run, hardening_row) -> None:
    now = run()
    hardening_row(name, before, now)
    assert now == SAFE[name]


# --- the validation table -------------------------------------------------------

VALID = [
    ("{}", {}),
    (f'{{"{NB}": "1", "{RL}": "65536"}}', {NB: "1", RL: "65536"}),
    (f'{{"{NB}": "0"}}', {NB: "0"}),
    (f'{{"{NB}": "4", "{RL}": "2147483647"}}', {NB: "4", RL: "2147483647"}),
    (f'{{"{NB}": "01"}}', {NB: "1"}),
]

CORRUPT = [
    ("", "not JSON"),
    (f'{{"{NB}": "1", "{RL}": "65', "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('"x"', "not a JSON object"),
    ("[" * 5000 + "]" * 5000, "not JSON"),
    ('{"/etc/passwd": "0"}', "unknown key '/etc/passwd'"),
    ('{"kernel.numa_balancing": "1"}', "unknown key"),
    (f'{{"{NB}/../../../etc/passwd": "1"}}', "unknown key"),
    (f'{{"{NB}": 1}}', "is not a decimal integer"),
    (f'{{"{NB}": true}}', "is not a decimal integer"),
    (f'{{"{NB}": null}}', "is not a decimal integer"),
    (f'{{"{NB}": "-1"}}', "is not a decimal integer"),
    (f'{{"{NB}": " 1"}}', "is not a decimal integer"),
    (f'{{"{NB}": "1\\n"}}', "is not a decimal integer"),
    (f'{{"{NB}": "0x1"}}', "is not a decimal integer"),
    (f'{{"{NB}": "\\u0661"}}', "is not a decimal integer"),  # ARABIC-INDIC DIGIT ONE
    (f'{{"{NB}": "5"}}', "5 is outside 0..4"),
    (f'{{"{RL}": "2147483648"}}', "outside 0..2147483647"),
    (f'{{"{RL}": "12345678901"}}', "is not a decimal integer"),
    (f'{{"{NB}": "1", "{NB}": "2"}}', "duplicate key"),
    ('{"a": "\u00e9"}', "not ASCII"),
]


@pytest.mark.parametrize("text,want", VALID)
def test_parse_state_valid(text: str, want: dict[str, str]) -> None:
    assert sysctl.parse_state(text.encode()) == want


@pytest.mark.parametrize("text,problem", CORRUPT)
def test_parse_state_corrupt(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as exc:
        sysctl.parse_state(text.encode())
    assert problem in str(exc.value)
    assert "\n" not in str(exc.value)


def test_oversized_state_file_is_corrupt(tmp_path: Path) -> None:
    state = tmp_path / "state" / "s.json"
    state.parent.mkdir(mode=0o700)
    state.write_text("{" + " " * sysctl.STATE_MAX_BYTES + "}")
    assert sysctl.StateFile(state).load().problem == "larger than 4096 bytes"


# --- the originals rule ---------------------------------------------------------


def fake_root(tmp_path: Path, nb: str, rl: str) -> KernelFs:
    kernel = tmp_path / "root" / "proc/sys/kernel"
    kernel.mkdir(parents=True)
    (kernel / "numa_balancing").write_text(nb + "\n")
    (kernel / "numa_balancing_promote_rate_limit_MBps").write_text(rl + "\n")
    return KernelFs(tmp_path / "root")


def values(fs: KernelFs) -> tuple[str, str]:
    return fs.read(NB).strip(), fs.read(RL).strip()


def test_a_state_file_left_by_a_failed_restore_keeps_the_first_originals(tmp_path: Path) -> None:
    fs = fake_root(tmp_path, "2", "0")
    state = tmp_path / "state" / "sysctl-state.json"
    state.parent.mkdir(mode=0o700)
    state.write_text(f'{{"{NB}": "1", "{RL}": "65536"}}')
    g = sysctl.SysctlGuard(fs, state, WANTED)
    g.apply()
    assert sysctl.parse_state(state.read_bytes()) == {NB: "1", RL: "65536"}
    assert values(fs) == ("2", "0")
    g.restore()
    assert values(fs) == ("1", "65536") and not state.exists()


def test_a_corrupt_file_of_an_earlier_start_still_marks_the_daemons_values(
        tmp_path: Path) -> None:
    fs = fake_root(tmp_path, "2", "65536")
    state = tmp_path / "state" / "sysctl-state.json"
    state.parent.mkdir(mode=0o700)
    (state.parent / "sysctl-state.json.corrupt").write_text("{")
    g = sysctl.SysctlGuard(fs, state, WANTED)
    g.apply()
    # numa_balancing=2 may be a killed run's: unknown.  65536 is not what the daemon
    # sets: a true original.
    assert g.unknown == [NB]
    assert sysctl.parse_state(state.read_bytes()) == {RL: "65536"}
    g.restore()
    assert values(fs) == ("2", "65536") and not state.exists()


def test_a_failed_write_in_apply_restores_and_keeps_nothing_changed(tmp_path: Path) -> None:
    fake_root(tmp_path, "1", "65536")
    state = tmp_path / "state" / "sysctl-state.json"

    class Failing(KernelFs):
        def write(self, kpath: str, value: str) -> None:
            if kpath == RL and value == "0":
                raise PermissionError(13, "Permission denied")
            super().write(kpath, value)

    fs = Failing(tmp_path / "root")
    g = sysctl.SysctlGuard(fs, state, WANTED)
    with pytest.raises(PermissionError):
        g.apply()
    assert values(fs) == ("1", "65536") and not state.exists()


def test_only_known_sysctls_may_be_wanted(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        sysctl.SysctlGuard(KernelFs(tmp_path), tmp_path / "s.json", {"/etc/passwd": "0"})


# --- the installed daemon on a fake --root tree -----------------------------------


def root_tree(tmp_path: Path, data_dir: Path) -> Path:
    """One node (nothing to promote): no sampler starts, recovery still runs."""
    root = tmp_path / "root"
    shutil.copytree(data_dir / "single" / "sys", root / "sys", symlinks=True)
    (root / "sys/devices/system/cpu").mkdir(parents=True)
    (root / "sys/devices/system/cpu/online").write_text("0-3\n")
    kernel = root / "proc/sys/kernel"
    kernel.mkdir(parents=True)
    (kernel / "numa_balancing").write_text("2\n")
    (kernel / "numa_balancing_promote_rate_limit_MBps").write_text("0\n")
    return root


def daemon_config(tmp_path: Path, state: Path) -> str:
    return (f"sampler:\n  name: damon\n  hint_faults:\n    state_file: {state}\n"
            f"metrics:\n  port: 0\ncontrol:\n  socket_path: {tmp_path}/control.sock\n")


def test_installed_daemon_recovers_at_start_with_another_sampler(
        tmp_path: Path, data_dir: Path) -> None:
    root = root_tree(tmp_path, data_dir)
    state = tmp_path / "state" / "sysctl-state.json"
    state.parent.mkdir(mode=0o700)
    state.write_text(f'{{"{NB}": "1", "{RL}": "65536"}}')
    d = DaemonProcess(daemon_config(tmp_path, state), tmp_path, "--root", str(root))
    try:
        d.wait_for("running (pid", 30)
        line = d.wait_for("restored kernel.numa_balancing=1")
        assert "(was 2)" in line
        d.wait_for("restored kernel.numa_balancing_promote_rate_limit_MBps=65536")
        assert (root / NB.lstrip("/")).read_text().strip() == "1"
        assert (root / RL.lstrip("/")).read_text().strip() == "65536"
        assert not state.exists()
    finally:
        assert d.stop() == 0


def test_installed_daemon_refuses_a_group_writable_state_dir(
        tmp_path: Path, data_dir: Path) -> None:
    root = root_tree(tmp_path, data_dir)
    state = tmp_path / "state" / "sysctl-state.json"
    state.parent.mkdir()
    state.parent.chmod(0o775)
    state.write_text(f'{{"{NB}": "1", "{RL}": "65536"}}')
    cfg = tmp_path / "kmigratedd.yaml"
    cfg.write_text(daemon_config(tmp_path, state))
    r = subprocess.run([KMIGRATEDD, "--config", str(cfg), "--root", str(root)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2  # refused with the config check, before any side effect
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"kmigratedd: {cfg}: sampler.hint_faults.state_file: its directory "
                    f"{state.parent} has mode 0775: the state directory must be root's alone, "
                    "mode 0700 (for example /var/lib/kmigratedd)")
    assert (root / NB.lstrip("/")).read_text().strip() == "2"  # nothing trusted from there
