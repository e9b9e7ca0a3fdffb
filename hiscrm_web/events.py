"""Server-sent events: the fleet page refreshes its rows when something happened (an
update's outcome, a worker's heartbeat) and at least every few seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hiscrm_bus.pending import PendingTracker

from .app import console

# the longest a fleet page shows without a refresh (heartbeats, crawls)
FLEET_REFRESH_S = 3.0


def sse(event: str, data: str = "") -> bytes:
    """One server-sent event; ``data`` may span lines."""
    lines = "".join(f"data: {line}\n" for line in (data.splitlines() or [""]))
    return f"event: {event}\n{lines}\n".encode()


async def fleet_events(request: Request) -> Response:
    c = console(request)
    tracker = PendingTracker(c.redis, c.settings)

    async def stream() -> AsyncIterator[bytes]:
        cursor = await tracker.last_outcome_id()
        block_ms = int(FLEET_REFRESH_S * 1000)
        while not await request.is_disconnected():
            # an outcome (or nothing for a while): refresh
            _found, cursor = await tracker.outcomes_after(cursor, block_ms / 1000)
            yield sse("fleet")

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
