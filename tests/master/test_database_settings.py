"""HISCRM_DATABASE_PASSWORD_FILE: PostgreSQL's password read once from a file, given to
the driver only (never in the URL's text, a repr or a message), and one sentence for
each way it can be wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from hiscrm_bus.errors import ConfigurationError
from hiscrm_master.archive import Archive
from hiscrm_master.database import make_engine, read_password_file
from hiscrm_master.settings import MasterSettings
from tests.postgres_server import PostgresServer

SECRET = "s3cret/@:%Pa55"  # URL-special on purpose: it never goes through the URL's text
URL = "postgresql+asyncpg://hiscrm@db:5432/hiscrm"


@pytest.fixture
def pw(tmp_path: Path) -> Path:
    file = tmp_path / "database.password"
    file.write_text(SECRET + "\n")
    return file


def test_the_password_file_is_read_once_without_its_newline(pw: Path) -> None:
    settings = MasterSettings(database_url=URL, database_password_file=pw)
    pw.write_text("changed later\n")
    assert settings.database_url == URL  # the text is the URL alone
    password = settings.database_password()
    assert password is not None and password.get_secret_value() == SECRET
    engine = make_engine(settings.database_url, password=password)
    assert engine.url.password == SECRET
    assert engine.url.username == "hiscrm" and engine.url.host == "db"


def test_the_password_is_in_no_repr_or_text(pw: Path) -> None:
    settings = MasterSettings(database_url=URL, database_password_file=pw)
    engine = make_engine(settings.database_url, password=settings.database_password())
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.database_url),
        f"{settings.database_url}",
        settings.shown_database_url,
        str(engine.url),
        repr(engine.url),
    ]
    for text in shown:
        assert SECRET not in text, text
    assert "database_password_file=PosixPath(" in repr(settings)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://hiscrm:other@db:5432/hiscrm",
        "postgresql+asyncpg://hiscrm:@db/hiscrm",
        "postgresql+asyncpg://hiscrm@db/hiscrm?password=other",
    ],
)
def test_a_url_with_a_password_and_the_file_is_refused(pw: Path, url: str) -> None:
    with pytest.raises(ConfigurationError, match="set one, not both") as caught:
        read_password_file(url, pw)
    assert "other" not in str(caught.value)
    with pytest.raises(ValidationError, match="set one, not both") as invalid:
        MasterSettings(database_url=url, database_password_file=pw)
    assert "other" not in str(invalid.value) and SECRET not in str(invalid.value)
    # make_engine checks too, whoever calls it
    with pytest.raises(ConfigurationError, match="set one, not both"):
        make_engine(url, password=read_password_file(URL, pw))


@pytest.mark.parametrize(
    ("file", "url", "sentence"),
    [
        ("missing", URL, "cannot read the database password file"),
        ("directory", URL, "cannot read the database password file"),
        ("not-utf8", URL, "cannot read the database password file"),
        ("empty", URL, "is empty"),
        ("newline-only", URL, "is empty"),
        ("good", "sqlite+aiosqlite:///var/hiscrm.db", "names SQLite, which has no password"),
    ],
)
def test_each_mistake_is_one_sentence(tmp_path: Path, file: str, url: str, sentence: str) -> None:
    path = tmp_path / file
    if file == "directory":
        path.mkdir()
    elif file == "not-utf8":
        path.write_bytes(b"\xff\xfe\n")
    elif file != "missing":
        path.write_text({"empty": "", "newline-only": "\n", "good": SECRET}[file])
    with pytest.raises(ConfigurationError) as caught:
        read_password_file(url, path)
    message = str(caught.value)
    assert sentence in message and "\n" not in message, message
    assert "HISCRM_DATABASE_PASSWORD_FILE" in message
    with pytest.raises(ValidationError, match=sentence):
        MasterSettings(database_url=url, database_password_file=path)


def test_the_cli_says_it_in_one_sentence(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISCRM_")}
    env.update(
        HISCRM_DATABASE_URL=URL,
        HISCRM_DATABASE_PASSWORD_FILE=str(tmp_path / "nowhere"),
        COLUMNS="400",
    )
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "data", "acc-1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot read the database password file" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.real
async def test_a_real_postgresql_takes_the_password_from_the_file(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    name = "password_file"
    postgres_server.create_database(name)
    try:
        file = tmp_path / "pw"
        file.write_text(postgres_server.password + "\n")
        url = f"postgresql+asyncpg://hiscrm@127.0.0.1:{postgres_server.port}/{name}"
        settings = MasterSettings(database_url=url, database_password_file=file)
        archive = Archive.of(settings)
        try:
            await archive.ready()  # connects, migrates
        finally:
            await archive.close()
    finally:
        postgres_server.drop_database(name)
