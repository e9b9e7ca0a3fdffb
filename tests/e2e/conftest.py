from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, running_stack
from tests.redis_server import RedisServer

_n = itertools.count()


@pytest.fixture
def stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(redis_server.url, f"e{next(_n)}:", tmp_path) as s:
        yield s


@pytest.fixture
def own_stack(own_redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(own_redis_server.url, "hiscrm:", tmp_path) as s:
        yield s
