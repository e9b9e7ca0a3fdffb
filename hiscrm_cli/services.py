"""``hiscrm master`` and ``hiscrm worker``: the long-running services.

The services (and Playwright, Prometheus) are imported when a service starts, so every
other command starts without them."""

from __future__ import annotations

from typing import Annotated

import typer

from hiscrm_master.settings import MasterSettings
from hiscrm_worker.settings import WorkerSettings

from .common import RedisUrl, build, fail, redis_client, run, serve_until_signalled


def master(
    redis_url: RedisUrl = None,
    master_id: Annotated[
        str | None, typer.Option("--id", envvar="HISCRM_MASTER_ID", help="Master id.")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(envvar="HISCRM_METRICS_PORT", help="Serve Prometheus metrics on this port."),
    ] = None,
) -> None:
    """Run the Master: ACKs, worker events, retries, liveness and placement."""
    settings = build(
        MasterSettings, redis_url=redis_url, master_id=master_id, metrics_port=metrics_port
    )

    async def main() -> None:
        from hiscrm_master.service import Master

        async with redis_client(settings) as redis:
            await serve_until_signalled(Master(settings, redis).run)

    run(main)


def worker(
    redis_url: RedisUrl = None,
    worker_id: Annotated[
        str | None,
        typer.Option("--id", envvar="HISCRM_WORKER_ID", help="Worker id (default: host name)."),
    ] = None,
    capacity: Annotated[
        int | None, typer.Option(envvar="HISCRM_CAPACITY", help="Most accounts it runs.")
    ] = None,
    chromium: Annotated[
        str | None, typer.Option(envvar="HISCRM_CHROMIUM", help="Chromium binary.")
    ] = None,
    sandbox_url: Annotated[
        str | None, typer.Option(envvar="HISCRM_SANDBOX_URL", help="The sandbox site.")
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(envvar="HISCRM_DATA_DIR", help="Browser sessions and Chromium files."),
    ] = None,
) -> None:
    """Run a worker: one monitor task per assigned account, hot-swapped on update."""
    settings = build(
        WorkerSettings,
        redis_url=redis_url,
        worker_id=worker_id,
        capacity=capacity,
        chromium=chromium,
        sandbox_url=sandbox_url,
        data_dir=data_dir,
    )

    async def main() -> None:
        from hiscrm_worker.platforms import PlatformError
        from hiscrm_worker.service import Worker

        async with redis_client(settings) as redis:
            try:
                service = Worker(settings, redis)
            except PlatformError as exc:
                fail(str(exc))
            await service.claim()  # a second process with this id stops here, exit 2
            await serve_until_signalled(service.run)

    run(main)
