"""The table, its notes and interpretation; the section of RESULTS.md."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .infra import ratio

# ----------------------------------------------------------------------------- report


@dataclass
class Table:
    rows: list[tuple[str, ...]] = field(default_factory=list)
    head: tuple[str, ...] = ("measure", "hiscrm", "raw Redis floor", "ratio", "DESIGN §7 budget")

    def add(self, *cells: str) -> None:
        self.rows.append(cells)

    def text(self) -> str:
        widths = [max(len(r[i]) for r in [self.head, *self.rows]) for i in range(len(self.head))]
        line = "  ".join("-" * w for w in widths)
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join([fmt.format(*self.head), line, *(fmt.format(*r) for r in self.rows)])

    def markdown(self) -> str:
        out = ["| " + " | ".join(self.head) + " |", "|" + "---|" * len(self.head)]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(out)


def ms(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def x(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.2f}×"


def report_latency(r: dict[str, Any], t: Table, notes: list[str], says: list[str]) -> None:
    lat = r.get("latency")
    if lat:
        f = lat["floor"]
        idle = lat.get("idle_workers", 0)
        one = f"1 worker (+{idle} idle)" if idle else "1 worker"
        for key, label, budget in (
            ("pub_ack_seen", "PUBLISH → ACK seen by the Master", "≤ 1.5×"),
            ("ack_seen", "change() → ACK seen by the Master", ""),
            ("resolved", "change() → Master's ACK handler done", ""),
            ("e2e", "change() → outcome seen by the caller", ""),
        ):
            d = lat[key]
            for q in ("p50", "p99"):
                t.add(f"{one}, {label}, {q}", ms(d[q]), ms(f[q]), x(ratio(d[q], f[q])), budget)
        rec = lat["recorded"]
        t.add(
            f"{one}, tracker latency_ms p50 / p99",
            f"{rec['p50']:.0f} / {rec['p99']:.0f} ms",
            "",
            "",
            "(Redis clock, whole ms)",
        )
        notes.append(
            f"latency: {lat['n']} interleaved round trips each, after {lat['warmup']} unmeasured; "
            f"outcomes {lat['statuses']}; {idle} more workers registered, idle"
            + (
                " (the floor shares the event loop with the Master, which names every "
                "worker's stream in each read it issues: compare absolute times with a run "
                "without them)"
                if idle
                else ""
            )
            + "; "
            f"`Updates.change` alone (HGETALL + versioned write, "
            f"pending record, PUBLISH) p50 {ms(lat['published']['p50'])}, p99 "
            f"{ms(lat['published']['p99'])}; the floor's clock starts at its HSET+PUBLISH "
            "pipeline."
        )
        a50 = ratio(lat["pub_ack_seen"]["p50"], f["p50"])
        a99 = ratio(lat["pub_ack_seen"]["p99"], f["p99"])
        c50 = ratio(lat["ack_seen"]["p50"], f["p50"])
        verdict = "within" if max(a50, a99) <= 1.5 else "outside"
        says.append(
            f"With one worker, an update's ACK reaches the Master "
            f"{ms(lat['pub_ack_seen']['p50'])} (p50) and {ms(lat['pub_ack_seen']['p99'])} (p99) "
            f"after its PUBLISH, {x(a50)} and {x(a99)} the bare HSET+PUBLISH → HGETALL → XADD → "
            f"XREAD round trip ({ms(f['p50'])} / {ms(f['p99'])}), so {verdict} the 1.5× budget. "
            f"Counted from the call to `Updates.change` it is {ms(lat['ack_seen']['p50'])} "
            f"({x(c50)}): the versioned write and the pending record that must precede the "
            f"notice cost {ms(lat['published']['p50'])} before anything is published."
        )


def report_throughput(r: dict[str, Any], t: Table, notes: list[str], says: list[str]) -> None:
    tp = r.get("throughput")
    if tp:
        fl = tp["floor"]
        rr = ratio(tp["per_s"], fl["per_s"])
        t.add(
            f"{tp['workers']} workers, applied updates/s",
            f"{tp['per_s']:.0f}/s",
            f"{fl['per_s']:.0f}/s",
            x(rr),
            "≥ 0.5×",
        )
        notes.append(
            f"throughput: {tp['total']} updates over {tp['accounts']} accounts "
            f"({tp['workers']} in-process workers, one Master, one event loop); outcomes "
            f"{tp['statuses']}, {tp['acks']} ACKs read by the Master, {tp['retried']} retries; "
            f"all sent after {tp['send_s']:.2f} s, last outcome after {tp['seconds']:.2f} s "
            f"(floor: sent {fl['send_s']:.2f} s, done {fl['seconds']:.2f} s); "
            f"the {tp['workers']} workers started in {tp['fleet_start_s']:.2f} s and the Master "
            f"had read every one's start-up ACKs after {tp['master_caught_up_s']:.2f} s "
            "(measuring began then)."
        )
        if tp["retried"]:
            notes.append(
                f"the {tp['retried']} retries are the sweeper re-sending updates whose ACKs were "
                "already in the stream, unread: the Master fell more than ack_timeout_s behind."
            )
        dr = tp["drain"]
        notes.append(
            f"Master alone: with {dr['acks']} pending updates and their ACKs already in the "
            f"stream, one Master read and resolved them at {dr['per_s']:.0f} ACKs/s "
            f"({dr['seconds']:.2f} s, {dr['applied']} applied) — "
            f"{x(ratio(dr['per_s'], fl['per_s']))} the floor's end-to-end rate."
        )
        verdict = "meets" if rr >= 0.5 else "misses"
        says.append(
            f"Across {tp['workers']} workers hiscrm completed {tp['per_s']:.0f} applied "
            f"updates/s against the floor's {fl['per_s']:.0f}/s ({x(rr)}), so it {verdict} "
            "the half-the-floor budget; both sides share one Python event loop on this "
            "machine, so this compares Python work per update at least as much as Redis."
        )


def us_per(run: Mapping[str, Any], cpu: str = "redis_cpu_s") -> str:
    """CPU seconds ``run[cpu]`` per completed update of a throughput run, in µs."""
    done = run.get("applied", run.get("completed", 0))
    return f"{run[cpu] / done * 1e6:.0f} µs" if done else "-"


def report_processes(r: dict[str, Any], t: Table, notes: list[str], says: list[str]) -> None:
    pt = r.get("processes")
    if pt:
        fl = pt["floor"]
        rr = ratio(pt["per_s"], fl["per_s"])
        t.add(
            f"{pt['workers']} workers in {pt['processes']} processes, applied updates/s",
            f"{pt['per_s']:.0f}/s",
            f"{fl['per_s']:.0f}/s",
            x(rr),
            "≥ 1.0× (issue 11)",
        )
        sp = pt.get("floor_spread")
        if sp:
            t.add(
                f"… against the floor spread over {sp['processes']} processes too",
                f"{pt['per_s']:.0f}/s",
                f"{sp['per_s']:.0f}/s",
                x(ratio(pt["per_s"], sp["per_s"])),
                "",
            )
            notes.append(
                f"processes, the floor spread like for like: the same bare subscribers in "
                f"{sp['processes']} host processes (benchmarks/delivery/floor_host.py), the "
                f"producer and the reader here: {sp['per_s']:.0f}/s; CPU per update: "
                f"redis-server {us_per(sp)}, the subscriber hosts {us_per(sp, 'hosts_cpu_s')}, "
                f"the producer and the reader {us_per(sp, 'here_cpu_s')}."
            )
        notes.append(
            f"processes: {pt['total']} updates over {pt['workers']} accounts, one per worker, "
            f"the workers in {pt['processes']} host processes (benchmarks/delivery/host.py), "
            f"the Master and the caller here; outcomes {pt['statuses']}, {pt['retried']} "
            f"retries; all sent after {pt['send_s']:.2f} s, last outcome after "
            f"{pt['seconds']:.2f} s (floor, in one process: sent {fl['send_s']:.2f} s, done "
            f"{fl['seconds']:.2f} s); the hosts were ready after {pt['start_s']:.2f} s. "
            f"CPU per applied update: redis-server {us_per(pt)} (floor {us_per(fl)}), the "
            f"worker hosts {us_per(pt, 'hosts_cpu_s')}, the Master and the caller "
            f"{us_per(pt, 'here_cpu_s')}; on {os.cpu_count()} cores."
        )
        if pt.get("redis_cpu_nodes") and pt["applied"]:
            each = ", ".join(
                f"{name} {cpu / pt['applied'] * 1e6:.0f} µs"
                for name, cpu in sorted(pt["redis_cpu_nodes"].items())
            )
            notes.append(f"processes, redis-server CPU per applied update by node: {each}.")
        says.append(
            f"With the {pt['workers']} workers spread over {pt['processes']} processes hiscrm "
            f"completed {pt['per_s']:.0f} applied updates/s, {x(rr)} the floor's "
            f"{fl['per_s']:.0f}/s"
            + (
                f" ({x(ratio(pt['per_s'], sp['per_s']))} the same floor spread over "
                f"{sp['processes']} processes: {sp['per_s']:.0f}/s)."
                if sp
                else "."
            )
        )


def report_fleet(r: dict[str, Any], t: Table, notes: list[str], says: list[str]) -> None:
    fc = r.get("fleet")
    if fc:
        t.add(
            f"set --all over {fc['accounts']:,} accounts on {fc['processes']} worker "
            'processes, "last ACK after"',
            ms(fc["last_ack_ms"]),
            "",
            "",
            "≤ 250 ms (issue 11)",
        )
        notes.append(
            f"fleet: `hiscrm account set --all name=… --wait` as the CLI does it (read every "
            f"hash, `change_many`, wait for the outcomes), {fc['reps']} times over "
            f"{fc['accounts']:,} accounts owned by one worker in each of {fc['processes']} "
            'host processes; best "last ACK after" (largest recorded latency_ms, Redis '
            "clock) kept; all: "
            + ", ".join(f"{run['last_ack_ms']:.0f}" for run in fc["runs"])
            + " ms; whole command from its first read: "
            + ", ".join(f"{run['wall_ms']:.0f}" for run in fc["runs"])
            + " ms."
        )
        says.append(
            f"A fleet-wide change of {fc['accounts']:,} accounts on {fc['processes']} worker "
            f"processes had its last ACK after {ms(fc['last_ack_ms'])}."
        )


def report_reconcile(r: dict[str, Any], t: Table, notes: list[str], says: list[str]) -> None:
    rc = r.get("reconcile")
    if rc:
        best = min(rc["reconcile_s"]) * 1000
        floor = min(rc["floor_s"]) * 1000
        same = min(rc["floor_same_s"]) * 1000
        n = rc["accounts"]
        t.add(
            f"reconcile {n:,} accounts (Worker.reconcile)",
            ms(best),
            ms(floor),
            x(ratio(best, floor)),
            "well under 1 s",
        )
        t.add(
            "  … against the same 4 round trips bare",
            ms(best),
            ms(same),
            x(ratio(best, same)),
            "",
        )
        t.add(
            f"  … Worker.run until ready ({rc['run_applied']:,} applied)",
            ms(rc["run_ready_s"] * 1000),
            "",
            "",
            "",
        )
        notes.append(
            f"reconcile: best of {rc['reps']} (all: "
            + ", ".join(f"{v * 1000:.0f}" for v in rc["reconcile_s"])
            + " ms; floor HGETALL-only "
            + ", ".join(f"{v * 1000:.0f}" for v in rc["floor_s"])
            + f" ms); every task out of `starting` after "
            f"{min(rc['settle_s']) * 1000:.0f} ms; whole worker settled after "
            f"{rc['run_settled_s'] * 1000:.0f} ms; one heartbeat with {n:,} task reports "
            f"{rc['heartbeat_s'] * 1000:.0f} ms (its `tasks` field {rc['hb_bytes'] / 1e6:.1f} MB); "
            f"task-status events dropped (outgoing queue full): {rc['dropped_reconcile_only']} "
            f"in the reconcile-only runs, {rc['dropped_full_run']} in the full run; "
            f"creating the accounts took {rc['setup_s']:.1f} s (not measured)."
        )
        ph = rc["phases"]
        reads = ph.get("ids_of_worker", 0) + ph.get("versions", 0) + ph.get("get_each", 0)
        notes.append(
            f"inside the best `Worker.reconcile` ({ms(best)}): SMEMBERS "
            f"{ms(ph.get('ids_of_worker', 0) * 1000)}, pipelined HGET of every version "
            f"{ms(ph.get('versions', 0) * 1000)}, pipelined HGETALL of every hash "
            f"{ms(ph.get('get_each', 0) * 1000)}; the remaining {ms(best - reads * 1000)} is the "
            "per-account apply loop (decode, validate, register a task) and writing the ACKs "
            "(one stream entry per 1,000 accounts); the tasks start in bulk right after "
            "(the 'out of starting' time above)."
        )
        verdict = "well under" if best < 500 else "under" if best < 1000 else "over"
        says.append(
            f"A worker taking over {n:,} accounts reconciles them in {ms(best)}, "
            f"{verdict} a second: {x(ratio(best, floor))} one pipelined HGETALL of every "
            f"hash ({ms(floor)}) and {x(ratio(best, same))} the same four pipelined round trips "
            f"bare ({ms(same)}); its own Redis reads take {ms(reads * 1000)}, the rest is "
            "Python work per account."
            + (
                f" The floor alone needs {ms(floor)} with redis-py's pure-Python reply parser, "
                "so the budget is out of reach without hiredis whatever the worker does."
                if floor > 500 and "(no hiredis)" in r.get("env", "")
                else ""
            )
        )


def report_celery(r: dict[str, Any], t: Table, notes: list[str], says: list[str]) -> None:
    lat = r.get("latency")
    ce = r.get("celery")
    if ce:
        if "skipped" in ce:
            t.add("Celery broadcast(reply=True)", "skipped", "", "", "")
            notes.append(f"celery: skipped — {ce['skipped']}")
        else:
            f: dict[str, float] | None = (lat or {}).get("floor")
            for q in ("p50", "p99"):
                t.add(
                    f"Celery broadcast(reply=True), 1 worker, {q}",
                    ms(ce["rt"][q]) + " (Celery)",
                    ms(f[q]) if f else "",
                    x(ratio(ce["rt"][q], f[q])) if f else "",
                    "report",
                )
            notes.append(
                f"celery: {ce['rt']['n']} `control.broadcast('ping', reply=True, limit=1)` to one "
                f"solo-pool worker, celery {ce['celery']} / kombu {ce['kombu']} from {ce['where']},"
                f" same redis-server (db 1); {ce['missing']} without a reply."
            )
            if lat and f:
                says.append(
                    f"Celery's `control.broadcast(reply=True)` to one worker on the same Redis "
                    f"takes {ms(ce['rt']['p50'])} at p50 and {ms(ce['rt']['p99'])} at p99, "
                    f"{x(ratio(ce['rt']['p50'], f['p50']))} the floor and "
                    f"{x(ratio(ce['rt']['p50'], lat['e2e']['p50']))} hiscrm's whole "
                    f"caller-visible round trip ({ms(lat['e2e']['p50'])}: versioned write, "
                    "tracked delivery, recorded outcome); a broadcast that gets no reply is "
                    "simply gone, with no retry and no record."
                )


def build_report(r: dict[str, Any]) -> tuple[Table, list[str], list[str]]:
    """The table, the notes under it, and the sentences of the interpretation."""
    t = Table()
    notes: list[str] = []
    says: list[str] = []
    for part in (
        report_latency,
        report_throughput,
        report_processes,
        report_fleet,
        report_reconcile,
        report_celery,
    ):
        part(r, t, notes, says)
    return t, notes, says


def size(n: float) -> str:
    """Bytes in B, KiB, MiB or GiB."""
    if math.isnan(n):
        return "—"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n:.0f} B"


ENGINES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def ingest_memory(ig: dict[str, Any]) -> tuple[float, float, float] | None:
    """(before, after, ingest streams) bytes per account, from the first engine's run."""
    run = next(iter(ig["runs"].values()), None)
    if run is None:
        return None
    after = float(sum(run["account_keys"].values()))
    before = after + sum(ig["legacy"].values())
    return before, after, run["stream_bytes"] / run["accounts"]


def build_ingest_report(r: dict[str, Any]) -> tuple[Table, list[str], list[str], str]:
    """The section "Crawled data: ingest and Redis memory (issue 16)"."""
    t = Table(head=("measure", "hiscrm", "bare redis-py floor", "ratio", "goal (issue 16)"))
    notes: list[str] = []
    says: list[str] = []
    intro = (
        "Items/s: a backlog of crawl batches waits in the workers' ingest streams, then a "
        "real `Master` (in-process) stores it; its floor is bare redis-py reading and "
        "acknowledging the same entries (XREADGROUP + XACK, nothing decoded or stored); "
        "ratios are hiscrm ÷ floor. Memory: `MEMORY USAGE … SAMPLES 0` of one account's "
        "keys."
    )
    ig = r.get("ingest")
    if not ig:
        return t, notes, says, intro
    fl = ig["floor"]
    goal = ig["goal_per_s"]
    n = ig["items"]
    for engine, run in ig["runs"].items():
        t.add(
            f"{n:,} comments from a backlog into {ENGINES[engine]}, items/s",
            f"{run['per_s']:,.0f}/s",
            f"{fl['per_s']:,.0f}/s",
            x(ratio(run["per_s"], fl["per_s"])),
            f"≥ {goal:,.0f}/s",
        )
    for engine, why in ig["skipped"].items():
        t.add(f"{n:,} comments from a backlog into {ENGINES[engine]}", "skipped", "", "", "")
        notes.append(f"{ENGINES[engine]}: skipped — {why}")
    mem = ingest_memory(ig)
    if mem is not None:
        before, after, streams = mem
        cap = ig["legacy_cap"]
        t.add(
            f"Redis memory per account, before: {cap:,} comments kept in Redis, and the "
            "account's keys",
            size(before),
            "",
            "",
            "report",
        )
        t.add("Redis memory per account now: every key naming the account", size(after), "", "", "")
        t.add(
            "  … and the ingest streams after the backlog, per account (acknowledged "
            "entries, kept until trimmed)",
            size(streams),
            "",
            "",
            "",
        )
    notes.append(
        f"ingest: {n:,} comments over {ig['accounts']} accounts owned by {ig['workers']} "
        f"workers (registered, not running), {ig['per_batch']} per crawl batch: "
        f"{ig['entries']:,} `CrawlBatch` entries of {size(ig['entry_bytes'])} on average "
        "(Chinese text, emoji, Douyin-style ids; extras work_id, work_title, level, user_id, "
        "digg_count, reply_count, is_author, parent_id on replies), written with the "
        "library's `append_many_to` to each worker's `ingest` stream. The schema was made "
        "beforehand; the clock starts as `Master.run` starts and stops when its ingest "
        "reader has acknowledged every entry (it XACKs after the commit), then the "
        "database's counts are checked."
    )
    load = ig.get("load")
    if load:
        notes.append(
            f"library at {ig.get('revision', '?')}; machine: {r.get('env', '')}; "
            f"load average (1 min) {load[0]:.1f} as the scenario "
            f"began, {load[-1]:.1f} as it ended (other work on the machine slows wall times; "
            "the CPU times below are less sensitive to it)."
        )
    notes.append(
        f"floor: {fl['entries']:,} entries read and acknowledged in {fl['reads']} "
        f"XREADGROUP (COUNT 100 per stream, as the Master reads) + XACK rounds in "
        f"{fl['seconds']:.2f} s."
    )
    for engine, run in ig["runs"].items():
        other = run["seconds"] - run["on_batches_s"]
        notes.append(
            f"{ENGINES[engine]} — {ig['where'].get(engine, '?')}: stored "
            f"{run['stored']:,} of {run['items']:,} comments ({run['crawl_runs']:,} crawl runs, "
            f"{run['works']:,} works) in {run['seconds']:.2f} s, "
            f"{ratio(run['seconds'], fl['seconds']):.1f}× the floor's time; "
            f"{run['transactions']} transactions (`Archive.store`), the largest "
            f"{run['largest_transaction']:,} comments; inside: `Archive.store` "
            f"{run['store_s']:.2f} s, the rest of `Master.on_batches` (owner check) "
            f"{run['on_batches_s'] - run['store_s']:.2f} s, everything else (start-up, "
            f"XREADGROUP, decoding the messages, XACK) {other:.2f} s; CPU meanwhile: this "
            f"process (the Master{', SQLite in its thread' if engine == 'sqlite' else ''}) "
            f"{run['cpu_s']:.2f} s"
            + (
                f", the PostgreSQL server {run['server_cpu_s']:.2f} s"
                if not math.isnan(run.get("server_cpu_s", math.nan))
                else ""
            )
            + "."
        )
    run0 = next(iter(ig["runs"].values()), None)
    if mem is not None and run0 is not None:
        before, after, streams = mem
        legacy = ig["legacy"]
        per_entry = run0["stream_bytes"] / max(run0["stream_entries"], 1)
        notes.append(
            "memory before: the layout of the old Redis store (its store script, "
            f"`keys.legacy_items` / `legacy_item_bodies` / `legacy_crawl_stats`) for one "
            f"account at its cap of {ig['legacy_cap']:,} comments of the same kind: "
            + ", ".join(f"{_kind(k)} {size(v)}" for k, v in legacy.items())
            + f"; plus the keys the account has now ({size(after)}). Now: SCAN MATCH on the "
            "prefix and the account id finds "
            + ", ".join(f"`{_short(k)}` {size(v)}" for k, v in run0["account_keys"].items())
            + " (a logged-in Douyin account's hash, no update pending). Not counted either "
            "way: its sealed browser session (`account:<id>:session`, written at login, the "
            "same before and after) and its members of shared sets (`accounts`, the worker's "
            "`accounts`)."
        )
        notes.append(
            f"ingest streams: after the run every entry was acknowledged, and all "
            f"{run0['stream_entries']:,} were still in the {run0['workers']} streams "
            f"({size(run0['stream_bytes'])}, {size(streams)} per account): XACK does not "
            f"delete; each worker's stream is trimmed only past `stream_maxlen` "
            f"({run0['maxlen']:,} entries): at this run's {size(per_entry)} per entry "
            f"({ig['per_batch']} comments), {size(per_entry * run0['maxlen'])} per worker "
            "before the first trim."
        )
    for engine, run in ig["runs"].items():
        verdict = "meets" if run["per_s"] >= goal else "misses"
        says.append(
            f"From a backlog, the Master stored {run['per_s']:,.0f} comments/s into "
            f"{ENGINES[engine]} ({run['seconds']:.1f} s for {n:,}), so it {verdict} the "
            f"{goal:,.0f}/s goal; bare XREADGROUP + XACK of the same entries runs at "
            f"{fl['per_s']:,.0f}/s ({x(ratio(run['per_s'], fl['per_s']))})."
        )
    if mem is not None:
        before, after, streams = mem
        says.append(
            f"An account's own Redis keys now take {size(after)}, against {size(before)} "
            f"when Redis kept its {ig['legacy_cap']:,} newest comments "
            f"({before / after:.0f}× less); but the ingest streams keep what was crawled "
            f"until trimmed: {size(streams)} per account after this backlog."
        )
    return t, notes, says, intro


def _kind(key: str) -> str:
    if key.endswith(":bodies"):
        return "hash of JSON bodies"
    if key.endswith(":crawl"):
        return "crawl stats hash"
    return "sorted set of ids"


def _short(key: str) -> str:
    """A key without the run's prefix: ``account:<id>…``."""
    _head, sep, tail = key.partition(":account:")
    return f"account:{tail}" if sep else key


def write_results(
    path: Path,
    *,
    title: str,
    command: str,
    env: str,
    t: Table,
    notes: list[str],
    says: list[str],
    intro: str | None = None,
) -> None:
    """Replace the section headed exactly ``title`` (or append it); ``intro`` follows
    the command and the machine in its first paragraph."""
    intro = f"`{command}` — {env}. " + (
        intro
        or "Each hiscrm figure is measured in the same run as its floor, the same round trip "
        "written with bare redis-py; ratios are hiscrm ÷ floor."
    )
    body = [
        title,
        "",
        textwrap.fill(intro, 92, break_long_words=False, break_on_hyphens=False),
        "",
        t.markdown(),
        "",
        *(
            textwrap.fill(
                n, 92, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False
            )
            for n in notes
        ),
        "",
        textwrap.fill(" ".join(says), 92, break_on_hyphens=False),
    ]
    lines = (path.read_text() if path.exists() else "# Benchmark notes\n").splitlines()
    if title in lines:
        start = lines.index(title)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = [*body, ""] if end < len(lines) else body
    else:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *body]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
