"""Cluster URLs (``redis+cluster://``): parsed, masked and checked like ``redis://`` ones,
and a client of a real local cluster (tests/redis_cluster.py) that connects, or fails
in the same one sentence as a client of one Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from hiscrm_bus.connection import (
    call,
    connect,
    is_cluster,
    is_transient,
    make_client,
    slot_owner,
    text,
)
from hiscrm_bus.errors import BusUnavailable, ConfigurationError
from hiscrm_bus.keys import Keys
from hiscrm_bus.settings import BusSettings, masked_url, url_password, url_username
from tests.redis_cluster import RedisCluster, running_cluster
from tests.redis_server import RedisServer, free_port

SECRET = "s3cret-Pa55"


def cluster_url(cluster: RedisCluster, *, user: str = "", count: int = 6) -> str:
    nodes = ",".join(f"{host}:{port}" for host, port in cluster.startup_nodes[:count])
    return f"redis+cluster://{user + '@' if user else ''}{nodes}/"


# -- the URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown", "password", "user"),
    [
        ("redis+cluster://h1:7000,h2:7001/", "redis+cluster://h1:7000,h2:7001/", None, "default"),
        ("redis+cluster://w1@h1:7000,h2:7001/", "redis+cluster://w1@h1:7000,h2:7001/", None, "w1"),
        (
            "rediss+cluster://admin:hunter2@h1:7000,h2:7001/",
            "rediss+cluster://admin:***@h1:7000,h2:7001/",
            "hunter2",
            "admin",
        ),
        ("redis+cluster://a:p,w@x@h1,h2:1/", "redis+cluster://a:***@h1,h2:1/", "p,w@x", "a"),
        ("redis+cluster://a:p/w?x#y@h:1,h:2", "redis+cluster://a:***@h:1,h:2", "p/w?x#y", "a"),
        (
            "redis+cluster://h1:1,h2:2/?password=hunter2",
            "redis+cluster://h1:1,h2:2/?password=***",
            "hunter2",
            "default",
        ),
    ],
)
def test_cluster_urls_are_masked_like_any_other(
    url: str, shown: str, password: str | None, user: str
) -> None:
    assert masked_url(url) == shown
    assert url_password(url) == password
    assert url_username(url) == user


@pytest.mark.parametrize(
    ("url", "nodes", "tls"),
    [
        ("redis+cluster://h1:7000,h2:7001/", [("h1", 7000), ("h2", 7001)], False),
        ("redis+cluster://w1@h1,h2:7001", [("h1", 6379), ("h2", 7001)], False),
        ("REDISS+CLUSTER://h1:7000/0", [("h1", 7000)], True),
        ("rediss+cluster://[::1]:7000,[fe80::1]/", [("::1", 7000), ("fe80::1", 6379)], True),
        ("redis+cluster://h1:7000/?db=0", [("h1", 7000)], False),
    ],
)
def test_a_cluster_url_names_its_startup_nodes(
    url: str, nodes: list[tuple[str, int]], tls: bool
) -> None:
    settings = BusSettings(redis_url=url, key_prefix="p:")
    assert settings.cluster
    assert settings.tls is tls
    assert settings.startup_nodes == nodes
    assert settings.keys == Keys("p:", cluster=True)


@pytest.mark.parametrize(
    ("url", "nodes", "tls"),
    [
        ("redis://127.0.0.1:6379/0", [("127.0.0.1", 6379)], False),
        ("rediss://h/0", [("h", 6379)], True),
        ("unix:///run/redis.sock", [], False),
    ],
)
def test_other_urls_are_no_cluster(url: str, nodes: list[tuple[str, int]], tls: bool) -> None:
    settings = BusSettings(redis_url=url, key_prefix="p:")
    assert not settings.cluster
    assert settings.tls is tls
    assert settings.startup_nodes == nodes
    assert settings.keys == Keys("p:")


@pytest.mark.parametrize(
    ("url", "sentence"),
    [
        ("redis+cluster://h1:7000/3", "names a database: a Redis Cluster has database 0 only"),
        ("redis+cluster://h1:7000/?db=2", "has the option 'db': a cluster URL takes none"),
        ("redis+cluster://h1:7000,h2:x/", r"does not name its nodes as host:port\[,host:port…\]"),
        ("redis+cluster://h1:7000,h2:70000/", "does not name its nodes"),
        ("redis+cluster://h1:7000,,h2:1/", "does not name its nodes"),
        ("redis+cluster:///", "does not name its nodes"),
        ("redis+cluster://[::1/", "does not name its nodes"),
        ("redis+clusters://h1:7000/", r"must start with redis://, .* redis\+cluster://"),
    ],
)
def test_a_bad_cluster_url_is_one_sentence(url: str, sentence: str) -> None:
    with pytest.raises(ValidationError, match=sentence):
        BusSettings(redis_url=url)


def test_a_password_is_in_no_cluster_url_message() -> None:
    for bad in (
        f"redis+cluster://admin:{SECRET}@h1:7000,h2:x/",
        f"redis+cluster://admin:{SECRET}@h1:7000/?db=1",
        f"redis+cluster://admin:{SECRET}@h1:7000/5",
    ):
        with pytest.raises(ValidationError) as caught:
            BusSettings(redis_url=bad)
        assert SECRET not in str(caught.value)
        assert "admin:***@" in str(caught.value)
    # an unescaped / in the password stays in it (the user info ends at the last @)
    settings = BusSettings(redis_url=f"redis+cluster://admin:{SECRET}/x@h1:7000/")
    assert SECRET not in repr(settings)
    assert settings.shown_url == "redis+cluster://admin:***@h1:7000/"
    assert settings.startup_nodes == [("h1", 7000)]
    assert url_password(settings.redis_url) == f"{SECRET}/x"


def test_tls_files_need_a_tls_url_cluster_or_not(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = BusSettings(redis_url="rediss+cluster://h1:7000/", redis_ca_file=ca)
    assert settings.connection_options() == {"ssl_ca_certs": str(ca)}
    with pytest.raises(ValidationError, match="need a rediss:// Redis URL"):
        BusSettings(redis_url="redis+cluster://h1:7000/", redis_ca_file=ca)


def test_cluster_errors_that_pass_are_transient() -> None:
    assert is_transient(rexc.SlotNotCoveredError('Slot "1" is not covered by the cluster.'))
    assert is_transient(rexc.ClusterError("TTL exhausted."))
    assert is_transient(rexc.ClusterDownError("CLUSTERDOWN The cluster is down"))
    assert is_transient(rexc.MasterDownError("MASTERDOWN Link with MASTER is down"))
    assert is_transient(rexc.RedisClusterException("Redis Cluster cannot be connected. ..."))
    assert not is_transient(rexc.RedisClusterException("No targets were found"))
    assert not is_transient(rexc.ClusterCrossSlotError("CROSSSLOT Keys in request"))


async def test_call_turns_a_cluster_that_is_not_there_into_bus_unavailable() -> None:
    async def fails(exc: BaseException) -> None:
        raise exc

    for exc in (
        rexc.SlotNotCoveredError("not covered"),
        rexc.ClusterError("TTL exhausted."),
        rexc.RedisClusterException("Redis Cluster cannot be connected. Please provide"),
        rexc.MaxConnectionsError("Too many connections"),
    ):
        with pytest.raises(BusUnavailable):
            await call(fails(exc))
    with pytest.raises(rexc.RedisClusterException):
        await call(fails(rexc.RedisClusterException("No targets were found")))


# -- a real cluster --------------------------------------------------------------------

pytestmark = [pytest.mark.real, pytest.mark.xdist_group("cluster-connection")]
USERS = [
    "user w1 on >w1-pw ~* &* +@all",
    # what a worker's user needs of the cluster, minus the map
    "user no-map on >nm-pw ~* &* +@all -cluster|slots",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    with running_cluster(RedisCluster(workdir, extra_config=USERS)) as cluster:
        yield cluster


async def _refusal(settings: BusSettings) -> str:
    with pytest.raises((ConfigurationError, BusUnavailable)) as caught:
        client = await connect(settings)
        await client.aclose()
    return str(caught.value)


async def test_connect_to_a_cluster(cluster: RedisCluster) -> None:
    settings = BusSettings(redis_url=cluster_url(cluster, count=1))
    client = await connect(settings)
    try:
        assert is_cluster(client)
        assert isinstance(client, AsyncRedisCluster)
        # it found every primary, not only the nodes of the URL
        known = {node.port for node in client.get_nodes()}
        assert set(cluster.primaries()) <= known
        key = settings.keys.control("w1")
        assert await client.set(key, "x")
        assert await client.get(key) == b"x"
        assert await client.spublish(key, "hello") == 0
        host, port = await slot_owner(client, key)
        assert (host, port) == ("127.0.0.1", cluster.owner_of(client.keyslot(key)))
        assert await client.delete(key) == 1
    finally:
        await client.aclose()
    one = make_client(BusSettings(redis_url=f"redis://127.0.0.1:{cluster.ports[0]}/0"))
    try:
        assert not is_cluster(one)
    finally:
        await one.aclose()


async def test_user_and_password_of_a_cluster(cluster: RedisCluster, tmp_path: Path) -> None:
    file = tmp_path / "pw"
    file.write_text("w1-pw\n")
    settings = BusSettings(redis_url=cluster_url(cluster, user="w1"), redis_password_file=file)
    client = await connect(settings)
    try:
        # (str here, where one Redis answers bytes: the cluster client's reply callbacks)
        assert text(await client.acl_whoami()) == "w1"
    finally:
        await client.aclose()


async def test_a_dead_cluster_is_one_sentence() -> None:
    settings = BusSettings(
        redis_url=f"redis+cluster://admin:{SECRET}@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/"
    )
    said = await _refusal(settings)
    assert said.startswith("Cannot reach Redis at redis+cluster://admin:***@127.0.0.1:")
    assert "(is redis-server running?" in said
    assert SECRET not in said


async def test_a_wrong_password_is_an_authentication_failure(cluster: RedisCluster) -> None:
    settings = BusSettings(redis_url=cluster_url(cluster, user="w1"), redis_password=SECRET)
    said = await _refusal(settings)
    assert said.startswith("authentication failed for user w1 at redis+cluster://w1@127.0.0.1:")
    assert SECRET not in said
    settings = BusSettings(redis_url=cluster_url(cluster, user="w1"))
    said = await _refusal(settings)
    assert "requires a password and none was given" in said


async def test_a_user_that_may_not_read_the_map_is_told_which_rules(
    cluster: RedisCluster,
) -> None:
    settings = BusSettings(redis_url=cluster_url(cluster, user="no-map"), redis_password="nm-pw")
    said = await _refusal(settings)
    assert said.startswith("user no-map at redis+cluster://no-map@127.0.0.1:")
    assert "may not run a command a cluster client needs" in said
    assert "+cluster|slots" in said
    assert "nm-pw" not in said


async def test_a_cluster_url_of_a_single_redis_says_so(redis_server: RedisServer) -> None:
    url = redis_server.url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0] + "/"
    said = await _refusal(BusSettings(redis_url=url))
    assert said == (
        f"Redis at {url} is not a cluster (cluster mode is not enabled): name one Redis "
        "with redis:// or rediss://"
    )


async def test_a_single_redis_client_still_is_a_redis(redis_server: RedisServer) -> None:
    client = await connect(BusSettings(redis_url=redis_server.url))
    try:
        assert type(client) is Redis
        assert not is_cluster(client)
    finally:
        await client.aclose()
