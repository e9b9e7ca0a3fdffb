"""Settings shared by every hiscrm process, read from ``HISCRM_*`` environment variables.

Credentials: the user name comes from the URL (``redis://worker-w1@host:6379/0``), the
password from ``HISCRM_REDIS_PASSWORD_FILE`` (or ``HISCRM_REDIS_PASSWORD``), so it never
has to be on a command line. A password in the URL still works. Every URL that is shown
anywhere goes through ``masked_url`` first.

A Redis Cluster is named by ``redis+cluster://[user@]host:port[,host:port…]/`` (TLS:
``rediss+cluster://``): any of its nodes, the client finds the others. Its user and
password rules are those of ``redis://``; it has database 0 only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .keys import Keys

MASK = "***"
DEFAULT_PORT = 6379
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
TLS_SCHEMES = ("rediss", "rediss+cluster")
_QUERY_PASSWORD = re.compile(r"(?i)([?&;]password=)[^&;#]*")


def _split_auth(url: str) -> tuple[str, str | None, str]:
    """``(scheme://, userinfo or None, rest)``; userinfo is everything up to the *last*
    ``@``, so a password with an unescaped ``/``, ``?`` or ``@`` in it stays inside it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return scheme + sep, None, rest
    return scheme + sep, userinfo, host


def masked_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (the user name stays).

    Never raises, whatever the string: it is used on URLs that failed to parse too."""
    head, userinfo, host = _split_auth(url)
    rest = _QUERY_PASSWORD.sub(r"\g<1>" + MASK, host)
    if userinfo is None:
        return head + rest
    user, colon, _password = userinfo.partition(":")
    return f"{head}{user}{':' + MASK if colon else ''}@{rest}"


def url_password(url: str) -> str | None:
    """The password written in ``url`` (userinfo or ``?password=``), or None."""
    _head, userinfo, host = _split_auth(url)
    _user, colon, password = (userinfo or "").partition(":")
    if colon:
        return unquote(password)
    match = re.search(r"(?i)[?&;]password=([^&;#]*)", host)
    return unquote(match.group(1)) if match else None


def url_username(url: str) -> str:
    """The Redis user the URL names; ``default`` when it names none."""
    _head, userinfo, _host = _split_auth(url)
    user = unquote((userinfo or "").partition(":")[0])
    return user or "default"


def _scheme(url: str) -> str:
    scheme, sep, _rest = url.partition("://")
    return scheme.lower() if sep else ""


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    return _scheme(url) in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` of every node a cluster URL names (port 6379 when omitted).

    ValueError, in one sentence that quotes no password, when the node list, a port or
    the database is not valid."""
    shown = masked_url(url)
    _head, _userinfo, rest = _split_auth(url)
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    hosts, tail = rest[:end], rest[end:]
    path = tail.split("?", 1)[0].split("#", 1)[0]
    query = tail.partition("?")[2].partition("#")[0]
    if path not in ("", "/", "/0"):
        msg = (
            f"Redis URL {shown!r} names a database: a Redis Cluster has database 0 "
            "only (end the URL with / or /0)"
        )
        raise ValueError(msg)
    for option in filter(None, re.split(r"[&;]", query)):
        name, _eq, value = option.partition("=")
        name = name.lower()
        if name != "password" and (name, value) != ("db", "0"):
            msg = (
                f"Redis URL {shown!r} has the option {name!r}: a cluster URL takes none "
                "(HISCRM_REDIS_* settings give the password and TLS files)"
            )
            raise ValueError(msg)
    nodes = []
    for entry in hosts.split(","):
        node = _host_port(entry.strip())
        if node is None:
            # the message would quote the bad entry, which may be part of a password
            msg = (
                f"Redis URL {shown!r} does not name its nodes as host:port[,host:port…] "
                "(a password with / ? # @ in it must be percent-encoded, or given in "
                "HISCRM_REDIS_PASSWORD_FILE)"
            )
            raise ValueError(msg)
        nodes.append(node)
    return nodes


def _host_port(entry: str) -> tuple[str, int] | None:
    """``host[:port]`` or ``[v6]:port`` as (host, port); None when it is neither."""
    if entry.startswith("["):
        host, bracket, after = entry[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return None
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_ = entry.partition(":")
        port_text = port_text_ if colon else None
    if not host or any(c in host for c in " @/?#"):
        return None
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


class BusSettings(BaseSettings):
    # hide_input_in_errors: a rejected URL may hold a password; messages mask it themselves
    model_config = SettingsConfigDict(
        env_prefix="HISCRM_", extra="ignore", hide_input_in_errors=True
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    # the password of the URL's user (the URL names the user: redis://worker-w1@host/0);
    # the file is read once, at start, its trailing newline stripped
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None
    # TLS (rediss:// URLs): the CA that signed the server's certificate, and the client
    # certificate and key when the server asks for one
    redis_ca_file: Path | None = None
    redis_cert_file: Path | None = None
    redis_key_file: Path | None = None
    key_prefix: str = Field("hiscrm:", min_length=1)
    # how long a connect / command may take before Redis counts as unreachable
    redis_timeout_s: float = Field(5.0, ge=2)
    # the subscriber's own liveness check on its pub/sub connection
    ping_interval_s: float = Field(5.0, gt=0)
    ping_timeout_s: float = Field(3.0, gt=0)
    # reconnect backoff of every resilient loop
    backoff_min_s: float = Field(0.05, gt=0)
    backoff_max_s: float = Field(5.0, gt=0)
    # pending config updates
    ack_timeout_s: float = Field(5.0, gt=0)
    retry_backoff: float = Field(2.0, ge=1)
    max_attempts: int = Field(4, ge=1)
    # stream trimming (approximate MAXLEN)
    stream_maxlen: int = Field(100_000, ge=100)
    deadletter_maxlen: int = Field(10_000, ge=10)
    deadletter_raw_bytes: int = Field(4096, ge=64)
    # stream consumers: an entry idle this long in a dead consumer's PEL is claimed
    claim_idle_s: float = Field(30.0, gt=0)

    _password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        shown = masked_url(value)
        if is_cluster_url(value):
            cluster_nodes(value)
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            msg = (
                f"Redis URL {shown!r} must start with redis://, rediss://, unix:// or "
                "(a cluster) redis+cluster://, rediss+cluster://"
            )
            raise ValueError(msg)
        if parts.scheme != "unix" and not parts.hostname:
            msg = f"Redis URL {shown!r} names no host"
            raise ValueError(msg)
        try:
            parts.port  # noqa: B018 -- it raises on a port that is not a number
        except ValueError:
            # the message would quote the bad port, which may be part of a password
            msg = (
                f"Redis URL {shown!r} has no valid port (a password with / ? # @ in it "
                "must be percent-encoded, or given in HISCRM_REDIS_PASSWORD_FILE)"
            )
            raise ValueError(msg) from None
        return value

    @model_validator(mode="after")
    def _read_credentials(self) -> Self:
        if self.redis_password is not None and self.redis_password_file is not None:
            msg = "set HISCRM_REDIS_PASSWORD or HISCRM_REDIS_PASSWORD_FILE, not both"
            raise ValueError(msg)
        password = self.redis_password
        if self.redis_password_file is not None:
            password = SecretStr(read_password_file(self.redis_password_file))
        if password is not None and url_password(self.redis_url) is not None:
            msg = (
                f"the Redis URL {masked_url(self.redis_url)} carries a password and "
                "HISCRM_REDIS_PASSWORD(_FILE) gives one too: keep only one"
            )
            raise ValueError(msg)
        self._password = password
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        files = {
            "HISCRM_REDIS_CA_FILE": self.redis_ca_file,
            "HISCRM_REDIS_CERT_FILE": self.redis_cert_file,
            "HISCRM_REDIS_KEY_FILE": self.redis_key_file,
        }
        given = [name for name, path in files.items() if path is not None]
        if given and not self.tls:
            msg = (
                f"{' and '.join(given)} need a rediss:// Redis URL (or rediss+cluster://), not "
                f"{masked_url(self.redis_url)} (plain TCP would ignore them)"
            )
            raise ValueError(msg)
        if self.redis_key_file is not None and self.redis_cert_file is None:
            msg = "HISCRM_REDIS_KEY_FILE is set without HISCRM_REDIS_CERT_FILE"
            raise ValueError(msg)
        for name, path in files.items():
            if path is not None:
                _check_readable(name, path)
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # a repr lands in logs and tracebacks: show the URL masked, like everywhere else
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name == "redis_url" else value

    @property
    def keys(self) -> Keys:
        """Every name, hash-tagged when the URL names a cluster."""
        return Keys(self.key_prefix, cluster=self.cluster)

    @property
    def cluster(self) -> bool:
        """True when ``redis_url`` names a Redis Cluster (``redis(s)+cluster://``)."""
        return is_cluster_url(self.redis_url)

    @property
    def tls(self) -> bool:
        """True for ``rediss://`` and ``rediss+cluster://`` URLs."""
        return _scheme(self.redis_url) in TLS_SCHEMES

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of each node a cluster URL names; for any other URL its one
        host (none for a unix socket)."""
        if self.cluster:
            return cluster_nodes(self.redis_url)
        parts = urlsplit(self.redis_url)
        if parts.scheme == "unix" or not parts.hostname:
            return []
        return [(parts.hostname, parts.port or DEFAULT_PORT)]

    @property
    def redis_user(self) -> str:
        """The Redis user these settings log in as."""
        return url_username(self.redis_url)

    @property
    def shown_url(self) -> str:
        """``redis_url`` as it may be shown: password masked."""
        return masked_url(self.redis_url)

    def password(self) -> str | None:
        """The password from HISCRM_REDIS_PASSWORD(_FILE), not the URL's."""
        return None if self._password is None else self._password.get_secret_value()

    def connection_options(self) -> dict[str, Any]:
        """redis-py keyword arguments for the credentials and TLS files; the URL itself
        brings the user name (and a password, when it has one)."""
        options: dict[str, Any] = {}
        if self._password is not None:
            options["password"] = self._password.get_secret_value()
        if self.redis_ca_file is not None:
            options["ssl_ca_certs"] = str(self.redis_ca_file)
        if self.redis_cert_file is not None:
            options["ssl_certfile"] = str(self.redis_cert_file)
        if self.redis_key_file is not None:
            options["ssl_keyfile"] = str(self.redis_key_file)
        return options


def read_password_file(
    path: Path, what: str = "Redis", setting: str = "HISCRM_REDIS_PASSWORD_FILE"
) -> str:
    """The password in ``path`` (its trailing newline stripped); ValueError, in one
    sentence naming ``what`` it is for and the ``setting`` that named the file, when the
    file cannot be read or is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        msg = f"cannot read the {what} password file {path} ({setting}): {reason}"
        raise ValueError(msg) from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        msg = f"the {what} password file {path} ({setting}) is empty"
        raise ValueError(msg)
    return password


def _check_readable(name: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        msg = f"cannot read {name} {path}: {exc.strerror or exc}"
        raise ValueError(msg) from None
