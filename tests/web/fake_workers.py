"""Workers in name only for the console's tests: they answer every config update
published to them on their control channel through the library's pending tracker, as
the Master records a real worker's outcome: an ACK that applied it, one that rejected
it with a reason, or (as the sweeper does after the last attempt) a failure. What
they saw is kept for the test to look at."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
from redis.asyncio import Redis

from hiscrm_bus.messages import AccountConfigUpdate, AccountConfigUpdateAck, decode
from hiscrm_bus.pending import PendingTracker
from hiscrm_bus.settings import BusSettings

# the notices a worker only acts on (not tracked, nothing to answer)
NOT_ANSWERED = ("removed", "unassignment")
Answer = tuple[Literal["applied", "rejected", "failed"], str]
APPLIED: Answer = ("applied", "")


@asynccontextmanager
async def answering(
    settings: BusSettings, answers: Mapping[str, Answer]
) -> AsyncIterator[list[AccountConfigUpdate]]:
    """Each worker id of ``answers`` answers every update sent to it as its answer
    says: applied, rejected with the reason, or failed with the reason. Subscribed
    before this yields."""
    client = Redis.from_url(settings.redis_url)
    pubsub = client.pubsub()
    channels = {settings.keys.control(w): w for w in answers}
    await pubsub.subscribe(*channels)
    confirmed = 0
    with anyio.fail_after(10):
        while confirmed < len(channels):
            reply: Any = await pubsub.get_message(timeout=5)
            if reply is not None and reply["type"] == "subscribe":
                confirmed += 1
    tracker = PendingTracker(client, settings)
    seen: list[AccountConfigUpdate] = []

    async def answer() -> None:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            update = decode(message["data"])
            if not isinstance(update, AccountConfigUpdate) or update.reason in NOT_ANSWERED:
                continue
            worker = channels[message["channel"].decode()]
            seen.append(update)
            status, reason = answers[worker]
            if status == "failed":
                pending = await tracker.get(update.update_id, update.account_id)
                assert pending is not None
                await tracker.cancel(pending, reason)
                continue
            version = update.config_version
            ack = AccountConfigUpdateAck(
                sender=worker,
                update_id=update.update_id,
                account_id=update.account_id,
                worker_id=worker,
                applied_version=version if status == "applied" else version - 1,
                seen_version=version,
                ok=status == "applied",
                error=reason or None,
            )
            await tracker.resolve(ack)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(answer)
            yield seen
            tg.cancel_scope.cancel()
    finally:
        await pubsub.aclose()
        await client.aclose()
