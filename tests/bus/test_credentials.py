"""Credentials and TLS: passwords from a file, masked wherever a URL is shown, and one
clear sentence for each way a first connection can fail (real redis-server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from hiscrm_bus.connection import connect
from hiscrm_bus.errors import BusUnavailable, ConfigurationError
from hiscrm_bus.settings import BusSettings, masked_url, url_password, url_username
from hiscrm_worker.browser import BrowserPool
from hiscrm_worker.settings import private_dir
from tests.redis_server import RedisServer, TlsFiles, free_port, make_tls, running

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    ("url", "shown", "password", "user"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", None, "default"),
        ("redis://w1@h:6379/0", "redis://w1@h:6379/0", None, "w1"),
        ("redis://admin:hunter2@h:6379/0", "redis://admin:***@h:6379/0", "hunter2", "admin"),
        ("redis://:hunter2@h/0", "redis://:***@h/0", "hunter2", "default"),
        ("rediss://a:p/w?x#y@h:1/0", "rediss://a:***@h:1/0", "p/w?x#y", "a"),
        ("redis://a:b@c@h/0", "redis://a:***@h/0", "b@c", "a"),
        ("redis://a:p%40ss@h/0", "redis://a:***@h/0", "p@ss", "a"),
        (
            "redis://h/0?password=hunter2&db=1",
            "redis://h/0?password=***&db=1",
            "hunter2",
            "default",
        ),
        ("unix://u:hunter2@/run/r.sock?db=0", "unix://u:***@/run/r.sock?db=0", "hunter2", "u"),
        ("http://admin:hunter2@h", "http://admin:***@h", "hunter2", "admin"),
        ("admin:hunter2@h:6379", "admin:***@h:6379", "hunter2", "admin"),
        ("", "", None, "default"),
    ],
)
def test_masked_url_hides_only_the_password(
    url: str, shown: str, password: str | None, user: str
) -> None:
    assert masked_url(url) == shown
    assert url_password(url) == password
    assert url_username(url) == user


def test_password_never_in_a_repr_or_a_validation_message() -> None:
    settings = BusSettings(redis_password=SECRET)
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert settings.password() == SECRET
    in_url = BusSettings(redis_url=f"redis://admin:{SECRET}@h:6379/0")
    assert SECRET not in repr(in_url) and "admin:***@h" in repr(in_url)
    for bad in (f"http://admin:{SECRET}@h/0", f"redis://admin:{SECRET}/x@h:6379/0"):
        with pytest.raises(ValidationError) as caught:
            BusSettings(redis_url=bad)
        assert SECRET not in str(caught.value)
        assert "admin:***@" in str(caught.value)


def test_password_file_is_read_once_without_its_newline(tmp_path: Path) -> None:
    file = tmp_path / "pw"
    file.write_text(SECRET + "\n")
    settings = BusSettings(redis_password_file=file)
    file.write_text("changed later\n")
    assert settings.password() == SECRET
    assert settings.connection_options() == {"password": SECRET}


@pytest.mark.parametrize(
    ("values", "sentence"),
    [
        ({"redis_password_file": "/nonexistent/pw"}, "cannot read the Redis password file"),
        ({"redis_password": "a", "redis_password_file": "{pw}"}, "not both"),
        ({"redis_url": "redis://u:x@h/0", "redis_password": "a"}, "keep only one"),
        ({"redis_password_file": "{empty}"}, "is empty"),
        ({"redis_password_file": "{dir}"}, "cannot read the Redis password file .*: Is a dir"),
        ({"redis_ca_file": "{pw}"}, "need a rediss:// Redis URL"),
        ({"redis_url": "rediss://h/0", "redis_ca_file": "/nonexistent/ca"}, "cannot read"),
        ({"redis_url": "rediss://h/0", "redis_key_file": "{pw}"}, "without HISCRM_REDIS_CERT"),
    ],
)
def test_bad_credential_settings_are_one_sentence(
    tmp_path: Path, values: dict[str, str], sentence: str
) -> None:
    (tmp_path / "pw").write_text("x\n")
    (tmp_path / "empty").write_text("\n")
    paths = {"pw": tmp_path / "pw", "empty": tmp_path / "empty", "dir": tmp_path}
    filled = {k: v.format(**paths) for k, v in values.items()}
    with pytest.raises(ValidationError, match=sentence):
        BusSettings.model_validate(filled)


# real redis-server: one with requirepass, users from an ACL file, TLS

ACL = f"""user default on >{SECRET} ~* &* +@all
user admin on >admin-pw ~* &* +@all
user cannot-ping on >pp ~* -@all
user gone off >gone-pw ~* +@all
"""


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    workdir = tmp_path_factory.mktemp("acl")
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


async def _refusal(settings: BusSettings) -> str:
    with pytest.raises((ConfigurationError, BusUnavailable)) as caught:
        client = await connect(settings)
        await client.aclose()
    return str(caught.value)


async def test_password_from_settings_connects(acl_server: RedisServer, tmp_path: Path) -> None:
    file = tmp_path / "pw"
    file.write_text(SECRET + "\n")
    for settings in (
        BusSettings(redis_url=acl_server.url, redis_password_file=file),
        BusSettings(redis_url=acl_server.url_with("admin"), redis_password="admin-pw"),
        BusSettings(redis_url=acl_server.url_with("admin", "admin-pw")),
    ):
        client = await connect(settings)
        try:
            assert await client.ping()
        finally:
            await client.aclose()


async def test_wrong_password_is_an_authentication_failure(acl_server: RedisServer) -> None:
    message = await _refusal(BusSettings(redis_url=acl_server.url, redis_password="wrong-pw"))
    assert message.startswith(f"authentication failed for user default at {acl_server.url}")
    assert "wrong-pw" not in message and "reach" not in message

    url = acl_server.url_with("admin", "wrong-pw")
    message = await _refusal(BusSettings(redis_url=url))
    shown = f"redis://admin:***@127.0.0.1:{acl_server.port}/0"
    assert message.startswith(f"authentication failed for user admin at {shown}")
    assert "wrong-pw" not in message

    for user, password in (("nobody", "x"), ("gone", "gone-pw")):
        settings = BusSettings(redis_url=acl_server.url_with(user), redis_password=password)
        assert (await _refusal(settings)).startswith(f"authentication failed for user {user} ")


async def test_no_password_given_says_one_is_needed(acl_server: RedisServer) -> None:
    message = await _refusal(BusSettings(redis_url=acl_server.url))
    assert "requires a password and none was given" in message
    assert "HISCRM_REDIS_PASSWORD_FILE" in message


async def test_noperm_on_ping_is_its_own_sentence(acl_server: RedisServer) -> None:
    settings = BusSettings(redis_url=acl_server.url_with("cannot-ping"), redis_password="pp")
    message = await _refusal(settings)
    assert message.startswith(f"user cannot-ping at {settings.shown_url} may not run PING")


async def test_unreachable_is_still_unreachable_and_masked() -> None:
    url = f"redis://admin:{SECRET}@127.0.0.1:{free_port()}/0"
    with pytest.raises(BusUnavailable) as caught:
        await connect(BusSettings(redis_url=url, redis_timeout_s=2))
    message = str(caught.value)
    assert message.startswith(f"Cannot reach Redis at {masked_url(url)} (is redis-server running?")
    assert SECRET not in message


async def test_tls_with_the_right_ca_connects(tls_server: RedisServer, tls: TlsFiles) -> None:
    settings = BusSettings(
        redis_url=tls_server.url,
        redis_password=SECRET,
        redis_ca_file=tls.ca,
        redis_cert_file=tls.client_cert,
        redis_key_file=tls.client_key,
    )
    assert settings.redis_url.startswith("rediss://")
    client = await connect(settings)
    assert await client.set("tls", "yes")
    await client.aclose()


async def test_tls_with_a_wrong_ca_is_one_sentence(
    tls_server: RedisServer, tls: TlsFiles, tmp_path: Path
) -> None:
    other = make_tls(tmp_path / "other")
    settings = BusSettings(
        redis_url=tls_server.url_with(None, SECRET),
        redis_ca_file=other.ca,
        redis_cert_file=tls.client_cert,
        redis_key_file=tls.client_key,
    )
    message = await _refusal(settings)
    shown = f"rediss://:***@127.0.0.1:{tls_server.port}/0"
    assert message.startswith(f"TLS verification of {shown} failed: ")
    assert "certificate" in message and SECRET not in message


async def test_tls_without_a_client_certificate_says_so(
    tls_server: RedisServer, tls: TlsFiles
) -> None:
    settings = BusSettings(redis_url=tls_server.url, redis_password=SECRET, redis_ca_file=tls.ca)
    for _ in range(5):  # the server may answer with an alert or just hang up: both said
        message = await _refusal(settings)
        assert message.startswith(f"TLS handshake with {tls_server.url} failed: ")
        assert "HISCRM_REDIS_CERT_FILE" in message


# directories with secrets in them


def test_private_dir_creates_and_tightens(tmp_path: Path) -> None:
    mine = private_dir(tmp_path / "a" / "b")
    assert mine.stat().st_mode & 0o777 == 0o700
    named = tmp_path / "named"
    named.mkdir(mode=0o755)
    named.chmod(0o755)
    private_dir(named, tighten=False)
    assert named.stat().st_mode & 0o777 == 0o755
    private_dir(named)
    assert named.stat().st_mode & 0o777 == 0o700


class _Context:
    async def storage_state(self) -> dict[str, list[object]]:
        return {"cookies": [], "origins": []}


async def test_saved_sessions_are_in_a_private_directory(tmp_path: Path) -> None:
    pool = BrowserPool("/usr/bin/chromium", tmp_path / "worker")
    pool._contexts["acc-1"] = _Context()  # type: ignore[assignment]
    await pool.save_state("acc-1")
    assert (tmp_path / "worker").stat().st_mode & 0o777 == 0o700
    assert pool.state_dir.stat().st_mode & 0o777 == 0o700
    assert pool.state_file("acc-1").stat().st_mode & 0o777 == 0o600
