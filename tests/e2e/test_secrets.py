"""Secrets on real processes: a password file instead of a password on the command
line, masked URLs in every message, TLS, and ``hiscrm up``'s own password."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hiscrm_bus.keys import Keys
from tests.e2e.stack import FAST_ENV, wait_for
from tests.redis_server import RedisServer, TlsFiles, free_port, make_tls, running

pytestmark = pytest.mark.e2e

SECRET = "Sup3r-secret-pw"
ADMIN_SECRET = "adm1n-secret-pw"
ACL = f"""user default on >{SECRET} ~* &* +@all
user admin on >{ADMIN_SECRET} ~* &* +@all
"""


def hiscrm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "--log-level", "warning", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def password_file(path: Path, password: str) -> Path:
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    workdir = tmp_path_factory.mktemp("secrets")
    (workdir / "users.acl").write_text(ACL)
    with running(RedisServer(workdir / "redis", aclfile=workdir / "users.acl")) as server:
        yield server


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[RedisServer]:
    directory = tmp_path_factory.mktemp("tls-redis")
    with running(RedisServer(directory, tls=tls, requirepass=SECRET)) as server:
        yield server


def tls_env(server: RedisServer, tls: TlsFiles, pw_file: Path) -> dict[str, str]:
    assert tls.client_cert is not None and tls.client_key is not None
    return {
        "HISCRM_REDIS_URL": server.url,
        "HISCRM_REDIS_PASSWORD_FILE": str(pw_file),
        "HISCRM_REDIS_CA_FILE": str(tls.ca),
        "HISCRM_REDIS_CERT_FILE": str(tls.client_cert),
        "HISCRM_REDIS_KEY_FILE": str(tls.client_key),
    }


def test_password_file_works_for_the_cli(acl_server: RedisServer, tmp_path: Path) -> None:
    env = {
        "HISCRM_REDIS_URL": acl_server.url,
        "HISCRM_REDIS_PASSWORD_FILE": str(password_file(tmp_path / "pw", SECRET)),
        "HISCRM_KEY_PREFIX": "pwfile:",
    }
    result = hiscrm("account", "list", env=env)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr  # nothing to warn about: no password in the URL


def test_wrong_password_is_authentication_failed_exit_2(
    acl_server: RedisServer, tmp_path: Path
) -> None:
    env = {
        "HISCRM_REDIS_URL": acl_server.url,
        "HISCRM_REDIS_PASSWORD_FILE": str(password_file(tmp_path / "pw", "not-the-pw-xyz")),
    }
    result = hiscrm("account", "list", env=env)
    assert result.returncode == 2
    assert f"authentication failed for user default at {acl_server.url}" in result.stderr
    assert "reach" not in result.stderr
    assert "not-the-pw-xyz" not in result.stdout + result.stderr

    url = acl_server.url_with("admin", "wrong-admin-pw")
    result = hiscrm("account", "list", "--redis-url", url, env={})
    assert result.returncode == 2
    shown = f"redis://admin:***@127.0.0.1:{acl_server.port}/0"
    assert f"authentication failed for user admin at {shown}" in result.stderr
    assert "wrong-admin-pw" not in result.stdout + result.stderr
    # a password on the command line works, with one warning line that says why not to
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "`ps`" in warnings[0], result.stderr
    assert "HISCRM_REDIS_PASSWORD_FILE" in warnings[0]


def test_password_in_the_url_still_works_with_a_warning(acl_server: RedisServer) -> None:
    url = acl_server.url_with("admin", ADMIN_SECRET)
    result = hiscrm("account", "list", env={"HISCRM_REDIS_URL": url, "HISCRM_KEY_PREFIX": "u:"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("warning") == 1 and "HISCRM_REDIS_PASSWORD_FILE" in result.stderr
    assert ADMIN_SECRET not in result.stdout + result.stderr


def test_no_password_given_says_so(acl_server: RedisServer) -> None:
    result = hiscrm("account", "list", env={"HISCRM_REDIS_URL": acl_server.url})
    assert result.returncode == 2
    assert "requires a password and none was given" in result.stderr


def test_unreachable_is_the_old_sentence_masked() -> None:
    url = f"redis://admin:{SECRET}@127.0.0.1:{free_port()}/0"
    result = hiscrm("account", "list", env={"HISCRM_REDIS_URL": url})
    assert result.returncode == 2
    shown = url.replace(SECRET, "***")
    assert f"Cannot reach Redis at {shown} (is redis-server running?" in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "url",
    [
        f"http://admin:{SECRET}@127.0.0.1:6379/0",
        f"redis://admin:{SECRET}/x@127.0.0.1:6379/0",  # an unescaped / ends the host early
        f"redis//admin:{SECRET}@127.0.0.1:6379/0",
    ],
)
def test_bad_url_never_echoes_its_password(url: str) -> None:
    for args, env in ((["--redis-url", url], {}), ([], {"HISCRM_REDIS_URL": url})):
        result = hiscrm("account", "list", *args, env=env)
        assert result.returncode == 2, result.stderr
        assert "invalid setting redis_url" in result.stderr
        assert SECRET not in result.stdout + result.stderr


def test_unreadable_password_file_is_one_sentence(tmp_path: Path) -> None:
    env = {"HISCRM_REDIS_PASSWORD_FILE": str(tmp_path / "missing")}
    result = hiscrm("account", "list", env=env)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "cannot read the Redis password file" in line and "No such file" in line


def test_tls_cli_ok_and_wrong_ca(tls_server: RedisServer, tls: TlsFiles, tmp_path: Path) -> None:
    env = tls_env(tls_server, tls, password_file(tmp_path / "pw", SECRET))
    result = hiscrm("account", "list", env=env)
    assert result.returncode == 0, result.stderr

    other = make_tls(tmp_path / "other-ca")
    result = hiscrm("account", "list", env={**env, "HISCRM_REDIS_CA_FILE": str(other.ca)})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"TLS verification of {tls_server.url} failed: " in line
    assert "certificate" in line and SECRET not in line


def test_master_and_worker_over_tls_with_a_password_file(
    tls_server: RedisServer, tls: TlsFiles, tmp_path: Path
) -> None:
    prefix = "tlsfleet:"
    env = {
        **FAST_ENV,
        **tls_env(tls_server, tls, password_file(tmp_path / "pw", SECRET)),
        "HISCRM_KEY_PREFIX": prefix,
        "HISCRM_DATA_DIR": str(tmp_path / "worker"),
    }
    keys = Keys(prefix)
    probe = tls_server.client(decode_responses=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, args in (("master", ["master", "--id", "m1"]), ("w1", ["worker", "--id", "w1"])):
            with (tmp_path / f"{name}.log").open("ab") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "hiscrm_cli", "--log-level", "debug", *args],
                    env={**os.environ, **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        wait_for(lambda: probe.exists(keys.worker("w1")), what="w1 registered over TLS")
        add = ["account", "add", "acc-1", "--platform", "synthetic", "--interval", "0.2"]
        result = hiscrm(*add, "--worker", "w1", env=env)
        assert result.returncode == 0, result.stderr
        result = hiscrm(
            "account", "login-success", "acc-1", "--platform-user-id", "u-1", "--wait", env=env
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "applied" in result.stdout
        for name, proc in procs.items():
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
            assert SECRET not in cmdline(proc.pid)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(15)
        probe.close()
    for name in procs:
        log = (tmp_path / f"{name}.log").read_text()
        assert SECRET not in log


def test_master_process_with_a_password_file(acl_server: RedisServer, tmp_path: Path) -> None:
    """The password reaches the Master through the file only: not in its command line,
    not in its logs (at debug level)."""
    prefix = "pwmaster:"
    env = {
        **os.environ,
        **FAST_ENV,
        "HISCRM_REDIS_URL": acl_server.url,
        "HISCRM_REDIS_PASSWORD_FILE": str(password_file(tmp_path / "pw", SECRET)),
        "HISCRM_KEY_PREFIX": prefix,
    }
    probe = acl_server.client(password=SECRET, decode_responses=True)
    log_path = tmp_path / "master.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hiscrm_cli", "--log-level", "debug", "master", "--id", "m1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # "ready" comes after its first PING, so after it logged in
        wait_for(lambda: "master m1 ready" in log_path.read_text(), what="master ready")
        assert proc.poll() is None
        assert len(probe.client_list()) > 1  # the Master's connections, logged in
        assert SECRET not in cmdline(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        probe.close()
    assert proc.returncode == 0, log_path.read_text()
    assert SECRET not in log_path.read_text()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_up_gives_its_redis_a_password_and_keeps_its_files_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "up"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiscrm_cli", "up", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HISCRM_REDIS_PASSWORD": "someone-elses-pw"},  # not for up's Redis
    )
    assert proc.stdout is not None
    banner = []
    for line in proc.stdout:
        banner.append(line)
        if "Ctrl-C stops everything" in line:
            break
    out = "".join(banner)
    try:
        assert proc.poll() is None, out
        pw_file = data_dir / "redis-password"
        password = pw_file.read_text().strip()
        assert len(password) >= 32
        assert _mode(pw_file) == 0o600 and _mode(data_dir / "redis.conf") == 0o600
        for directory in (data_dir, data_dir / "redis", data_dir / "logs"):
            assert _mode(directory) == 0o700, directory
        # redis-server's own files: no access for group or others
        for path in (data_dir / "redis").rglob("*"):
            assert _mode(path) & 0o077 == 0, path
        assert password not in out
        assert f"cat {pw_file}" in out, out
        match = re.search(r"redis://127\.0\.0\.1:(\d+)/0", out)
        assert match, out
        port = int(match.group(1))
        pids = json.loads((data_dir / "pids.json").read_text())
        for name, pid in pids.items():
            assert password not in cmdline(pid), name

        with redis.Redis(port=port) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with redis.Redis(port=port, password=password, decode_responses=True) as r:
            assert r.config_get("bind")["bind"] == "127.0.0.1"
        # from another shell, as the banner says
        env = {"HISCRM_REDIS_URL": match.group(0), "HISCRM_REDIS_PASSWORD_FILE": str(pw_file)}
        result = hiscrm("account", "list", env=env)
        assert result.returncode == 0, result.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + rest
    assert password not in rest
    for log in (data_dir / "logs").iterdir():
        assert password not in log.read_text(errors="replace"), log
