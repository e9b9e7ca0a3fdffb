"""Fleet actions on the fleet page: add an account, import accounts from a file, and a
fleet-wide change with the per-worker tally of its outcomes. Each is the library's, as
``hiscrm account add`` / ``import`` / ``set --all --wait`` do it: validated first (one
bad row or value and nothing is written), then written by the versioned update."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response

from hiscrm_bus.accounts import PLATFORMS, AccountUpdate, parse_assignments, validate
from hiscrm_bus.bulk import SourceError, decode_source, format_of, parse
from hiscrm_bus.errors import AccountExists, InvalidAccountConfig
from hiscrm_master.updates import TALLY_STATUSES, Tally, check_batch, tally

from . import pages
from .accounts import wait_budget_s
from .app import console
from .bodies import MAX_UPLOAD_BYTES, read_form

# bad lines listed at most (the count says how many there are)
MAX_LISTED = 50
# the response header that has the fleet's rows refresh
FLEET_CHANGED = {"HX-Trigger": "fleet-changed"}


@dataclass
class ActionResult:
    """What ``#action-result`` shows."""

    message: str = ""  # success
    error: str = ""  # refused: nothing written
    lines: list[str] = field(default_factory=list)  # the bad lines, or what was not written
    tally: Tally | None = None
    notes: list[str] = field(default_factory=list)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


async def respond(
    request: Request, result: ActionResult, status: int, *, changed: bool = False
) -> Response:
    """For htmx: the ``#action-result`` content (with ``fleet-changed`` when something
    was written, so the rows refresh); else the fleet page with it."""
    headers = FLEET_CHANGED if changed else {}
    if not request.headers.get("HX-Request"):
        response = await pages.render_fleet(request, action=result, status=status)
    else:
        response = console(request).render(
            request, "_action_result.html", status, action=result, statuses=TALLY_STATUSES
        )
    response.headers.update(headers)
    return response


async def add_account(request: Request) -> Response:
    """``form#add-account``: id, platform, worker (optional), interval (optional), name."""
    c = console(request)
    form = await read_form(request)
    account_id = _text(form, "id")
    data: dict[str, Any] = {
        "id": account_id,
        "platform": _text(form, "platform"),
        "name": _text(form, "name"),
    }
    if worker := _text(form, "worker"):
        data["worker_id"] = worker
    if interval := _text(form, "interval"):
        data["monitor_interval_s"] = interval
    try:
        config = validate(data)
    except InvalidAccountConfig as exc:
        return await respond(request, ActionResult(error=f"account not added: {exc}"), 422)
    try:
        created, _sent = await c.updates.create(config)
    except AccountExists as exc:
        return await respond(request, ActionResult(error=f"account not added: {exc}"), 409)
    owner = created.worker_id or "the Master will assign a worker"
    message = f"added account {created.id} ({created.platform}); worker: {owner}"
    return await respond(request, ActionResult(message=message), 200, changed=True)


async def import_accounts(request: Request) -> Response:
    """``form#import-accounts``: a CSV or JSON-lines file as ``hiscrm account import``
    reads it; every row is checked first, and one bad row writes nothing."""
    c = console(request)
    form = await read_form(request, files=1)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            error = "choose a CSV or JSON-lines file"
            return await respond(request, ActionResult(error=error), 422)
        name = upload.filename
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
    finally:
        await form.close()
    if len(data) > MAX_UPLOAD_BYTES:
        limit = MAX_UPLOAD_BYTES // (1024 * 1024)
        error = f"nothing imported: {name} is larger than {limit} MiB (use hiscrm account import)"
        return await respond(request, ActionResult(error=error), 422)
    try:
        source = decode_source(data, name)
        rows, problems = parse(source, format_of(name, None, source))
    except (SourceError, ValueError) as exc:
        return await respond(request, ActionResult(error=f"nothing imported: {exc}"), 422)
    plan = await c.updates.store.plan_import(rows)
    bad = sorted([*problems, *plan.problems], key=lambda p: p.line)
    if bad:
        listed = [str(p) for p in bad[:MAX_LISTED]]
        if len(bad) > MAX_LISTED:
            listed.append(f"… and {len(bad) - MAX_LISTED} more")
        error = f"nothing imported: {len(bad)} bad row(s) in {name}"
        return await respond(request, ActionResult(error=error, lines=listed), 422)
    done = await c.updates.import_accounts(plan)
    message = f"added {len(done.added)}, updated {len(done.updated)}, unchanged {done.unchanged}"
    result = ActionResult(
        message=message,
        lines=[f"not written (changed meanwhile): {e}" for e in done.raced],
    )
    if done.sent:
        result.notes.append(f"{len(done.sent)} update(s) sent to their workers")
    written = bool(done.added or done.updated)
    return await respond(request, result, 200, changed=written)


def parse_scope(scope: str) -> tuple[str | None, str | None]:
    """``all``, ``platform:<p>`` or ``worker:<w>`` as (platform, worker); ValueError."""
    if scope in ("", "all"):
        return None, None
    kind, sep, value = scope.partition(":")
    if sep and value and kind == "platform":
        if value not in PLATFORMS:
            raise ValueError(f"platform {value!r} is not one of {', '.join(PLATFORMS)}")
        return value, None
    if sep and value and kind == "worker":
        return None, value
    raise ValueError(f"scope {scope!r}: all, platform:NAME or worker:ID")


async def fleet_change(request: Request) -> Response:
    """``form#fleet-change``: the changes (``field=value`` pairs) for every account of
    the scope, refused as a whole if invalid for any; then the outcomes tallied per
    worker, as ``hiscrm account set --all --wait`` shows them."""
    c = console(request)
    form = await read_form(request)
    try:
        platform, worker = parse_scope(_text(form, "scope"))
        pairs = shlex.split(_text(form, "changes"))
    except ValueError as exc:
        return await respond(request, ActionResult(error=f"nothing written: {exc}"), 422)
    if not pairs:
        error = "nothing to set: give field=value pairs, e.g. monitor_interval_s=10"
        return await respond(request, ActionResult(error=error), 422)
    try:
        changes = parse_assignments(pairs)
        batch = await c.updates.selection(changes, worker=worker, platform=platform)
        if not batch:
            return await respond(request, ActionResult(error="no account matches"), 422)
        check_batch(batch)
    except InvalidAccountConfig as exc:
        return await respond(request, ActionResult(error=f"nothing written: {exc}"), 422)
    tracker = c.updates.tracker
    after = await tracker.last_outcome_id()
    results, sent = await c.updates.change_many(batch, "admin_update")
    written = [r for r in results if isinstance(r, AccountUpdate)]
    errors = [r for r in results if isinstance(r, Exception)]
    tracked = {m.update_id: m for m in sent if m is not None}
    accounts = [m.account_id for m in tracked.values()]
    outcomes = await tracker.wait_outcomes(
        list(tracked), after, wait_budget_s(c), accounts=accounts
    )
    counts = tally(tracked, outcomes, {r.account_id: r.worker_id for r in written})
    result = ActionResult(
        message=f"{len(written)} account(s) written",
        lines=[f"not written: {e}" for e in errors],
        tally=counts,
    )
    unowned = sum(1 for r in written if r.worker_id is None)
    if unowned:
        result.notes.append(f"{unowned} account(s) have no worker: nothing to wait for")
    return await respond(request, result, 200, changed=bool(written))
