"""``hiscrm sandbox …``: run the sandbox platform site and act on it as a phone or a fan."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer

from hiscrm_sandbox.creator import DRIFTABLE
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
    # SIGTERM stops it like Ctrl-C: as a container's PID 1 a signal without a handler
    # does nothing, and `docker stop` would wait out its grace period and SIGKILL it
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


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


def _post_item(
    kind: str, text: str, user_id: str, author: str, url: str, count: int, **where: str | None
) -> str:
    doc: dict[str, Any] = {"user_id": user_id, "text": text, "author": author}
    doc |= {k: v for k, v in where.items() if v}
    noun = "reply" if where.get("reply_to") else "comment" if kind == "comments" else "message"
    if count == 1:
        return f"{noun} {_post(url, f'/api/{kind}', doc)['id']}"
    got = _post(url, f"/api/{kind}", {**doc, "count": count})
    nouns = "replies" if noun == "reply" else f"{noun}s"
    return f"{got['count']} {nouns} ({got['first']} … {got['last']})"


@app.command("post-comment")
def post_comment(
    text: Annotated[str, typer.Argument()],
    user_id: Annotated[str, typer.Option(help="Whose content gets the comment.")],
    author: Annotated[str, typer.Option(help="Who writes it.")] = "fan",
    count: Count = 1,
    work: Annotated[
        str | None, typer.Option(help="The work it is on (default: the user's first).")
    ] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Post a comment on a user's content."""
    posted = _post_item("comments", text, user_id, author, url, count, work_id=work)
    console.print(f"{posted} posted")


@app.command("post-reply")
def post_reply(
    text: Annotated[str, typer.Argument()],
    to: Annotated[str, typer.Option(help="The comment it replies to (its id).")],
    user_id: Annotated[str, typer.Option(help="Whose content has the comment.")],
    author: Annotated[str, typer.Option(help="Who writes it.")] = "fan",
    count: Count = 1,
    url: Url = DEFAULT_URL,
) -> None:
    """Reply to a comment on a user's content."""
    posted = _post_item("comments", text, user_id, author, url, count, reply_to=to)
    console.print(f"{posted} to {safe(to)} posted")


@app.command("post-work")
def post_work(
    title: Annotated[str, typer.Argument()],
    user_id: Annotated[str, typer.Option(help="Whose work it is.")],
    url: Url = DEFAULT_URL,
) -> None:
    """Publish a work (a video) for a user: the newest in the creator centre's picker."""
    work = _post(url, "/api/works", {"user_id": user_id, "title": title})
    console.print(f"work {safe(work['item_id'])} posted")


Drift = Annotated[
    str,
    typer.Argument(help="What answers: works, comments, replies or contacts."),
]
Mode = Annotated[
    str,
    typer.Option(
        help="shape: the list renamed; error: a status_code other than 0; off: as before."
    ),
]


@app.command()
def drift(what: Drift, mode: Mode = "shape", url: Url = DEFAULT_URL) -> None:
    """Make the site's creator API answer as if the site changed (to see the crawler
    report it), or stop (--mode off)."""
    if what not in DRIFTABLE or mode not in ("shape", "error", "off"):
        fail(f"drift {', '.join(DRIFTABLE)} with --mode shape, error or off")
    _post(url, "/api/drift", {"what": what, "mode": mode})
    state = "as before" if mode == "off" else f"drifted ({mode})"
    console.print(f"the sandbox's {what} answer {state}")


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
