"""An import on a live fleet: the owning worker applies the change, and ``--wait``
tallies the outcomes as ``account set --all --wait`` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


def test_an_imported_change_is_applied_by_the_owner(stack: Stack, tmp_path: Path) -> None:
    stack.master()
    stack.worker("w1")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    path = tmp_path / "accounts.csv"
    path.write_text(
        "id,platform,worker,interval\n"
        "acc-1,synthetic,w1,0.5\n"  # changed
        "acc-2,synthetic,w1,0.2\n"  # added on w1
    )
    result = stack.cli("account", "import", str(path), "--wait", "--timeout", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "added 1, updated 1, unchanged 0"
    row = next(line for line in lines if line.startswith("│ w1"))
    assert [cell.strip() for cell in row.strip("│").split("│")] == ["w1", "2", "0", "0", "0"]
    assert lines[-1].startswith("2/2 outcomes; last ACK after ")
    stack.wait_task("w1", "acc-1", "waiting_login", version=2)
    stack.wait_task("w1", "acc-2", "waiting_login", version=1)
    assert stack.account("acc-1")["monitor_interval_s"] == "0.5"
