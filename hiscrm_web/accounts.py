"""The account page ``/accounts/{id}``: its config with an edit form that goes through
the versioned update and shows the outcome as it arrives, enable / disable / move /
remove, the audit trail of its updates, the newest comments and DMs from the database,
and diagnose's findings; ``/accounts/{id}/events`` tells the page when its outcomes,
crawled items or task changed (server-sent events).

Every write is the library's (``Updates.change``, ``Updates.remove``) and is validated
by it first: an invalid value is refused with the reason and nothing is written."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from hiscrm_bus.accounts import (
    PLATFORMS,
    AccountConfig,
    check_changes,
    decode_hash,
    decode_value,
    encode_value,
    validate,
)
from hiscrm_bus.connection import call, text
from hiscrm_bus.errors import AccountNotFound, HiscrmError, InvalidAccountConfig
from hiscrm_bus.messages import CrawledItem
from hiscrm_bus.pending import Outcome
from hiscrm_bus.workers import WorkerRegistry
from hiscrm_master.archive import Filter
from hiscrm_master.diagnosis import AccountReport, Finding, diagnose
from hiscrm_master.snapshot import collect

from .app import Console, console
from .bodies import read_form
from .events import sse

# the fields the form edits, in its order (proxy apart: it is never shown)
EDITABLE: tuple[str, ...] = (
    "name",
    "platform",
    "worker_id",
    "enabled",
    "monitor_interval_s",
    "crawl_comments",
    "crawl_dms",
    "max_items_per_crawl",
)
BOOLEANS = frozenset({"enabled", "crawl_comments", "crawl_dms"})
READ_ONLY: tuple[str, ...] = ("login_status", "platform_user_id", "user_info")
ITEMS = 20  # newest comments and DMs shown
AUDIT = 20  # newest outcomes shown
OUTCOMES_SCANNED = 2000  # of the fleet's newest outcomes, the account's are shown
# how often an open page's stream looks at the account's crawled counts and task
CHECK_S = 1.0

SaidKind = Literal["ok", "bad", "error", "info"]


@dataclass(frozen=True, slots=True)
class Said:
    """The line ``#outcome`` shows: ``ok`` applied, ``bad`` rejected / failed / timed
    out, ``error`` refused before anything was written, ``info`` anything else."""

    kind: SaidKind
    text: str


@dataclass
class AccountPage:
    """Everything the page shows of one account (its items apart)."""

    id: str
    config: AccountConfig | None
    raw: dict[str, Any]
    invalid: str | None
    report: AccountReport
    findings: list[Finding]
    outcomes: list[Outcome]
    workers: list[dict[str, Any]]
    values: dict[str, str] = field(default_factory=dict)  # the form's, as text

    @property
    def enabled(self) -> bool:
        return self.config.enabled if self.config else True

    @property
    def has_proxy(self) -> bool:
        return bool(self.config.proxy if self.config else self.raw.get("proxy"))

    @property
    def version(self) -> int | None:
        return self.config.config_version if self.config else None


@dataclass
class Items:
    """The newest comments and DMs, or why the database did not say."""

    comments: list[CrawledItem] = field(default_factory=list)
    dms: list[CrawledItem] = field(default_factory=list)
    counts: tuple[int, int] | None = None
    error: str | None = None


def shown(values: Mapping[str, Any], name: str) -> str:
    """A field as the form shows it (and as its ``was_`` twin carries it back)."""
    encoded = encode_value(values.get(name))
    return "" if encoded is None else encoded


async def load(c: Console, account_id: str) -> AccountPage | None:
    """The account as diagnose sees it, and its recent outcomes; None: no such account."""
    snap = await collect(c.redis, c.settings, account_id)
    if not snap.accounts:
        return None
    view = snap.accounts[0]
    report = diagnose(snap).accounts[0]
    recent = await c.updates.tracker.recent_outcomes(OUTCOMES_SCANNED)
    outcomes = [o for o in recent if o.account_id == account_id][:AUDIT]
    values: Mapping[str, Any] = view.config.model_dump() if view.config else view.raw
    workers = [
        {
            "id": wid,
            "alive": w.alive,
            "platforms": list(w.info.platforms) if w.info else [],
        }
        for wid, w in sorted(snap.workers.items())
    ]
    return AccountPage(
        id=account_id,
        config=view.config,
        raw=view.raw,
        invalid=view.invalid,
        report=report,
        findings=report.problems,
        outcomes=outcomes,
        workers=workers,
        values={name: shown(values, name) for name in (*EDITABLE, *READ_ONLY)},
    )


async def load_items(c: Console, account_id: str) -> Items:
    """The newest comments and DMs from the database; a database that does not answer
    is one sentence instead."""
    try:
        comments = await c.archive.items(account_id, Filter(kind="comment", limit=ITEMS))
        dms = await c.archive.items(account_id, Filter(kind="dm", limit=ITEMS))
        counts = (await c.archive.counts([account_id]))[account_id]
    except Exception as exc:  # DatabaseUnavailable, or a database without hiscrm's schema
        reason = str(exc) if isinstance(exc, HiscrmError) else f"{type(exc).__name__}: {exc}"
        return Items(error=reason.splitlines()[0] if reason else type(exc).__name__)
    return Items(comments, dms, (counts.comments, counts.dms))


def wait_budget_s(c: Console) -> float:
    """How long an edit waits for its outcome: every attempt's ACK deadline."""
    return c.settings.ack_timeout_s * c.settings.max_attempts


def said_of(outcome: Outcome | None, owner: str, budget_s: float) -> Said:
    if outcome is None:
        return Said(
            "bad",
            f"timed out: no outcome from worker {owner} within {budget_s:g} s; the update "
            "stays pending (its outcome will appear under Recent outcomes)",
        )
    if outcome.status == "applied":
        return Said(
            "ok",
            f"applied version {outcome.version} by worker {outcome.worker_id} "
            f"in {outcome.latency_ms:.1f} ms",
        )
    if outcome.status == "rejected":
        return Said("bad", f"rejected by worker {outcome.worker_id}: {outcome.error}")
    return Said("bad", f"failed: {outcome.error}")


async def apply(c: Console, account_id: str, changes: Mapping[str, Any]) -> tuple[Said, int]:
    """Write ``changes`` by the versioned update and wait for the owner's outcome."""
    tracker = c.updates.tracker
    after = await tracker.last_outcome_id()
    try:
        result, sent = await c.updates.change(account_id, changes, "admin_update")
    except AccountNotFound:
        return Said("error", f"no account {account_id}: nothing written"), 404
    except InvalidAccountConfig as exc:
        return Said("error", f"nothing written: {exc}"), 422
    if sent is None or result.worker_id is None:
        return Said(
            "info",
            f"version {result.version} written; no worker owns {account_id} yet "
            "(a running Master assigns one)",
        ), 200
    budget = wait_budget_s(c)
    found = await tracker.wait_outcomes([sent.update_id], after, budget, accounts=[account_id])
    return said_of(found.get(sent.update_id), result.worker_id, budget), 200


def form_text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def current_of(c: Console, account_id: str) -> dict[str, Any] | None:
    (raw,) = await c.updates.store.get_raw([account_id])
    return decode_hash(raw) if raw else None


def edited_changes(
    form: FormData, current: dict[str, Any]
) -> tuple[dict[str, Any], Said | None, int]:
    """The fields the operator changed in the form (against the values it was shown
    with, its ``was_`` fields), decoded; or why the edit is refused.

    Only what the operator touched is written, so what someone else changed since the
    page was shown (a login, the Master moving the account) is kept; a field changed
    both here and elsewhere meanwhile is a conflict (409). A value that does not
    validate is refused (422): nothing is written."""
    try:
        before: Mapping[str, Any] = validate(current).model_dump()
    except InvalidAccountConfig:
        before = current
    changes: dict[str, Any] = {}
    for name in EDITABLE:
        sent = form_text(form, name)
        if sent is None:
            continue
        was = form_text(form, f"was_{name}")
        if was is not None and sent == was:
            continue
        if was is not None and shown(before, name) != was:
            return (
                {},
                Said(
                    "error",
                    f"{name} was changed by someone else meanwhile (now "
                    f"{shown(before, name) or 'empty'}): nothing written; reload the page",
                ),
                409,
            )
        changes[name] = decode_value(name, sent)
    proxy = form_text(form, "proxy")
    if form_text(form, "proxy_clear"):
        changes["proxy"] = None
    elif proxy:
        changes["proxy"] = proxy
    try:
        new = check_changes(current, changes)
    except InvalidAccountConfig as exc:
        return {}, Said("error", f"nothing written: {exc}"), 422
    # only what differs once validated (30 and 30.0 are one interval)
    changes = {k: v for k, v in changes.items() if getattr(new, k) != before.get(k)}
    return changes, None, 200


# -- pages ---------------------------------------------------------------------------


def not_found(request: Request, account_id: str) -> Response:
    return console(request).render(request, "account_missing.html", 404, account_id=account_id)


async def render_page(
    request: Request, account_id: str, said: Said | None = None, status: int = 200
) -> Response:
    c = console(request)
    page = await load(c, account_id)
    if page is None:
        return not_found(request, account_id)
    return c.render(
        request,
        "account.html",
        status,
        page=page,
        items=await load_items(c, account_id),
        said=said,
        platforms=PLATFORMS,
        editable=EDITABLE,
        booleans=BOOLEANS,
    )


async def account_page(request: Request) -> Response:
    return await render_page(request, request.path_params["account_id"])


async def account_status(request: Request) -> Response:
    """The status, findings and audit trail (the page refreshes them on events)."""
    c = console(request)
    account_id = request.path_params["account_id"]
    page = await load(c, account_id)
    if page is None:
        return not_found(request, account_id)
    return c.render(request, "_account_status.html", page=page)


async def account_items(request: Request) -> Response:
    c = console(request)
    account_id = request.path_params["account_id"]
    return c.render(request, "_account_items.html", items=await load_items(c, account_id))


async def answer(request: Request, account_id: str, said: Said, status: int) -> Response:
    """An action's result: for htmx, the ``#outcome`` line with the config form, the
    controls and the status swapped in as they are now; else the whole page."""
    if not request.headers.get("HX-Request"):
        return await render_page(request, account_id, said, status)
    c = console(request)
    page = await load(c, account_id)
    return c.render(
        request,
        "_account_answer.html",
        status,
        page=page,
        said=said,
        platforms=PLATFORMS,
        editable=EDITABLE,
        booleans=BOOLEANS,
    )


async def edit_config(request: Request) -> Response:
    c = console(request)
    account_id = request.path_params["account_id"]
    current = await current_of(c, account_id)
    if current is None:
        return not_found(request, account_id)
    changes, refused, status = edited_changes(await read_form(request), current)
    if refused is not None:
        return await answer(request, account_id, refused, status)
    if not changes:
        return await answer(request, account_id, Said("info", "nothing changed"), 200)
    said, status = await apply(c, account_id, changes)
    return await answer(request, account_id, said, status)


async def _set_enabled(request: Request, enabled: bool) -> Response:
    c = console(request)
    account_id = request.path_params["account_id"]
    if await current_of(c, account_id) is None:
        return not_found(request, account_id)
    said, status = await apply(c, account_id, {"enabled": enabled})
    return await answer(request, account_id, said, status)


async def enable(request: Request) -> Response:
    return await _set_enabled(request, True)


async def disable(request: Request) -> Response:
    return await _set_enabled(request, False)


async def move(request: Request) -> Response:
    c = console(request)
    account_id = request.path_params["account_id"]
    current = await current_of(c, account_id)
    if current is None:
        return not_found(request, account_id)
    worker = (form_text(await read_form(request), "worker") or "").strip()
    if not worker:
        return await answer(request, account_id, Said("error", "choose a worker"), 422)
    if worker == current.get("worker_id"):
        return await answer(request, account_id, Said("info", f"already on {worker}"), 200)
    try:
        check_changes(current, {"worker_id": worker})
    except InvalidAccountConfig as exc:
        return await answer(request, account_id, Said("error", f"nothing written: {exc}"), 422)
    said, status = await apply(c, account_id, {"worker_id": worker})
    return await answer(request, account_id, said, status)


async def remove(request: Request) -> Response:
    c = console(request)
    account_id = request.path_params["account_id"]
    keep = bool(form_text(await read_form(request), "keep_data"))
    try:
        await c.updates.remove(account_id, keep_data=keep)
    except AccountNotFound:
        return not_found(request, account_id)
    if request.headers.get("HX-Request"):
        return Response(status_code=200, headers={"HX-Redirect": "/"})
    return RedirectResponse("/", status_code=303)


# -- live: server-sent events ----------------------------------------------------------


async def items_marker(c: Console, account_id: str) -> tuple[int, int] | None:
    """What changes when the Master stored new comments or DMs (None: no database)."""
    try:
        counts = (await c.archive.counts([account_id]))[account_id]
    except Exception:  # the database is down: the page says so on its next refresh
        return None
    return counts.comments, counts.dms


async def task_marker(c: Console, account_id: str) -> tuple[Any, ...]:
    """What changes when the account's config or its owner's report of its task did."""
    keys = c.settings.keys
    fields = ("worker_id", "config_version", "login_status", "platform_user_id", "enabled")
    raw: list[Any] = await call(c.redis.hmget(keys.account(account_id), list(fields)))
    owner = text(raw[0]) if raw[0] else None
    task: Any = None
    if owner:
        # the worker writes its hash: read within the registry's bounds, sizes looked
        # at first (a 60 MB value had blocked the console)
        info = await WorkerRegistry(c.redis, keys).read(owner)
        report = info.tasks.get(account_id) if info is not None else None
        if report is not None:
            task = (report.state, report.applied_version, report.error)
    return (*(text(v) if v is not None else None for v in raw), task)


async def account_events(request: Request) -> Response:
    """``outcome`` when an update of the account ended, ``items`` when the Master
    stored new comments or DMs of it, ``status`` when its config or task changed. The
    stream opens with a comment line once it watches."""
    c = console(request)
    account_id = request.path_params["account_id"]
    if await current_of(c, account_id) is None:
        return not_found(request, account_id)
    block_ms = int(CHECK_S * 1000)

    async def stream() -> AsyncIterator[bytes]:
        cursor = await c.updates.tracker.last_outcome_id()
        items = await items_marker(c, account_id)
        task = await task_marker(c, account_id)
        yield b": watching\n\n"
        while not await request.is_disconnected():
            found, cursor = await c.updates.tracker.outcomes_after(cursor, block_ms / 1000)
            mine = any(outcome.account_id == account_id for outcome in found)
            if mine:
                yield sse("outcome")
            now_items = await items_marker(c, account_id)
            if now_items != items:
                items = now_items
                yield sse("items")
            now_task = await task_marker(c, account_id)
            if now_task != task:
                task = now_task
                yield sse("status")

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
