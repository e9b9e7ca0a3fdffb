"""Run the real ``hiscrm`` command in a process, against a test's Redis and prefix."""

from __future__ import annotations

import os
import sys

import anyio

from hiscrm_bus.settings import BusSettings


def cli_env(settings: BusSettings) -> dict[str, str]:
    """The environment ``hiscrm`` runs in for a test: its Redis and prefix, no colours,
    no line wrapping (each value stays on one line)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env |= {
        "HISCRM_REDIS_URL": settings.redis_url,
        "HISCRM_KEY_PREFIX": settings.key_prefix,
        "COLUMNS": "1000",
        "NO_COLOR": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    return env


async def hiscrm(settings: BusSettings, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``hiscrm ARGS`` without colours or line wrapping."""
    result = await anyio.run_process(
        [sys.executable, "-m", "hiscrm_cli", *args], env=cli_env(settings), check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()
