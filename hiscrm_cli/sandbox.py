"""``hiscrm sandbox …``: run the sandbox platform site and act on it as a phone or a fan."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from hiscrm_sandbox.site import MAX_BURST
from hiscrm_sandbox.site import serve as make_server

from .common import EXIT_FAILED, EXIT_USAGE, console, fail
from .terminal import safe

app = typer.Typer(help="The offline sandbox platform site.", no_args_is_help=True)
Url = Annotated[
    str,
    typer.Option("--url", envvar="HISCRM_SANDBOX_URL", help="The sandbox site's address."),
]
DEFAULT_URL = "http://127.0.0.1:8765"


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8765,
    qr_ttl: Annotated[float, typer.Option(min=0.5, help="Seconds a QR code stays valid.")] = 60.0,
    max_refresh: Annotated[int, typer.Option(min=0, help="QR refreshes before failing.")] = 3,
) -> None:
    """Serve the sandbox site until Ctrl-C."""
    try:
        server = make_server(host, port, qr_ttl, max_refresh)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    console.print(f"sandbox site on {server.base_url} (Ctrl-C stops it)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _post(url: str, path: str, doc: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        fail(f"the sandbox site said: {detail}", EXIT_FAILED)
    except (urllib.error.URLError, OSError) as exc:
        fail(f"cannot reach the sandbox site at {url}: {exc}", EXIT_USAGE)


@app.command()
def scan(
    user_id: Annotated[str, typer.Option(help="The platform user id to log in as.")],
    nickname: Annotated[str, typer.Option(help="Profile nickname.")] = "",
    confirm: Annotated[bool, typer.Option(help="Confirm on the phone after scanning.")] = True,
    url: Url = DEFAULT_URL,
) -> None:
    """Scan the newest pending QR code, as the phone app would."""
    doc = _post(url, "/api/scan", {"user_id": user_id, "nickname": nickname, "confirm": confirm})
    console.print(f"scanned login {doc['token']}: {doc['status']}")


@app.command()
def expire(
    user_id: Annotated[str, typer.Option(help="Whose browser sessions end.")],
    url: Url = DEFAULT_URL,
) -> None:
    """End a user's browser sessions, as the platform does when a login expires."""
    doc = _post(url, "/api/sessions/expire", {"user_id": user_id})
    console.print(f"{doc['expired']} session(s) of {safe(user_id)} expired")


Count = Annotated[
    int,
    typer.Option(min=1, max=MAX_BURST, help='Post a burst of N at once: "TEXT 1" … "TEXT N".'),
]


def _post_item(kind: str, text: str, user_id: str, author: str, url: str, count: int) -> str:
    doc: dict[str, Any] = {"user_id": user_id, "text": text, "author": author}
    if count == 1:
        return f"{_noun(kind, 1)} {_post(url, f'/api/{kind}', doc)['id']}"
    got = _post(url, f"/api/{kind}", {**doc, "count": count})
    return f"{got['count']} {_noun(kind, got['count'])} ({got['first']} … {got['last']})"


def _noun(kind: str, n: int) -> str:
    one = "comment" if kind == "comments" else "message"
    return one if n == 1 else f"{one}s"


@app.command("post-comment")
def post_comment(
    text: Annotated[str, typer.Argument()],
    user_id: Annotated[str, typer.Option(help="Whose content gets the comment.")],
    author: Annotated[str, typer.Option(help="Who writes it.")] = "fan",
    count: Count = 1,
    url: Url = DEFAULT_URL,
) -> None:
    """Post a comment on a user's content."""
    console.print(f"{_post_item('comments', text, user_id, author, url, count)} posted")


@app.command("send-dm")
def send_dm(
    text: Annotated[str, typer.Argument()],
    user_id: Annotated[str, typer.Option(help="Who receives the message.")],
    author: Annotated[str, typer.Option(help="Who sends it.")] = "fan",
    count: Count = 1,
    url: Url = DEFAULT_URL,
) -> None:
    """Send a direct message to a user."""
    console.print(f"{_post_item('dms', text, user_id, author, url, count)} sent")
