"""``hiscrm session …``: the key that seals browser sessions in Redis (workers only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, fail
from .terminal import safe

app = typer.Typer(help="Browser sessions: the key workers seal them with.", no_args_is_help=True)


@app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="The key file to make (mode 0600).")],
) -> None:
    """Make a session key. Give the same file to every worker (HISCRM_SESSION_KEY_FILE);
    the Master and the CLI never need it. An existing file is never overwritten."""
    from hiscrm_worker.vault import write_key_file  # cryptography: only when used

    try:
        write_key_file(out)
    except FileExistsError:
        fail(f"{out} exists already; a new key would make every stored session unreadable")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    console.print(
        f"session key written to {safe(str(out))} (mode 0600); run every worker with "
        f"HISCRM_SESSION_KEY_FILE={safe(str(out))}",
        highlight=False,
    )
