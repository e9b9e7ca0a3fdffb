"""Fleet actions on the fleet page: add an account, import accounts from a CSV or
JSON-lines file, a fleet-wide change with the per-worker tally of its outcomes, and the
latency chart. Each as ``hiscrm account add`` / ``import`` / ``set --all --wait`` does
it: bad input is refused with the reason and nothing is written. Against a real
redis-server; the workers are fakes that answer on their control channel."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.pending import Outcome
from hiscrm_master.updates import Updates
from hiscrm_web.chart import latency_chart
from hiscrm_web.settings import WebSettings
from tests.web.conftest import SignedIn
from tests.web.fake_workers import APPLIED, answering
from tests.web.page import Element, parse

pytestmark = pytest.mark.real

HX = {"HX-Request": "true"}


def result_of(response: httpx.Response) -> Element:
    """The ``#action-result`` content a response carries."""
    return parse(response.text)


async def post(
    signed_in: SignedIn, path: str, data: dict[str, str], **kwargs: Any
) -> httpx.Response:
    return await signed_in.client.post(
        path, data={"csrf": signed_in.csrf, **data}, headers=HX, **kwargs
    )


async def keys_of(redis: Redis, settings: WebSettings) -> list[str]:
    """Every account's hash key."""
    found = [k async for k in redis.scan_iter(match=f"{settings.key_prefix}account:*")]
    return sorted(k for k in found if not k.endswith(":pending"))


async def add(redis: Redis, settings: WebSettings, account_id: str, worker: str | None) -> None:
    config = AccountConfig(id=account_id, platform="synthetic", worker_id=worker)
    await Updates(redis, settings, "test").create(config)


async def test_the_fleet_page_has_the_action_forms_and_the_chart(signed_in: SignedIn) -> None:
    page = parse((await signed_in.client.get("/")).text)
    add_form = page.by_id("add-account")
    assert add_form.attrs["hx-post"] == "/accounts"
    names = {e.attrs.get("name") for e in add_form.walk()}
    assert {"id", "platform", "worker", "interval"} <= names
    assert page.by_id("import-accounts").attrs["hx-encoding"] == "multipart/form-data"
    assert page.by_id("import-accounts").one("input", type="file").attrs["name"] == "file"
    scope = page.by_id("fleet-change").one("select")
    assert scope.attrs["name"] == "scope"
    assert "all" in [o.attrs["value"] for o in scope.all("option")]
    assert page.has_id("action-result")
    assert page.one("svg", id="latency-chart")


async def test_adding_an_account_writes_it_and_refreshes_the_rows(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    response = await post(
        signed_in,
        "/accounts",
        {"id": "acc-9", "platform": "synthetic", "worker": "w1", "interval": "15"},
    )
    assert response.status_code == 200
    assert response.headers["HX-Trigger"] == "fleet-changed"
    message = result_of(response).one("p", cls="ok").text
    assert message == "added account acc-9 (synthetic); worker: w1"
    stored = await redis.hgetall(web_settings.keys.account("acc-9"))
    assert (stored["platform"], stored["worker_id"], stored["monitor_interval_s"]) == (
        "synthetic",
        "w1",
        "15.0",
    )
    rows = parse((await signed_in.client.get("/", headers=HX)).text)
    assert rows.one("tr", data_account="acc-9")


@pytest.mark.parametrize(
    ("form", "status", "reason"),
    [
        ({"id": "acc-1", "platform": "myspace"}, 422, "platform='myspace': not a known platform"),
        ({"id": "bad id", "platform": "synthetic"}, 422, "id='bad id': String should match"),
        ({"id": "acc-1", "platform": "synthetic", "interval": "0"}, 422, "monitor_interval_s"),
        ({"id": "acc-1", "platform": "synthetic", "worker": "a b"}, 422, "worker_id='a b'"),
        ({"id": "", "platform": "synthetic"}, 422, "id=''"),
    ],
)
async def test_a_bad_account_is_refused_with_the_reason_and_nothing_written(
    signed_in: SignedIn,
    redis: Redis,
    web_settings: WebSettings,
    form: dict[str, str],
    status: int,
    reason: str,
) -> None:
    response = await post(signed_in, "/accounts", form)
    assert response.status_code == status
    error = result_of(response).one("p", cls="error").text
    assert error.startswith("account not added: ")
    assert reason in error
    assert "HX-Trigger" not in response.headers
    assert await keys_of(redis, web_settings) == []


async def test_adding_an_existing_id_is_refused(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings, "acc-1", "w1")
    before = await redis.hgetall(web_settings.keys.account("acc-1"))
    response = await post(signed_in, "/accounts", {"id": "acc-1", "platform": "sandbox"})
    assert response.status_code == 409
    assert "exists" in result_of(response).one("p", cls="error").text
    assert await redis.hgetall(web_settings.keys.account("acc-1")) == before


CSV = "id,platform,worker,interval,name\nacc-1,synthetic,w1,30,same\nacc-2,synthetic,,20,new\n"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("accounts.csv", CSV),
        (
            "accounts.jsonl",
            '{"id": "acc-1", "platform": "synthetic", "worker": "w1", "name": "same"}\n'
            '{"id": "acc-2", "platform": "synthetic", "interval": 20, "name": "new"}\n',
        ),
        # no extension: told by its content
        ("accounts", '{"id": "acc-2", "platform": "synthetic", "interval": 20, "name": "new"}\n'),
    ],
)
async def test_an_import_adds_and_updates_as_the_cli_does(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings, name: str, content: str
) -> None:
    await Updates(redis, web_settings, "test").create(
        AccountConfig(id="acc-1", platform="synthetic", worker_id="w1", name="same")
    )
    response = await post(
        signed_in, "/accounts/import", {}, files={"file": (name, content.encode())}
    )
    assert response.status_code == 200, response.text
    assert result_of(response).one("p", cls="ok").text == "added 1, updated 0, unchanged " + (
        "0" if name == "accounts" else "1"
    )
    assert response.headers["HX-Trigger"] == "fleet-changed"
    new = await redis.hgetall(web_settings.keys.account("acc-2"))
    assert (new["name"], new["monitor_interval_s"]) == ("new", "20.0")


async def test_an_import_updates_changed_fields_by_the_versioned_update(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings, "acc-1", "w1")
    content = b"id,monitor_interval_s\nacc-1,12\n"
    response = await post(signed_in, "/accounts/import", {}, files={"file": ("a.csv", content)})
    assert result_of(response).one("p", cls="ok").text == "added 0, updated 1, unchanged 0"
    stored = await redis.hgetall(web_settings.keys.account("acc-1"))
    assert (stored["monitor_interval_s"], stored["config_version"]) == ("12.0", "2")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "a.csv",
            b"id,platform\nacc-1,synthetic\nbad id,synthetic\nacc-3,myspace\n",
            ["line 3: id='bad id'", "line 4: acc-3: platform='myspace'"],
        ),
        ("a.csv", b"id,platform,colour\nacc-1,synthetic,red\n", ["line 1: header: unknown field"]),
        ("a.jsonl", b'{"id": "acc-1", "platform": "synthetic"}\n[1, 2]\n', ["line 2: not a JSON"]),
        ("a.csv", b"id,platform\nacc-1,synthetic,extra\n", ["line 2: 3 values where"]),
    ],
)
async def test_a_bad_import_lists_the_bad_lines_and_writes_nothing(
    signed_in: SignedIn,
    redis: Redis,
    web_settings: WebSettings,
    name: str,
    content: bytes,
    expected: list[str],
) -> None:
    response = await post(signed_in, "/accounts/import", {}, files={"file": (name, content)})
    assert response.status_code == 422
    shown = result_of(response)
    assert shown.one("p", cls="error").text.startswith("nothing imported: ")
    lines = [li.text for li in shown.one("ul", cls="lines").all("li")]
    assert len(lines) == len(expected)
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), line
    assert await keys_of(redis, web_settings) == []


async def test_an_import_that_is_not_text_or_no_file_is_refused(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    binary = b"id,platform\nacc-1,synthetic\n\xff\xfe\n"
    response = await post(signed_in, "/accounts/import", {}, files={"file": ("a.csv", binary)})
    assert response.status_code == 422
    error = result_of(response).one("p", cls="error").text
    assert error == "nothing imported: a.csv, line 3: not UTF-8 text"
    response = await post(signed_in, "/accounts/import", {"file": ""})
    assert response.status_code == 422
    assert "choose a CSV or JSON-lines file" in result_of(response).text
    assert await keys_of(redis, web_settings) == []


async def test_a_fleet_wide_change_shows_each_workers_tally(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    for account_id, worker in (
        ("a1", "w1"),
        ("a2", "w1"),
        ("b1", "w2"),
        ("c1", "w3"),
        ("d1", None),
    ):
        await add(redis, web_settings, account_id, worker)
    answers = {"w1": APPLIED, "w2": ("rejected", "interval too short for this site")}
    async with answering(web_settings, answers):
        response = await post(
            signed_in, "/fleet/set", {"scope": "all", "changes": "monitor_interval_s=10"}
        )
    assert response.status_code == 200
    shown = result_of(response)
    assert shown.one("p", cls="ok").text == "5 account(s) written"
    tally = shown.by_id("fleet-tally")
    heads = [th.text for th in tally.all("th")]
    assert heads == ["worker", "applied", "rejected", "failed", "timed out"]
    rows = {
        tr.attrs["data-worker"]: [td.text for td in tr.all("td")[1:]]
        for tr in tally.all("tr")
        if "data-worker" in tr.attrs
    }
    # w3 runs nowhere: its update times out; d1 has no worker: nothing to wait for
    assert rows == {
        "w1": ["2", "0", "0", "0"],
        "w2": ["0", "1", "0", "0"],
        "w3": ["0", "0", "0", "1"],
    }
    last = shown.one("p", cls="last-ack").text
    assert re.fullmatch(r"3/4 outcomes; last ACK after \d+\.\d ms", last), last
    assert "1 account(s) have no worker" in shown.one("ul", cls="notes").text
    for account_id in ("a1", "a2", "b1", "c1", "d1"):
        stored = await redis.hgetall(web_settings.keys.account(account_id))
        assert stored["monitor_interval_s"] == "10.0"


async def test_a_fleet_wide_change_by_platform_or_worker_touches_only_those(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings, "a1", "w1")
    await add(redis, web_settings, "b1", "w2")
    await Updates(redis, web_settings, "test").create(
        AccountConfig(id="s1", platform="sandbox", worker_id="w1")
    )
    async with answering(web_settings, {"w1": APPLIED, "w2": APPLIED}):
        response = await post(signed_in, "/fleet/set", {"scope": "worker:w1", "changes": "name=x"})
        assert result_of(response).one("p", cls="ok").text == "2 account(s) written"
        response = await post(
            signed_in,
            "/fleet/set",
            {"scope": "platform:sandbox", "changes": "name='two words'"},
        )
        assert result_of(response).one("p", cls="ok").text == "1 account(s) written"
    names = {
        a: (await redis.hgetall(web_settings.keys.account(a))).get("name", "")
        for a in ("a1", "b1", "s1")
    }
    assert names == {"a1": "x", "b1": "", "s1": "two words"}


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"scope": "all", "changes": "monitor_interval_s=soon"}, "nothing written: a1: "),
        ({"scope": "all", "changes": "colour=red"}, "nothing written: a1: unknown field colour"),
        ({"scope": "all", "changes": "config_version=9"}, "cannot be set directly"),
        ({"scope": "all", "changes": "nonsense"}, "is not of the form field=value"),
        ({"scope": "all", "changes": "name='unclosed"}, "nothing written: No closing quotation"),
        ({"scope": "all", "changes": ""}, "nothing to set"),
        ({"scope": "platform:myspace", "changes": "name=x"}, "platform 'myspace' is not one of"),
        ({"scope": "galaxy", "changes": "name=x"}, "scope 'galaxy'"),
        ({"scope": "worker:w9", "changes": "name=x"}, "no account matches"),
    ],
)
async def test_a_bad_fleet_wide_change_is_refused_and_nothing_written(
    signed_in: SignedIn,
    redis: Redis,
    web_settings: WebSettings,
    form: dict[str, str],
    reason: str,
) -> None:
    await add(redis, web_settings, "a1", "w1")
    await add(redis, web_settings, "a2", "w1")
    before = {a: await redis.hgetall(web_settings.keys.account(a)) for a in ("a1", "a2")}
    response = await post(signed_in, "/fleet/set", form)
    assert response.status_code == 422
    assert reason in result_of(response).one("p", cls="error").text
    after = {a: await redis.hgetall(web_settings.keys.account(a)) for a in ("a1", "a2")}
    assert after == before


async def test_fleet_actions_without_the_csrf_token_are_refused(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings, "a1", "w1")
    before = await redis.hgetall(web_settings.keys.account("a1"))
    client = signed_in.client
    refused = [
        await client.post("/accounts", data={"id": "acc-9", "platform": "synthetic"}),
        await client.post("/accounts/import", files={"file": ("a.csv", b"id\nacc-9\n")}),
        await client.post("/fleet/set", data={"scope": "all", "changes": "name=x"}),
        await client.post("/fleet/set", data={"csrf": "forged", "scope": "all", "changes": "n=x"}),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403]
    assert await keys_of(redis, web_settings) == [web_settings.keys.account("a1")]
    assert await redis.hgetall(web_settings.keys.account("a1")) == before


async def test_without_htmx_an_action_answers_with_the_whole_fleet_page(
    signed_in: SignedIn,
) -> None:
    response = await signed_in.client.post(
        "/accounts", data={"csrf": signed_in.csrf, "id": "acc-1", "platform": "nope"}
    )
    assert response.status_code == 422
    page = parse(response.text)
    assert "not a known platform" in page.by_id("action-result").one("p", cls="error").text
    assert page.has_id("accounts")


def outcome(n: int, latency_ms: float, status: str = "applied") -> Outcome:
    return Outcome(
        update_id=f"u{n}",
        account_id=f"acc-{n}",
        worker_id="w1",
        version=2,
        status=status,  # type: ignore[arg-type]
        attempts=1,
        latency_ms=latency_ms,
        error="",
        reason="admin_update",
    )


def test_the_latency_chart_draws_the_applied_updates_with_p50_and_p99() -> None:
    # newest first, as the tracker gives them: 100 applied ones and 5 others
    outcomes = [outcome(n, float(n % 50) + 1) for n in range(100)]
    outcomes += [outcome(100 + n, 9999.0, "failed") for n in range(5)]
    svg = str(latency_chart(outcomes, title='<script>"x"</script>'))
    tree = ET.fromstring(svg)  # well-formed
    ns = "{http://www.w3.org/2000/svg}"
    assert tree.get("id") == "latency-chart"
    assert len(tree.findall(f"{ns}g/{ns}circle")) == 100
    texts = ["".join(t.itertext()) for t in tree.iter(f"{ns}text")]
    assert "p50 25 ms" in texts
    assert "p99 50 ms" in texts
    assert "50 ms" in texts  # the y axis' top
    assert "the newest 100 applied update(s), oldest left" in texts
    # the title is text, never markup
    assert "<script>" not in svg
    assert tree.findtext(f"{ns}title") == '<script>"x"</script>'
    assert tree.find(f"{ns}script") is None


def test_the_latency_chart_without_applied_updates_says_so() -> None:
    svg = str(latency_chart([outcome(1, 3.0, "rejected")]))
    tree = ET.fromstring(svg)
    texts = ["".join(t.itertext()) for t in tree.iter("{http://www.w3.org/2000/svg}text")]
    assert "no applied update yet" in texts


async def test_the_fleet_page_charts_the_recent_outcomes(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings, "a1", "w1")
    async with answering(web_settings, {"w1": APPLIED}):
        await post(signed_in, "/fleet/set", {"scope": "all", "changes": "name=x"})
    chart = parse((await signed_in.client.get("/fleet/latency")).text).one(
        "svg", id="latency-chart"
    )
    texts = [t.text for t in chart.all("text")]
    assert any(t.startswith("p50 ") for t in texts), texts
    assert "the newest 2 applied update(s), oldest left" in texts
