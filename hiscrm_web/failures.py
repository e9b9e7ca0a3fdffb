"""What the console answers when Redis or the database fails under a request: one
sentence in the page (503 while something is down, 500 for an error reply such as
WRONGTYPE on a damaged key), one line in the log, never a traceback. An htmx request
gets the sentence alone, put in the page's ``#problem`` (HX-Retarget), not in the part
it asked for."""

from __future__ import annotations

import logging
import re

from markupsafe import escape
from redis import exceptions as rexc
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from hiscrm_bus.errors import Unavailable

log = logging.getLogger(__name__)

# what is caught: BusUnavailable and DatabaseUnavailable are Unavailable; RedisError is
# an error reply call() did not translate (WRONGTYPE, NOPERM, a script's error)
FAILURES = (Unavailable, rexc.RedisError)

UNAVAILABLE = "Redis or the database is unavailable right now: try again in a moment."
REFUSED = (
    "Redis refused a command ({code}): a stored value is not what the console expects; "
    "the console's log says which request."
)


# an error reply's code: its first word, or (in a pipeline's error, which quotes the
# reply after the command) the first capitalised word after a quote
_CODE = re.compile(r"(?:^|['\"])([A-Z]{3,})\b")


def _code(exc: BaseException) -> str:
    """The error reply's code (WRONGTYPE, NOPERM…), never its whole text."""
    found = _CODE.search(str(exc))
    return found.group(1) if found else type(exc).__name__


def sentence(exc: BaseException) -> tuple[int, str]:
    """(status, the one sentence shown) for a failure of ``FAILURES``."""
    if isinstance(exc, Unavailable | rexc.ConnectionError | rexc.TimeoutError):
        return 503, UNAVAILABLE
    return 500, REFUSED.format(code=_code(exc))


def failure_response(request: Request, exc: BaseException) -> Response:
    """The response for ``exc``, logged in one line."""
    status, shown = sentence(exc)
    log.warning(
        "console: %s %s failed (%d): %s: %s",
        request.method,
        request.url.path,
        status,
        type(exc).__name__,
        exc,
    )
    if request.headers.get("HX-Request"):
        fragment = f'<p class="error">{escape(shown)}</p>'
        headers = {"HX-Retarget": "#problem", "HX-Reswap": "innerHTML"}
        return HTMLResponse(fragment, status, headers=headers)
    # the console's page frame (no import of app: it imports this module)
    found: Response = request.app.state.console.render(
        request, "failure.html", status, failure=shown
    )
    return found
