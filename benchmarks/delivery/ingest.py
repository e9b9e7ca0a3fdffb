"""7. ingest — crawled comments from a backlog in the workers' ingest streams into the
database (issue 16), per engine, against bare XREADGROUP+XACK of the same backlog; and
Redis memory per account, the old layout (items kept in Redis) against now."""

from __future__ import annotations

import math
import os
import random
import sqlite3
import string
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.connection import call, connect, text
from hiscrm_bus.keys import Keys, escape_glob
from hiscrm_bus.messages import CrawlBatch, CrawledItem, encode
from hiscrm_bus.streams import append_many_to
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_master.archive import Archive
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_master.updates import Updates

from .infra import (
    POSTGRES_DURABLE,
    aclose_all,
    describe_revision,
    now,
    postgres_server,
    prefix,
    wait_until,
)

GOAL_PER_S = 10_000.0  # issue 16: items/s into either engine
LEGACY_CAP = 1000  # what the old Redis store kept per account and kind

# ----------------------------------------------------------------------------- the data

# what fans write under a shop's videos: short, Chinese, emoji, the odd @mention
_PHRASES = (
    "请问有大码吗？",
    "太好看了吧😍",
    "已下单，期待收货",
    "主播讲得很清楚，学到了",
    "这个颜色显白吗",
    "价格能再优惠点吗",
    "求链接！！",
    "第一次买，质量怎么样？",
    "已关注，支持一下",
    "哈哈哈哈笑死我了",
    "发货速度怎么样",
    "包邮吗",
    "160斤能穿吗",
    "上次买的已经收到了，面料很舒服",
    "客服回复好慢啊",
    "什么时候补货",
    "同款买了三件，家里人都说好看",
    "这个背景音乐叫什么",
    "蹲一个优惠券",
    "有没有适合学生党的",
    "宝宝们冲鸭🔥",
    "退货运费谁出？",
    "尺码偏大还是偏小",
    "在直播间买的什么时候发",
    "好评！下次还来",
    "老板人真好",
    "能不能出个教程",
    "绝绝子👍",
    "说实话有点贵",
    "已经回购第三次了",
)
_EMOJI = ("😂", "👍", "❤️", "🙏", "[赞]", "[比心]", "[捂脸]", "🌸", "✨")
_NICK_HEAD = ("爱吃", "想去", "不会", "今天也要", "一只", "小", "快乐的", "努力的", "晚睡的")
_NICK_TAIL = ("草莓的猫", "旅行", "游泳的鱼", "开心", "橘子", "李", "星星", "打工人", "兔兔")
_TITLES = (
    "秋冬上新｜这件大衣真的绝了 #穿搭 #显瘦",
    "秋天的第一杯奶茶",
    "小个子女生怎么穿出大长腿",
    "工厂实拍，面料细节看这里",
    "直播预告：周五晚八点不见不散",
    "一衣多穿，一周不重样",
    "宝妈必备的收纳神器",
    "你们要的教程来了",
    "百元内平价好物分享",
    "新品试穿，真实上身效果",
)
_B64 = string.ascii_letters + string.digits + "-_"
_T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _sec_uid(rng: random.Random) -> str:
    """A Douyin-style ``sec_uid`` (the user_id the creator centre gives)."""
    return "MS4wLjABAAAA" + "".join(rng.choices(_B64, k=64))


def _nickname(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return f"用户{rng.randrange(10**9, 10**10)}"  # the platform's default name
    return rng.choice(_NICK_HEAD) + rng.choice(_NICK_TAIL) + ("" if rng.random() < 0.5 else "呀")


def _comment_text(rng: random.Random, fans: Sequence[tuple[str, str]]) -> str:
    parts = rng.sample(_PHRASES, rng.choice((1, 1, 1, 2, 2, 3)))
    if rng.random() < 0.3:
        parts.append(rng.choice(_EMOJI) * rng.randint(1, 3))
    if rng.random() < 0.1:
        parts.insert(0, f"@{rng.choice(fans)[1]} ")
    if rng.random() < 0.05:  # now and then a long one
        parts = [*parts, *rng.sample(_PHRASES, 6)]
    return "".join(parts)


class Crawl:
    """The comments one account's crawls find, made up deterministically: each account
    has its works and its fans; item ids are 19-digit numbers as Douyin's ``cid``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.next_id = 7_429_255_328_484_556_877 + seed * 10_000_000
        self.works = [
            (str(7_400_000_000_000_000_000 + self.rng.randrange(10**17)), self.rng.choice(_TITLES))
            for _ in range(10)
        ]
        self.fans = [(_sec_uid(self.rng), _nickname(self.rng)) for _ in range(300)]
        self.when = _T0
        self.recent: list[tuple[str, tuple[str, str]]] = []

    def item(self) -> CrawledItem:
        rng = self.rng
        self.next_id += rng.randint(1, 5000)
        self.when += timedelta(seconds=rng.randint(1, 600))
        user_id, nickname = rng.choice(self.fans)
        reply = bool(self.recent) and rng.random() < 0.2
        # a reply is under its comment's work
        parent_id, (work_id, title) = (
            rng.choice(self.recent) if reply else ("", rng.choice(self.works))
        )
        extra: dict[str, Any] = {"work_id": work_id, "work_title": title}
        if reply:
            extra["parent_id"] = parent_id
        extra.update(
            level=2 if reply else 1,
            user_id=user_id,
            digg_count=int(rng.paretovariate(1.2)) - 1,
            reply_count=0 if reply else min(int(rng.paretovariate(1.5)) - 1, 500),
            is_author=rng.random() < 0.02,
        )
        item_id = str(self.next_id)
        if not reply:
            self.recent = [*self.recent[-20:], (item_id, (work_id, title))]
        return CrawledItem(
            kind="comment",
            item_id=item_id,
            text=_comment_text(rng, self.fans),
            author=nickname,
            created_at=self.when,
            extra=extra,
        )


def account_ids(n: int) -> list[str]:
    return [f"dy-shop-{k:04d}" for k in range(n)]


def owners(accounts: Sequence[str], workers: int) -> dict[str, str]:
    """Each account's worker, round robin."""
    return {a: f"ing-w{k % workers:03d}" for k, a in enumerate(accounts)}


def backlog(
    accounts: Sequence[str], owner: dict[str, str], items: int, per_batch: int
) -> list[tuple[str, CrawlBatch]]:
    """(worker id, batch) in the order the crawls happen: every account's next crawl in
    turn, ``per_batch`` comments each, ``items`` in all."""
    crawls = {a: Crawl(k) for k, a in enumerate(accounts)}
    left = dict.fromkeys(accounts, 0)
    for k in range(items):
        left[accounts[k % len(accounts)]] += 1
    out: list[tuple[str, CrawlBatch]] = []
    while any(left.values()):
        for a in accounts:
            n = min(per_batch, left[a])
            if not n:
                continue
            left[a] -= n
            crawl = crawls[a]
            batch = CrawlBatch(
                sender=owner[a],
                account_id=a,
                worker_id=owner[a],
                crawled_at=crawl.when,
                items=tuple(crawl.item() for _ in range(n)),
            )
            out.append((owner[a], batch))
    return out


def account_config(account_id: str, worker_id: str, k: int) -> AccountConfig:
    """A logged-in Douyin account, as the hash holds one in production."""
    rng = random.Random(f"acct-{k}")
    uid = _sec_uid(rng)
    return AccountConfig(
        id=account_id,
        platform="douyin",
        name=f"抖音小店 {k:02d} 客服号",
        worker_id=worker_id,
        login_status="logged_in",
        platform_user_id=uid,
        user_info={
            "nickname": f"优选好物{k:02d}号店",
            "unique_id": f"yxhw{rng.randrange(10**8)}",
            "sec_uid": uid,
            "avatar": f"https://p3-pc.douyinpic.com/aweme/100x100/aweme-avatar/{uid[-24:]}.jpeg",
            "follower_count": rng.randrange(1000, 2_000_000),
        },
    )


# ----------------------------------------------------------------------------- Redis memory


async def memory_usage(redis: Redis, keys: Sequence[str]) -> dict[str, int]:
    """MEMORY USAGE of each key, every element counted (SAMPLES 0)."""
    out = {}
    for key in keys:
        used: Any = await call(redis.memory_usage(key, samples=0))
        out[key] = int(used or 0)
    return out


async def account_keys(redis: Redis, keys: Keys, account_id: str) -> list[str]:
    """Every key under the prefix that names the account (as a whole ``:`` part)."""
    pattern = escape_glob(keys.prefix) + "*" + escape_glob(account_id) + "*"
    found = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        name = text(key)
        if account_id in name.removeprefix(keys.prefix).split(":"):
            found.append(name)
    return sorted(found)


async def legacy_memory(redis: Redis, keys: Keys, account_id: str) -> dict[str, int]:
    """What the old Redis store (before issue 16) held for one account with its cap of
    1,000 comments: the ids in a sorted set scored by creation time, a hash of the items
    as JSON, the crawl stats hash — written as its store script wrote them."""
    crawl = Crawl(99_999)
    items = [crawl.item() for _ in range(LEGACY_CAP)]
    ids = keys.legacy_items(account_id, "comments")
    bodies = keys.legacy_item_bodies(account_id, "comments")
    stats = keys.legacy_crawl_stats(account_id)
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, len(items), 100):
            page = items[start : start + 100]
            pipe.zadd(ids, {i.item_id: i.created_at.timestamp() for i in page})
            pipe.hset(bodies, mapping={i.item_id: i.model_dump_json() for i in page})
        pipe.hset(stats, mapping={"comments": len(items), "last_crawl_at": crawl.when.isoformat()})
        await call(pipe.execute())
    try:
        return await memory_usage(redis, [ids, bodies, stats])
    finally:
        await call(redis.delete(ids, bodies, stats))


# ----------------------------------------------------------------------------- the floor


async def floor_ingest(url: str, batches: Sequence[tuple[str, CrawlBatch]]) -> dict[str, Any]:
    """The same backlog (same entries, one stream per worker) consumed with bare
    redis-py: XREADGROUP of every stream (COUNT 100 each, as the Master reads), XACK of
    what came, until all of it is acknowledged. Nothing decoded, nothing stored."""
    p = prefix("floor-ingest")
    client = Redis.from_url(url)
    group = "floor"
    streams = sorted({f"{p}worker:{w}:out:ingest" for w, _b in batches})
    try:
        sends = [(f"{p}worker:{w}:out:ingest", b) for w, b in batches]
        for start in range(0, len(sends), 100):
            await append_many_to(client, sends[start : start + 100], 1_000_000)
        for stream in streams:
            await client.xgroup_create(stream, group, id="0")
        got = 0
        reads = 0
        t0 = now()
        while got < len(batches):
            reply: Any = await client.xreadgroup(
                group, "c", dict.fromkeys(streams, ">"), count=100, block=500
            )
            reads += 1
            async with client.pipeline(transaction=False) as pipe:
                for stream, entries in reply or []:
                    pipe.xack(stream, group, *[e[0] for e in entries])
                    got += len(entries)
                await pipe.execute()
        seconds = now() - t0
        await client.delete(*streams)
    finally:
        await aclose_all(client)
    items = sum(len(b.items) for _w, b in batches)
    return {"entries": got, "reads": reads, "seconds": seconds, "per_s": items / seconds}


# ----------------------------------------------------------------------------- hiscrm


async def ingest_once(  # noqa: PLR0915 - one measurement, read top to bottom
    url: str,
    engine: str,
    database_url: str,
    batches: Sequence[tuple[str, CrawlBatch]],
    owner: dict[str, str],
    *,
    server_pids: Callable[[], list[int]] | None = None,
) -> dict[str, Any]:
    """A backlog already in the workers' ingest streams (the workers registered, alive,
    owning their accounts), then a fresh Master: the time until it has stored all of
    it (its ingest reader has acknowledged every entry, which it does after the
    commit), checked against the database's counts. The CPU time of this process (the
    Master; SQLite's thread too) and of the database server (``server_pids``: its
    postmaster first) over the same span."""
    p = prefix(f"ingest-{engine}")
    msettings = MasterSettings(
        redis_url=url, key_prefix=p, master_id="bench-master", database_url=database_url
    )
    keys = msettings.keys
    admin = await connect(msettings)
    mredis = await connect(msettings)
    accounts = list(owner)
    total = sum(len(b.items) for _w, b in batches)
    out: dict[str, Any] = {"engine": engine, "items": total, "entries": len(batches)}
    try:
        updates = Updates(admin, msettings, "bench")
        configs = [account_config(a, owner[a], k) for k, a in enumerate(accounts)]
        for start in range(0, len(configs), 500):
            await updates.store.create_many(configs[start : start + 500])
        # the workers' heartbeats put them in the index: the Master reads their streams
        registry = WorkerRegistry(admin, keys)
        for w in sorted(set(owner.values())):
            await registry.heartbeat(WorkerInfo(id=w, platforms=("douyin",)), ttl_s=600)
        sends = [(keys.worker_stream(w, "ingest"), b) for w, b in batches]
        for start in range(0, len(sends), 100):
            await append_many_to(admin, sends[start : start + 100], msettings.stream_maxlen)
        # the schema made beforehand, as by an earlier Master: not part of the time
        setup = Archive.open(database_url)
        try:
            await setup.ready()
        finally:
            await setup.close()

        master = Master(msettings, mredis)
        spent = {"store": 0.0, "on_batches": 0.0}
        sizes: list[int] = []
        store, on_batches = master.archive.store, master.on_batches

        async def timed_store(arrivals: Any) -> Any:
            t = now()
            try:
                return await store(arrivals)
            finally:
                spent["store"] += now() - t
                sizes.append(sum(len(a.batch.items) for a in arrivals))

        async def timed_on_batches(received: Any) -> None:
            t = now()
            try:
                await on_batches(received)
            finally:
                spent["on_batches"] += now() - t

        master.archive.store = timed_store  # type: ignore[method-assign]
        master.on_batches = timed_on_batches  # type: ignore[method-assign]
        server0 = tree_cpu_s(server_pids()) if server_pids else math.nan
        cpu0 = time.process_time()
        async with anyio.create_task_group() as tg:
            t0 = now()
            tg.start_soon(master.run)
            await wait_until(
                lambda: master.ingest.processed >= len(batches),
                max(300, total / 200),
                f"the Master to store {total:,} items in {engine}",
            )
            seconds = now() - t0
            cpu_s = time.process_time() - cpu0
            tg.cancel_scope.cancel()
        # after the Master closed its engine: the server's sessions have ended and
        # their time is in the postmaster's (reaped children's) count
        server_s = tree_cpu_s(server_pids()) - server0 if server_pids else math.nan
        check = Archive.open(database_url)
        try:
            counts = await check.counts(accounts)
        finally:
            await check.close()
        stored = sum(c.comments for c in counts.values())
        streams = [keys.worker_stream(w, "ingest") for w in sorted(set(owner.values()))]
        lengths: list[Any] = [await call(admin.xlen(s)) for s in streams]
        after_keys = await account_keys(admin, keys, accounts[0])
        out.update(
            stored=stored,
            crawl_runs=sum(c.crawl_runs for c in counts.values()),
            works=sum(c.works for c in counts.values()),
            seconds=seconds,
            per_s=stored / seconds,
            cpu_s=cpu_s,
            server_cpu_s=server_s,
            store_s=spent["store"],
            on_batches_s=spent["on_batches"],
            transactions=len(sizes),
            largest_transaction=max(sizes, default=0),
            account_keys=await memory_usage(admin, after_keys),
            stream_bytes=sum((await memory_usage(admin, streams)).values()),
            stream_entries=sum(int(n) for n in lengths),
            workers=len(streams),
            accounts=len(accounts),
            maxlen=msettings.stream_maxlen,
        )
    finally:
        await aclose_all(admin, mredis)
    return out


async def bench_ingest(
    url: str,
    *,
    items: int,
    accounts: int,
    workers: int,
    per_batch: int,
    databases: dict[str, str],
    skipped: dict[str, str],
    server_pids: dict[str, Callable[[], list[int]]],
) -> dict[str, Any]:
    """``databases``: engine name → URL of an empty database, each run in turn after
    the floor; ``skipped``: engine name → why it did not run; ``server_pids``: engine
    name → its server's processes, postmaster first (none for SQLite)."""
    ids = account_ids(accounts)
    owner = owners(ids, max(1, min(workers, accounts)))
    t = now()
    batches = backlog(ids, owner, items, per_batch)
    made_s = now() - t
    floor = await floor_ingest(url, batches)
    runs: dict[str, Any] = {}
    client = Redis.from_url(url)
    try:
        # the old layout, for one account under a prefix of its own
        legacy = await legacy_memory(client, Keys(prefix("legacy")), ids[0])
        for engine, database_url in databases.items():
            runs[engine] = await ingest_once(
                url, engine, database_url, batches, owner, server_pids=server_pids.get(engine)
            )
            await client.flushall()
    finally:
        await aclose_all(client)
    per_worker: defaultdict[str, int] = defaultdict(int)
    for w, _b in batches:
        per_worker[w] += 1
    return {
        "items": items,
        "accounts": accounts,
        "workers": len(per_worker),
        "per_batch": per_batch,
        "entries": len(batches),
        "entry_bytes": sum(len(encode(b)) for _w, b in batches) / len(batches),
        "made_s": made_s,
        "floor": floor,
        "runs": runs,
        "legacy": legacy,
        "skipped": skipped,
        "goal_per_s": GOAL_PER_S,
        "legacy_cap": LEGACY_CAP,
    }


async def run_ingest(
    url: str,
    workdir: Path,
    *,
    items: int,
    accounts: int,
    workers: int,
    per_batch: int,
    engines: Sequence[str],
) -> dict[str, Any]:
    """The scenario on each engine asked for: SQLite, a file in the run's directory;
    PostgreSQL, a server of its own for the run (skipped when not installed)."""
    databases: dict[str, str] = {}
    skipped: dict[str, str] = {}
    where: dict[str, str] = {}
    pids: dict[str, Callable[[], list[int]]] = {}
    load = [os.getloadavg()[0]]
    with ExitStack() as stack:
        if "sqlite" in engines:
            path = workdir / "ingest.db"
            databases["sqlite"] = f"sqlite+aiosqlite:///{path}"
            where["sqlite"] = (
                f"SQLite {sqlite3.sqlite_version} (aiosqlite), a file on {fs_type(path)} "
                "(WAL, synchronous=NORMAL: hiscrm's settings)"
            )
        if "postgresql" in engines:
            try:
                server = stack.enter_context(postgres_server())
            except RuntimeError as exc:
                skipped["postgresql"] = str(exc).splitlines()[0]
            else:
                databases["postgresql"] = server.create_database("ingest")
                pids["postgresql"] = server.pids
                settings = ", ".join(f"{k}={v}" for k, v in POSTGRES_DURABLE.items())
                where["postgresql"] = (
                    f"PostgreSQL {server.bin.parent.name} (asyncpg), data on "
                    f"{fs_type(server.workdir)} ({settings})"
                )
        out = await bench_ingest(
            url,
            items=items,
            accounts=accounts,
            workers=workers,
            per_batch=per_batch,
            databases=databases,
            skipped=skipped,
            server_pids=pids,
        )
    load.append(os.getloadavg()[0])
    out["revision"] = describe_revision()
    out["where"] = where
    out["load"] = load
    return out


def tree_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) of these processes so far, and of the children the
    first one has reaped (from /proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for k, pid in enumerate(pids):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after "pid (comm)"
        total += sum(int(v) for v in fields[11 : 15 if k == 0 else 13])
    return total / tick


def fs_type(path: Path) -> str:
    """The type of the file system ``path`` is on (from /proc/mounts), "?" unknown."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                mount = fields[1].rstrip("/") + "/"
                if (str(path) + "/").startswith(mount) and len(mount) > len(best):
                    best, kind = mount, fields[2]
    except OSError:
        return "?"
    return kind
