"""Host side: the launcher itself (exit status, shared cwd, env, mounts, timeout, panic)."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import vmrun

pytestmark = pytest.mark.vm
VMRUN = Path(__file__).resolve().parent / "vmrun.py"

GUEST_CHECKS = r"""
set -u
echo hello-from-guest
{
  echo "in_vm=$KMIGRATEDD_IN_VM"
  echo "topo=$KMIGRATEDD_VM_TOPOLOGY"
  echo "kernel=$KMIGRATEDD_VM_KERNEL"
  echo "foo=$FOO"
  echo "pwd=$(pwd)"
  echo "uid=$(id -u)"
  echo "tmp_fs=$(stat -f -c %T /tmp)"
  echo "tmp_entries=$(ls -A /tmp | tr '\n' ' ')"
  echo "root_fs=$(awk '$2 == "/" {print $3}' /proc/mounts)"
  echo "numa_balancing=$(cat /proc/sys/kernel/numa_balancing)"
  echo "debugfs=$(grep -c ' /sys/kernel/debug debugfs ' /proc/mounts)"
  echo "nodes=$(cat /sys/devices/system/node/online)"
  echo "lo=$(cat /sys/class/net/lo/operstate) $(cat /sys/class/net/lo/flags)"
} > guest-report.txt
echo lost > /root/kmvm-lost-$TOKEN
exit 0
"""


def test_guest_environment_and_shared_cwd(vm_available: None, tmp_path: Path) -> None:
    token = secrets.token_hex(4)
    # tmp_path lives under the host's /tmp, which the guest replaces with a fresh tmpfs:
    # the cwd share must still show up at the same path.
    res = vmrun.run_in_vm(
        ["sh", "-c", GUEST_CHECKS],
        cwd=str(tmp_path),
        timeout=300,
        env={"FOO": "bar baz", "TOKEN": token},
        stream=None,
    )
    assert res.returncode == 0, res.console[-5000:]
    assert "hello-from-guest" in res.output
    assert res.boot_seconds is not None and res.boot_seconds > 0
    # one key=value per line: values may hold spaces
    report = dict(
        line.split("=", 1) for line in (tmp_path / "guest-report.txt").read_text().splitlines()
    )
    assert report["in_vm"] == "1"
    assert report["topo"] == "2node" and report["kernel"] == "debian-6.12"
    assert report["foo"] == "bar baz"  # passed through with its space intact
    assert report["pwd"] == str(tmp_path)
    assert report["uid"] == "0"
    # a fresh tmpfs: nothing in it but the mount point of the shared cwd
    assert report["tmp_fs"] == "tmpfs"
    assert report["tmp_entries"].split() == [tmp_path.relative_to("/tmp").parts[0]]
    assert report["root_fs"] == "overlay"
    assert report["numa_balancing"] == "0"
    assert report["debugfs"] == "1"
    assert report["nodes"] == "0-1"
    state, flags = report["lo"].split()
    assert int(flags, 16) & 0x1, f"lo is down ({state} {flags})"  # IFF_UP
    assert not Path(f"/root/kmvm-lost-{token}").exists(), (
        "write outside the shared cwd leaked to the host"
    )


def test_cli_exit_status_and_log(vm_available: None, tmp_path: Path) -> None:
    p = subprocess.run(
        [
            sys.executable,
            str(VMRUN),
            "--log-dir",
            str(tmp_path / "logs"),
            "--topology",
            "3node",
            "--",
            "sh",
            "-c",
            "echo out-line; echo err-line >&2; exit 7",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert p.returncode == 7, p.stderr
    assert (
        "out-line" in p.stdout and "err-line" in p.stdout
    )  # guest stdout+stderr share the console
    assert "boot " in p.stderr and "qemu start -> guest command start" in p.stderr
    logs = list((tmp_path / "logs").glob("vm-*.log"))
    assert len(logs) == 1 and "out-line" in logs[0].read_text()
    assert str(logs[0]) in p.stderr


def test_cli_check(vm_available: None) -> None:
    p = subprocess.run(
        [sys.executable, str(VMRUN), "--check"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (p.returncode, p.stdout.strip()) == (0, "ok")


def test_timeout_kills_guest(vm_available: None, tmp_path: Path) -> None:
    res = vmrun.run_in_vm(
        ["sleep", "1000"], timeout=30, log_dir=tmp_path, stream=None, cwd=str(tmp_path)
    )
    assert res.timed_out and res.returncode == vmrun.EXIT_TIMEOUT
    assert res.wall_seconds < 60
    assert res.log_path is not None and "TIMEOUT" in res.log_path.read_text()


def test_guest_panic_is_reported(vm_available: None, tmp_path: Path) -> None:
    res = vmrun.run_in_vm(
        ["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 100"],
        timeout=120,
        log_dir=tmp_path,
        stream=None,
        cwd=str(tmp_path),
    )
    assert not res.timed_out
    assert not res.status_reported and res.returncode == vmrun.EXIT_VM_ERROR
    assert res.log_path is not None and "Kernel panic" in res.log_path.read_text()


def test_no_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMIGRATEDD_IN_VM", "1")
    with pytest.raises(vmrun.VMUnavailable):
        vmrun.run_in_vm(["true"])
