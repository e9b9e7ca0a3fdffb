"""Accounts in bulk (issue 10): ``hiscrm account import`` / ``export`` as real processes
against a real redis-server: round trips of 1,000 accounts in both formats, bad rows
refused with their line numbers and nothing written, updates tracked and sent to the
owner, races reported per id."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore, ImportRow, exported_fields
from hiscrm_bus.errors import AccountExists, AccountNotFound
from hiscrm_bus.messages import AccountConfigUpdate, decode
from hiscrm_bus.pending import PendingTracker
from hiscrm_bus.settings import BusSettings
from hiscrm_master.updates import Updates
from tests.cli.process import cli_env, hiscrm
from tests.conftest import fast_settings

Bus = tuple[Redis, BusSettings]
pytestmark = pytest.mark.real


async def hiscrm_stdin(settings: BusSettings, stdin: str, *args: str) -> tuple[int, str, str]:
    """``hiscrm ARGS`` reading ``stdin``, as :func:`tests.cli.process.hiscrm` runs it."""
    env = cli_env(settings)
    result = await anyio.run_process(
        [sys.executable, "-m", "hiscrm_cli", *args], input=stdin.encode(), env=env, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def snapshot(redis: Redis, settings: BusSettings) -> dict[bytes, bytes | None]:
    """Every key of the test's prefix, serialized: equal snapshots, nothing written."""
    keys = [k async for k in redis.scan_iter(match=f"{settings.key_prefix}*")]
    return {k: await redis.dump(k) for k in sorted(keys)}


def fleet(count: int) -> list[dict[str, Any]]:
    """``count`` accounts as typed values, varied in every field an export writes."""
    platforms = ("sandbox", "douyin", "synthetic")
    accounts = []
    for i in range(count):
        logged_in = i % 3 == 0
        accounts.append(
            {
                "id": f"acc-{i:04d}",
                "platform": platforms[i % 3],
                "name": f'名 {i}, "quoted"' if i % 7 else f"line\nbreak {i}",
                "worker_id": f"w{i % 4}" if i % 5 else None,
                "enabled": i % 11 != 0,
                "login_status": "logged_in" if logged_in else "not_logged_in",
                "platform_user_id": str(1_864_722_759 + i) if logged_in else None,
                "user_info": {"nick": f"小王{i}", "tags": [i, {"deep": [True, None]}]}
                if logged_in
                else {},
                "monitor_interval_s": 0.5 + i % 9,
                "crawl_comments": i % 2 == 0,
                "crawl_dms": i % 3 != 1,
                "max_items_per_crawl": 1 + i % 1000,
                "proxy": f"http://user:secret{i}@proxy:8080" if i % 10 == 0 else None,
            }
        )
    return accounts


def as_csv(accounts: list[dict[str, Any]]) -> str:
    """The accounts as CSV written by hand, with the short column names."""
    short = {"worker_id": "worker", "monitor_interval_s": "interval"}
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([short.get(k, k) for k in accounts[0]])
    for account in accounts:
        cells = []
        for value in account.values():
            if value is None:
                cells.append("")
            elif isinstance(value, bool):
                cells.append("yes" if value else "no")  # what pydantic takes as a boolean
            elif isinstance(value, dict):
                cells.append(json.dumps(value, ensure_ascii=False, indent=1))
            else:
                cells.append(str(value))
        writer.writerow(cells)
    return out.getvalue()


def as_jsonl(accounts: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(a) + "\n" for a in accounts)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_a_thousand_accounts_round_trip(real: Bus, tmp_path: Path, fmt: str) -> None:
    redis, first = real
    accounts = fleet(1000)
    source = tmp_path / f"source.{fmt}"
    source.write_text(as_csv(accounts) if fmt == "csv" else as_jsonl(accounts))

    code, out, err = await hiscrm(first, "account", "import", str(source))
    assert (code, out, err) == (0, "added 1000, updated 0, unchanged 0\n", "")
    # what was stored is what the file said, field by field
    stored, unusable = await AccountStore(redis, first.keys).configs()
    assert unusable == {}
    dropped = {"config_version", "updated_at", "config_stale"}
    assert [c.model_dump(exclude=dropped) for c in stored] == [
        AccountConfig.model_validate(a).model_dump(exclude=dropped) for a in accounts
    ]
    assert {c.config_version for c in stored} == {1}

    exported = tmp_path / f"first.{fmt}"
    code, out, err = await hiscrm(first, "account", "export", str(exported), "--with-secrets")
    assert (code, out, err) == (0, "", f"1000 account(s) exported to {exported}\n")
    assert exported.stat().st_mode & 0o077 == 0  # user_info and proxies are personal

    fresh = fast_settings(first.redis_url)
    code, out, err = await hiscrm(fresh, "account", "import", str(exported))
    assert (code, out, err) == (0, "added 1000, updated 0, unchanged 0\n", "")
    code, again, _err = await hiscrm(fresh, "account", "export", "--with-secrets", "--format", fmt)
    assert code == 0
    assert again == exported.read_text()
    moved, _unusable = await AccountStore(redis, fresh.keys).configs()
    assert [c.model_dump(exclude=dropped) for c in moved] == [
        c.model_dump(exclude=dropped) for c in stored
    ]

    # an export imported where it came from changes nothing: no version moves
    code, out, err = await hiscrm(first, "account", "import", str(exported))
    assert (code, out, err) == (0, "added 0, updated 0, unchanged 1000\n", "")
    versions = await AccountStore(redis, first.keys).versions([a["id"] for a in accounts])
    assert set(versions.values()) == {1}
    # one assignment each for the owned ones, from the first import only
    owned = [a for a in accounts if a["worker_id"]]
    assert await PendingTracker(redis, first).count() == len(owned)


async def test_bad_csv_rows_are_each_reported_and_nothing_is_written(
    real: Bus, tmp_path: Path
) -> None:
    redis, settings = real
    store = AccountStore(redis, settings.keys)
    await store.create(AccountConfig(id="old-1", platform="sandbox", worker_id="w1"))
    big = json.dumps({"blob": "x" * 70_000})
    lines = [
        "id,platform,worker,interval,user_info,name",  # 1
        "good-1,sandbox,,5,{},fine",  # 2
        "bad-1,myspace,,5,{},x",  # 3 unknown platform
        "good-1,sandbox,,5,{},again",  # 4 duplicate id
        "bad-2,sandbox,,-1,{},x",  # 5 invalid value
        "old-1,sandbox,w1,0,{},x",  # 6 invalid change of an existing account
        "",  # 7 blank: skipped
        f'bad-3,sandbox,,5,"{big.replace(chr(34), 2 * chr(34))}",x',  # 8 oversize JSON
        f"bad-4,sandbox,,5,{{}},{'n' * 201}",  # 9 oversize name
        "bad-5,sandbox,,5",  # 10 too few cells
        "bad 6,sandbox,,5,{},x",  # 11 not an id
        'bad-7,sandbox,,5,"{""a"": [1,",x',  # 12 not JSON
        "good-2,synthetic,w2,1,{},fine",  # 13
    ]
    path = tmp_path / "accounts.csv"
    path.write_text("\n".join(lines) + "\n")
    before = await snapshot(redis, settings)

    code, out, err = await hiscrm(settings, "account", "import", str(path))
    assert (code, out) == (2, "")
    reported = err.splitlines()
    assert [line.split(":")[0] for line in reported[:-1]] == [
        f"line {n}" for n in (3, 4, 5, 6, 8, 9, 10, 11, 12)
    ]
    expected = [
        "bad-1: platform='myspace': not a known platform (sandbox, douyin, synthetic)",
        "good-1: given on line 2 too",
        "bad-2: monitor_interval_s='-1': Input should be greater than or equal to 0.05",
        "old-1: monitor_interval_s='0': Input should be greater than or equal to 0.05",
        "bad-3: user_info=<70012 bytes>: Value error, 70012 bytes (limit 65536)",
        "bad-4: name='nnnnn",
        "4 values where the header has 6 columns",
        "id='bad 6': not an account id",
        "bad-7: user_info=<9 bytes>: Value error, not JSON",
    ]
    for line, reason in zip(reported, expected, strict=False):
        assert line.split(": ", 1)[1].startswith(reason), line
    assert reported[-1] == "error: nothing imported: 9 bad row(s)"
    assert await snapshot(redis, settings) == before


async def test_bad_json_lines_are_each_reported_and_nothing_is_written(
    real: Bus, tmp_path: Path
) -> None:
    redis, settings = real
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    lines = [
        {"id": "ok-1", "platform": "sandbox"},  # 1
        {"id": "bad-1", "platform": "sandbox", "colour": "red"},  # 2 unknown field
        {"id": "bad-2", "platform": "sandbox", "config_version": 7},  # 3 the store's field
        {"id": "bad-3", "platform": "sandbox", "user_info": {"d": deep}},  # 4 too deep
        {"id": "bad-4", "platform": None},  # 5 no platform
        {"id": "bad-5", "platform": "sandbox", "worker": "w1", "worker_id": "w2"},  # 6
        {"id": "ok-1", "platform": "douyin"},  # 7 duplicate
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + "not json\n[1, 2]\n"
    path = tmp_path / "accounts.jsonl"
    path.write_text(text)
    before = await snapshot(redis, settings)

    code, out, err = await hiscrm(settings, "account", "import", str(path))
    assert (code, out) == (2, "")
    reported = err.splitlines()
    assert reported[:-1] == [
        "line 2: unknown field colour (known: id, crawl_comments, crawl_dms, enabled, "
        "login_status, max_items_per_crawl, monitor_interval_s, name, platform, "
        "platform_user_id, proxy, user_info, worker_id, worker, interval)",
        "line 3: field config_version is the store's, not importable",
        "line 4: bad-3: user_info={'d': " + "[" * 40 + "1]… (88 chars): "
        "Value error, nested deeper than 32 levels",
        "line 5: bad-4: platform=None: Input should be a valid string",
        "line 6: worker and worker_id given twice",
        "line 7: ok-1: given on line 1 too",
        "line 8: not JSON (expected ident at column 2)",
        "line 9: not a JSON object",
    ]
    assert reported[-1] == "error: nothing imported: 8 bad row(s)"
    assert await snapshot(redis, settings) == before

    # a header naming an unknown column is said once, on its line
    (tmp_path / "h.csv").write_text("\nid,platform,colour\na,sandbox,red\nb,sandbox,blue\n")
    code, _out, err = await hiscrm(settings, "account", "import", str(tmp_path / "h.csv"))
    assert code == 2
    assert err.splitlines()[0].startswith("line 2: header: unknown field colour (known: id,")
    assert err.splitlines()[1:] == ["error: nothing imported: 1 bad row(s)"]
    assert await snapshot(redis, settings) == before


async def test_an_import_notifies_the_owners_and_tracks_each_update(
    real: Bus, tmp_path: Path
) -> None:
    redis, settings = real
    keys = settings.keys
    store = AccountStore(redis, keys)
    await store.create(AccountConfig(id="old-1", platform="sandbox", worker_id="w1"))
    await store.create(AccountConfig(id="old-2", platform="sandbox", worker_id="w1"))
    path = tmp_path / "changes.csv"
    path.write_text(
        "id,platform,worker,interval,name\n"
        "old-1,sandbox,w1,7.5,renamed\n"  # changed: interval and name
        "old-2,sandbox,w1,30,\n"  # as stored: unchanged
        "new-1,synthetic,w2,2,\n"  # added, on w2
    )
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.control("w1"), keys.control("w2"))
        await pubsub.get_message(timeout=1.0)
        await pubsub.get_message(timeout=1.0)
        code, out, err = await hiscrm(settings, "account", "import", str(path))
        assert (code, out, err) == (0, "added 1, updated 1, unchanged 1\n", "")
        received: dict[str, AccountConfigUpdate] = {}
        while len(received) < 2:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            assert message is not None, received
            update = decode(message["data"])
            assert isinstance(update, AccountConfigUpdate)
            received[update.account_id] = update
    changed, added = received["old-1"], received["new-1"]
    assert (changed.config_version, changed.reason) == (2, "admin_update")
    assert changed.updated_fields == ("monitor_interval_s", "name")
    assert (added.config_version, added.reason) == (1, "assignment")
    tracker = PendingTracker(redis, settings)
    assert [p.update_id for p in await tracker.of_account("old-1")] == [changed.update_id]
    assert [p.update_id for p in await tracker.of_account("new-1")] == [added.update_id]
    assert await tracker.of_account("old-2") == []
    assert (await store.get("old-1")).monitor_interval_s == 7.5
    assert (await store.get("old-2")).config_version == 1
    assert await store.ids_of_worker("w2") == ["new-1"]


async def test_json_lines_from_stdin(real: Bus) -> None:
    redis, settings = real
    store = AccountStore(redis, settings.keys)
    lines = [
        '{"id": "a-1", "platform": "douyin", "interval": 5, "user_info": {"nick": "小王"}}',
        "",
        '{"id": "a-2", "platform": "sandbox", "worker": "w1", "max_items_per_crawl": 7}',
    ]
    code, out, err = await hiscrm_stdin(settings, "\n".join(lines), "account", "import", "-")
    assert (code, out, err) == (0, "added 2, updated 0, unchanged 0\n", "")
    first, second = await store.get("a-1"), await store.get("a-2")
    assert (first.monitor_interval_s, first.user_info) == (5.0, {"nick": "小王"})
    assert (second.worker_id, second.max_items_per_crawl) == ("w1", 7)

    # CSV on stdin is told apart by its content; an empty cell clears a field
    csv_text = "id,platform,worker,enabled\na-2,sandbox,,false\n"
    code, out, err = await hiscrm_stdin(settings, csv_text, "account", "import", "-")
    assert (code, out, err) == (0, "added 0, updated 1, unchanged 0\n", "")
    second = await store.get("a-2")
    assert (second.worker_id, second.enabled, second.config_version) == (None, False, 2)
    assert await store.unassigned_ids() == ["a-1", "a-2"]


async def test_export_leaves_secrets_out_unless_asked_and_filters(
    real: Bus, tmp_path: Path
) -> None:
    redis, settings = real
    store = AccountStore(redis, settings.keys)
    proxy = "http://user:hunter2@proxy:8080"
    await store.create(AccountConfig(id="a", platform="sandbox", worker_id="w1", proxy=proxy))
    await store.create(AccountConfig(id="b", platform="douyin", worker_id="w2"))
    await store.create(AccountConfig(id="c", platform="sandbox"))

    code, out, err = await hiscrm(settings, "account", "export")
    assert code == 0
    assert "hunter2" not in out and "proxy" not in out.splitlines()[0]
    assert out.splitlines()[0] == ",".join(exported_fields(with_secrets=False))
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["a", "b", "c"]
    assert err == (
        "note: proxy left out (it may hold credentials; 1 account(s) have one); "
        "--with-secrets exports it\n"
    )
    # re-imported, the file without a proxy column leaves the proxy as it is
    (tmp_path / "plain.csv").write_text(out)
    code, imported, _err = await hiscrm(settings, "account", "import", str(tmp_path / "plain.csv"))
    assert (code, imported) == (0, "added 0, updated 0, unchanged 3\n")
    assert (await store.get("a")).proxy == proxy

    code, out, err = await hiscrm(
        settings, "account", "export", "--with-secrets", "--format", "jsonl"
    )
    assert (code, err) == (0, "")
    docs = [json.loads(line) for line in out.splitlines()]
    assert [(d["id"], d["proxy"]) for d in docs] == [("a", proxy), ("b", None), ("c", None)]

    _code, out, _err = await hiscrm(settings, "account", "export", "--platform", "sandbox")
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["a", "c"]
    _code, out, _err = await hiscrm(settings, "account", "export", "--worker", "w2")
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["b"]
    code, out, err = await hiscrm(settings, "account", "export", "--platform", "myspace")
    assert (code, out) == (2, "")
    assert "'myspace' is not a known platform" in err


async def test_an_id_created_or_removed_meanwhile_is_reported_per_id(bus: Bus) -> None:
    redis, settings = bus
    updates = Updates(redis, settings, "cli")
    store = updates.store
    await store.create(AccountConfig(id="old", platform="sandbox", worker_id="w1"))
    rows = [
        ImportRow(2, {"id": "new-1", "platform": "sandbox"}, text=False),
        ImportRow(3, {"id": "new-2", "platform": "sandbox"}, text=False),
        ImportRow(4, {"id": "old", "name": "renamed"}, text=False),
    ]
    plan = await store.plan_import(rows)
    assert plan.problems == []
    assert ([c.id for c in plan.create], list(plan.change)) == (["new-1", "new-2"], ["old"])
    # someone else adds new-2 and removes old between the check and the write
    await store.create(AccountConfig(id="new-2", platform="douyin", name="theirs"))
    await store.remove("old")
    done = await updates.import_accounts(plan)
    assert [c.id for c in done.added] == ["new-1"]
    assert done.updated == []
    assert [type(e) for e in done.raced] == [AccountExists, AccountNotFound]
    assert [str(e) for e in done.raced] == ["account new-2 exists already", "no account 'old'"]
    assert (await store.get("new-2")).name == "theirs"  # theirs, not overwritten
    assert not await redis.exists(settings.keys.account("old"))  # not resurrected
