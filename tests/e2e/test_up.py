"""`hiscrm up`: the whole stack in one command, and nothing left behind."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from tests.e2e.stack import wait_for

pytestmark = pytest.mark.e2e


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of ours is gone too
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


def chromium_of(data_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"chromium" in cmdline and str(data_dir).encode() in cmdline:
                pids.append(int(proc.name))
    return pids


def env_file(data_dir: Path) -> dict[str, str]:
    """The variables `hiscrm up` wrote for other shells."""
    values = {}
    for line in (data_dir / "env").read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = shlex.split(value)[0]
    return values


def console_of(out: str, data_dir: Path) -> tuple[str, str]:
    """The console's address `hiscrm up` printed, and its admin's password (from the file
    it named, which only this user may read)."""
    found = re.search(
        r"web console +(http://127\.0\.0\.1:\d+/) .*user admin, password: cat (\S+)\)", out
    )
    assert found, out
    password_file = data_dir / "web-admin-password"
    assert found.group(2) == str(password_file)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 12
    assert password not in out
    return found.group(1), password


def _shell_env() -> dict[str, str]:
    """A shell of a user who has set no hiscrm setting, with the venv's commands."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISCRM_")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def played_demo(data_dir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``hiscrm up --demo`` run to its end, as a user's shell runs it; it succeeded."""
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "up", *options, "--demo", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        env=_shell_env(),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_up_demo_plays_the_seed_scenario_and_stops_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "up"
    addresses = []
    consoles = []
    for _run in range(2):  # a second `make demo` plays it again from the start
        result = played_demo(data_dir)
        values = env_file(data_dir)
        addresses.append((values["HISCRM_REDIS_URL"], values["HISCRM_SANDBOX_URL"]))
        consoles.append(console_of(result.stdout, data_dir))
    # the ports were free again: a shell that sourced the env file keeps working, and
    # the console is where it was, with the same sign-in (the demo reset Redis)
    assert addresses[0] == addresses[1]
    assert consoles[0] == consoles[1]
    out = result.stdout
    timeline = [
        "web console",
        "account demo-1 added",
        "waiting_login — Account missing platform_user_id",
        "QR code shown",
        "scanned with the (simulated) phone",
        "Master saved platform_user_id 1864722759",
        "applied version",
        "task running",
        "crawled 3 comments and 1 DM",
        "hiscrm diagnose: all green",
        "no process left behind",
    ]
    positions = [out.find(step) for step in timeline]
    assert -1 not in positions, out
    assert positions == sorted(positions), out
    pids = json.loads((data_dir / "pids.json").read_text())
    assert set(pids) == {"redis", "sandbox", "master", "worker", "web"}
    assert all(gone(pid) for pid in pids.values())
    assert chromium_of(data_dir) == []


def test_up_cluster_plays_the_seed_scenario_on_a_redis_cluster(tmp_path: Path) -> None:
    data_dir = tmp_path / "up"
    result = played_demo(data_dir, "--cluster")
    out = result.stdout
    url = env_file(data_dir)["HISCRM_REDIS_URL"]
    assert url.startswith("redis+cluster://127.0.0.1:")
    assert len(url.removeprefix("redis+cluster://").rstrip("/").split(",")) == 6
    steps = ["redis cluster", "QR code shown", "applied version", "hiscrm diagnose: all green"]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions, out
    assert positions == sorted(positions), out
    pids = json.loads((data_dir / "pids.json").read_text())
    assert {f"redis-{n}" for n in range(1, 7)} <= set(pids)
    assert all(gone(pid) for pid in pids.values())
    assert chromium_of(data_dir) == []
    password = (data_dir / "redis-password").read_text().strip()
    assert password not in out + result.stderr


def test_up_runs_until_ctrl_c_then_leaves_no_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "up"
    env = dict(
        _shell_env(),
        HISCRM_KEY_PREFIX="up1:",  # a setting of the stack: other shells need it
        HISCRM_DATA_DIR=str(tmp_path / "w"),  # one process's own: they must not get it
        HISCRM_REDIS_PASSWORD="some other Redis's",  # never the stack's
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiscrm_cli", "up", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    shown = []
    for line in proc.stdout:
        shown.append(line)
        if "Ctrl-C stops everything" in line:
            break
    try:
        pids = json.loads((data_dir / "pids.json").read_text())
        assert all(not gone(pid) for pid in pids.values())

        # the console answers on loopback, and its first user signs in with the file
        url, password = console_of("".join(shown), data_dir)
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        web = http.client.HTTPConnection(host, int(port), timeout=10)
        web.request("GET", "/signin")
        page = web.getresponse()
        assert page.status == 200
        form = page.read().decode()
        assert '<form method="post" action="/signin"' in form
        token = re.search(r'name="signin_csrf" value="([^"]+)"', form)
        cookie = (page.getheader("set-cookie") or "").split(";")[0]
        assert token and cookie.startswith("hiscrm_signin=")
        fields = {"user": "admin", "password": password, "signin_csrf": token.group(1)}
        body = urllib.parse.urlencode(fields)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
        web.request("POST", "/signin", body, headers)
        signed_in = web.getresponse()
        signed_in.read()
        assert (signed_in.status, signed_in.getheader("location")) == (303, "/")
        web.close()

        # the stack is usable from another shell after `source <env file>`, as printed
        env_path = data_dir / "env"
        assert f"use it from another shell: source {shlex.quote(str(env_path))}\n" in shown
        assert stat.S_IMODE(env_path.stat().st_mode) == 0o600
        values = env_file(data_dir)
        assert set(values) == {
            "HISCRM_REDIS_URL",
            "HISCRM_REDIS_PASSWORD_FILE",
            "HISCRM_SANDBOX_URL",
            "HISCRM_KEY_PREFIX",
            "HISCRM_HEARTBEAT_INTERVAL_S",
            "HISCRM_DATABASE_URL",  # the Master's crawled data, for `hiscrm data`
        }
        assert values["HISCRM_KEY_PREFIX"] == "up1:"
        assert values["HISCRM_DATABASE_URL"] == f"sqlite+aiosqlite:///{data_dir / 'hiscrm.db'}"
        assert values["HISCRM_REDIS_PASSWORD_FILE"] == str(data_dir / "redis-password")
        password = (data_dir / "redis-password").read_text().strip()
        assert password not in env_path.read_text()
        script = (
            f"source {shlex.quote(str(env_path))}\n"
            "hiscrm sandbox scan --user-id 1; echo scan=$?\n"  # the stack's site answers
            "hiscrm account list; echo list=$?\n"  # its Redis, password and prefix
            'export REDISCLI_AUTH=$(cat "$HISCRM_REDIS_PASSWORD_FILE")\n'
            'redis-cli -u "$HISCRM_REDIS_URL" EXISTS "${HISCRM_KEY_PREFIX}worker:w1"\n'
        )
        other = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,  # not where `hiscrm up` ran
            env=_shell_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out = other.stdout + other.stderr
        # the site answered (no login waits for a scan: exit 1); unreachable is exit 2
        assert "scan=1" in out, out
        assert "list=0" in out, out
        assert other.stdout.splitlines()[-1] == "1", out
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, whatever happened above
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "no process left behind" in out
    wait_for(lambda: all(gone(pid) for pid in pids.values()), what="children gone")


def test_up_without_redis_server_says_how_to_get_one(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # no redis-server on this PATH
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "up", "--data-dir", str(tmp_path / "up")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "apt-get install redis-server" in result.stderr
