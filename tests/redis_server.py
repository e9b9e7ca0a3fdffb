"""A real redis-server on a free loopback port, started and stopped by the tests.

Options a test can turn on: a password for the default user (``requirepass``), an ACL
file, TLS (with a CA made in the test: see ``make_tls``) and any other ``redis.conf``
lines. Everything goes into a ``redis.conf`` of mode 0600 in the work directory, so no
secret is ever on the server's command line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS redis-server: its certificate and key, the CA that signed it
    (and that it checks client certificates against), and a client certificate."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path | None = None
    client_key: Path | None = None


def make_tls(directory: Path, *, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A fresh CA (trustme), a server certificate for ``hosts`` and a client certificate."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*hosts)
    client = ca.issue_cert("hiscrm-test-client")
    files = TlsFiles(
        ca=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.cert))
    server.private_key_pem.write_to_path(str(files.key))
    assert files.client_cert is not None and files.client_key is not None
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    for path in (files.key, files.client_key):
        path.chmod(0o600)
    return files


class RedisServer:
    def __init__(
        self,
        workdir: Path,
        *,
        persist: bool = False,
        requirepass: str | None = None,
        aclfile: Path | None = None,
        tls: TlsFiles | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        """``requirepass``: the default user's password. ``aclfile``: an ACL file loaded
        at start (``client()`` then needs a user and password of it, unless the file
        leaves the default user open). ``tls``: serve TLS only, on ``port``.
        ``extra_config``: more ``redis.conf`` lines, written after ours."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.persist = persist
        self.requirepass = requirepass
        self.aclfile = aclfile
        self.tls = tls
        self.extra_config = list(extra_config)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The URL without credentials (``rediss://`` when the server speaks TLS)."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def url_with(self, username: str | None = None, password: str | None = None) -> str:
        """``url`` with a user name and, when given, a password in it."""
        scheme = "rediss" if self.tls else "redis"
        auth = quote(username or "", safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        at = f"{auth}@" if auth else ""
        return f"{scheme}://{at}127.0.0.1:{self.port}/0"

    @property
    def config_file(self) -> Path:
        return self.workdir / "redis.conf"

    def _config_lines(self) -> list[str]:
        lines = [
            "bind 127.0.0.1",
            f"dir {_quoted(str(self.workdir))}",
            'save ""',
            f"appendonly {'yes' if self.persist else 'no'}",
            "appendfsync always",
            "daemonize no",
            "loglevel warning",
        ]
        if self.tls is None:
            lines.append(f"port {self.port}")
        else:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {_quoted(str(self.tls.cert))}",
                f"tls-key-file {_quoted(str(self.tls.key))}",
                f"tls-ca-cert-file {_quoted(str(self.tls.ca))}",
            ]
        if self.requirepass is not None:
            lines.append(f"requirepass {_quoted(self.requirepass)}")
        if self.aclfile is not None:
            lines.append(f"aclfile {_quoted(str(self.aclfile))}")
        return lines + self.extra_config

    def _write_config(self) -> None:
        text = "\n".join(self._config_lines()) + "\n"
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.config_file.chmod(0o600)

    def start(self) -> None:
        self._write_config()
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(self.config_file)], stdout=subprocess.DEVNULL, stderr=log
            )
        # no retries inside the probe: this loop is the retry, and redis-py's default
        # backoff would sleep for seconds on a refused password
        client = self.client(socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.AuthenticationError, redis.ResponseError):
                    return  # it answers; whether it lets this client in is the test's affair
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start on {self.port} "
                            f"(see {self.workdir / 'redis.log'})"
                        ) from None
                    time.sleep(0.02)  # polling a process we just started; no event to await
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: connections die without a goodbye; nothing is flushed."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(
        self, username: str | None = None, password: str | None = None, **options: Any
    ) -> redis.Redis:
        """A client of this server: as the default user with ``requirepass`` unless a
        user is given, over TLS with the client certificate when it serves TLS."""
        if password is None and username is None:
            password = self.requirepass
        if self.tls is not None:
            options.setdefault("ssl", True)
            options.setdefault("ssl_ca_certs", str(self.tls.ca))
            if self.tls.client_cert is not None:
                options.setdefault("ssl_certfile", str(self.tls.client_cert))
                options.setdefault("ssl_keyfile", str(self.tls.client_key))
        return redis.Redis(
            host="127.0.0.1", port=self.port, username=username, password=password, **options
        )


def _quoted(value: str) -> str:
    """A redis.conf argument: double-quoted, with backslashes and quotes escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@contextmanager
def running(server: RedisServer) -> Iterator[RedisServer]:
    """``server`` started for the block, stopped after it."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
