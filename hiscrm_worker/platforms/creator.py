"""A creator centre, driven as a person drives it: the site it lives on, and the few
moves the walkers make on its pages — open a page, act on an element, and take the
response the page receives because of it.

Two sites serve these pages: douyin's creator centre and the sandbox site, which
serves the same paths, elements and response shapes offline. The walkers
(:mod:`.comments`, :mod:`.chat`) are written once against :class:`CreatorSite`, so the
offline tests run the code that runs against douyin.

What goes wrong is named, never read as "nothing new": an element or a response that
does not come is :class:`PlatformChanged` (naming the selector or the address), a
redirect to a login page or an HTTP 401/403 is :class:`SessionExpired`, another HTTP
error is :class:`PlatformRefused`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Locator, Page, Response
from playwright.async_api import TimeoutError as PlaywrightTimeout

from . import douyin_api as api
from .base import PlatformChanged, PlatformError, PlatformRefused, SessionExpired


def douyin_order(item_id: str) -> int:
    """douyin's ids are 64-bit numbers that grow with the posting time."""
    return int(item_id)


@dataclass(frozen=True, slots=True)
class CreatorSite:
    """Where a creator centre lives and how its ids order (the key :mod:`.paging`
    needs). ``name`` appears in messages."""

    name: str
    origin: str
    order: Callable[[str], int] = douyin_order
    timeout_s: float = 30.0

    def url(self, path: str) -> str:
        return self.origin.rstrip("/") + path

    def key(self, item_id: str, where: str) -> int:
        try:
            return self.order(item_id)
        except (TypeError, ValueError):
            raise PlatformChanged(where, f"the id {item_id!r} does not order the list") from None


DOUYIN = CreatorSite("douyin", api.CREATOR_ORIGIN)


Move = Callable[[], Awaitable[None]]


def _first_line(exc: PlaywrightError) -> str:
    return (exc.message or type(exc).__name__).splitlines()[0]


def asks(
    cursor: str | None = None, work: str | None = None, parent: str | None = None
) -> Callable[[str], bool]:
    """Whether a request's address asks for this cursor / work / parent comment (those
    given)."""

    def check(url: str) -> bool:
        return (
            (cursor is None or api.param(url, (api.CURSOR_PARAM,)) == cursor)
            and (work is None or api.param(url, api.WORK_PARAMS) == work)
            and (parent is None or api.param(url, api.PARENT_PARAMS) == parent)
        )

    return check


_GATHERED = (
    *api.WORK_LIST_PATHS,
    *api.COMMENT_LIST_PATHS,
    *api.REPLY_LIST_PATHS,
    *api.CONTACTS_PATHS,
)


def _anything(url: str) -> bool:
    return True


_SHOWS = """([sel, n, inside]) => {
  const root = inside ? document.querySelectorAll(inside[0])[inside[1]] : document;
  return !!root && root.querySelectorAll(sel).length >= n;
}"""


class Driver:
    """One page of a creator centre and the moves a walker makes on it. ``where`` is
    the page's address, for messages.

    The page's API responses are gathered as they come, not only those a move waits
    for: an infinite list loads its next page whenever it is scrolled to its end, also
    when a click scrolls an element into view, so the page a walker is about to ask
    for may have come already. Use it as an async context manager: it listens to the
    page while it is open."""

    def __init__(self, page: Page, site: CreatorSite) -> None:
        self.page = page
        self.site = site
        self.where = site.origin
        self._timeout_ms = site.timeout_s * 1000
        self._received: list[Response] = []
        self._arrived = anyio.Event()

    async def __aenter__(self) -> Driver:
        self.page.on("response", self._on_response)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.page.remove_listener("response", self._on_response)

    def _on_response(self, response: Response) -> None:
        if api.matches(response.url, _GATHERED):
            self._received.append(response)
            self._arrived.set()

    def forget_received(self) -> None:
        """Drop what came so far (the page is about to start its lists again)."""
        self._received.clear()

    def _take(self, paths: tuple[str, ...], want: Callable[[str], bool]) -> Response | None:
        for i, response in enumerate(self._received):
            if api.matches(response.url, paths) and want(response.url):
                return self._received.pop(i)
        return None

    def _refused(self, where: str, why: str) -> SessionExpired:
        return SessionExpired(f"{self.site.name} refused the session at {where}: {why}")

    def _on_login_page(self) -> bool:
        return any(marker in self.page.url for marker in api.LOGIN_PAGE_MARKERS)

    async def goto(self, path: str) -> None:
        """Open a page of the site."""
        self.forget_received()
        self.where = self.site.url(path)
        try:
            await self.page.goto(self.where, timeout=self._timeout_ms)
        except PlaywrightError as exc:
            raise PlatformError(
                f"{self.site.name}: cannot open {self.where}: {_first_line(exc)}"
            ) from exc
        if self._on_login_page():
            raise self._refused(self.where, "sent to the login page")

    def click(self, locator: Locator, what: str) -> Move:
        """A click on an element the page must have: its absence is a page that changed."""

        async def move() -> None:
            try:
                await locator.click(timeout=self._timeout_ms)
            except PlaywrightTimeout:
                raise PlatformChanged(self.where, f"no element {what} to click") from None

        return move

    def run(self, selector: str, script: str) -> Move:
        """A script run on the first element of ``selector`` (a scroll)."""

        async def move() -> None:
            try:
                await self.page.locator(selector).first.evaluate(script, timeout=self._timeout_ms)
            except PlaywrightTimeout:
                raise PlatformChanged(self.where, f"no element {selector}") from None

        return move

    async def shows(
        self, selector: str, count: int, what: str, inside: tuple[str, int] | None = None
    ) -> None:
        """Wait until the page shows ``count`` elements of ``selector`` (in the
        ``inside`` element: its selector and index), so the next move meets a page that
        took in what it received. Fewer is a page that changed."""
        try:
            await self.page.wait_for_function(
                _SHOWS, arg=[selector, count, inside], timeout=self._timeout_ms
            )
        except PlaywrightTimeout:
            raise PlatformChanged(
                self.where, f"the page shows fewer than {count} {what} ({selector})"
            ) from None

    async def answer(
        self, paths: Iterable[str], move: Move, want: Callable[[str], bool] = _anything
    ) -> tuple[Any, str]:
        """The JSON of the response of ``paths`` (one whose address ``want`` accepts)
        that ``move`` brings, with its address; if it came already, without moving."""
        paths = tuple(paths)
        response = self._take(paths, want)
        if response is None:
            await move()
            with anyio.move_on_after(self.site.timeout_s):
                while (response := self._take(paths, want)) is None:
                    self._arrived = anyio.Event()
                    await self._arrived.wait()
        if response is None:
            if self._on_login_page():
                raise self._refused(self.where, "sent to the login page")
            raise PlatformChanged(
                self.where,
                f"no response from {' or '.join(paths)} within {self.site.timeout_s:g} s",
            )
        shown = api.address(response.url)
        if response.status in (401, 403):
            raise self._refused(shown, f"HTTP {response.status}")
        if response.status != 200:
            raise PlatformRefused(shown, f"HTTP {response.status}")
        try:
            return await response.json(), response.url
        except (ValueError, PlaywrightError):
            raise PlatformChanged(shown, "the response is not JSON") from None
