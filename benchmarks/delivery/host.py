"""A worker host: several ``Worker``s with the synthetic platform in one process.

    python -m benchmarks.delivery.host REDIS_URL KEY_PREFIX DATA_DIR WORKER_ID...

Prints ``ready`` once every worker has started (its first reconcile done), then runs
until terminated. The process benchmarks start several of these, so the workers of a
fleet live in separate processes, as they do in production.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import anyio

from .infra import ready_until_signalled, synthetic_workers


async def host(url: str, key_prefix: str, data_dir: Path, worker_ids: list[str]) -> None:
    fleet, clients = await synthetic_workers(url, key_prefix, data_dir, worker_ids)
    async with anyio.create_task_group() as tg:
        for w in fleet:
            await tg.start(w.run)
        await ready_until_signalled()
        tg.cancel_scope.cancel()
    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
        for client in clients:
            await client.aclose()


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="  [host] %(levelname)s %(name)s: %(message)s"
    )
    url, key_prefix, data_dir, *worker_ids = sys.argv[1:]
    anyio.run(host, url, key_prefix, Path(data_dir), worker_ids, backend="asyncio")


if __name__ == "__main__":
    main()
