"""A host of the floor's bare subscribers (``throughput.BareSubscriber``) in one process.

    python -m benchmarks.delivery.floor_host REDIS_URL KEY_PREFIX K...

Subscribes one bare subscriber per number K (channel ``KEY_PREFIX control:K``), prints
``ready`` once all are subscribed, then runs until terminated: the floor of the
processes run spread over host processes as hiscrm's workers are
(``benchmarks.delivery.host``).
"""

from __future__ import annotations

import sys

import anyio

from .infra import ready_until_signalled
from .throughput import BareSubscriber


async def host(url: str, key_prefix: str, numbers: list[int]) -> None:
    subscribers = [BareSubscriber(url, key_prefix, k) for k in numbers]
    try:
        async with anyio.create_task_group() as tg:
            for subscriber in subscribers:
                await tg.start(subscriber.run)
            await ready_until_signalled()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for subscriber in subscribers:
                await subscriber.aclose()


def main() -> None:
    url, key_prefix, *numbers = sys.argv[1:]
    anyio.run(host, url, key_prefix, [int(k) for k in numbers], backend="asyncio")


if __name__ == "__main__":
    main()
