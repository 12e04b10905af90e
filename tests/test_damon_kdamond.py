"""The kdamond session (kmigratedd/damon/kdamond.py): a start after a crash turns off the
kdamonds the previous run named, and leaves another tool's alone."""

from __future__ import annotations

import json
from pathlib import Path

from kmigratedd.damon import kdamond
from kmigratedd.damon.sysfs import DamonSysfs
from sysfsfake import make_tree

def test_kdamonds_left_on_by_a_killed_run_are_turned_off(tmp_path: Path) -> None:
    """The demoter names the kdamonds it turned on; after a crash the next start turns off
    those still on with the recorded pid, and leaves another tool's alone."""
    fs = make_tree(tmp_path)
    owner = tmp_path / "state" / "kdamonds-sysctl-state.json"
    owner.parent.mkdir()
    k0, k1 = DamonSysfs(fs, 0), DamonSysfs(fs, 1)
    for k, pid in ((k0, 4242), (k1, 5151)):
        p = fs.path(k.kdamond)
        p.mkdir(parents=True, exist_ok=True)
        (p / "state").write_text("on\n")
        (p / "pid").write_text(f"{pid}\n")
    owner.write_text(json.dumps({"0": 4242, "1": 999}))   # kdamond 1 is someone else's now
    assert kdamond.recover(fs, owner) == [0]
    assert fs.path(k0.state).read_text().strip() == "off"
    assert fs.path(k1.state).read_text().strip() == "on"
    assert not owner.exists()
    assert kdamond.recover(fs, owner) == []       # nothing recorded: nothing done
