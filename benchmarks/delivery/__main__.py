"""The command line: ``python -m benchmarks.delivery``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio

from . import __doc__ as DOC
from .celery import bench_celery
from .figures import write_json
from .infra import (
    CLUSTER_SECTION,
    INGEST_SECTION,
    RESULTS,
    SECTION,
    Flush,
    LogTally,
    describe_machine,
    describe_revision,
    hiredis_available,
    redis_cluster,
    redis_server,
    reexec_with_hiredis,
)
from .ingest import run_ingest
from .latency import bench_latency
from .processes import bench_fleet, bench_processes, split
from .reconcile import bench_reconcile
from .report import Table, build_ingest_report, build_report, write_results
from .throughput import HostGroups, bench_master_drain, bench_throughput, floor_throughput

# the scenarios reported in the section "Delivery (DESIGN.md §7)"; ingest has its own
DELIVERY_PARTS = {"latency", "throughput", "processes", "fleet", "reconcile", "celery"}
# the scenarios --cluster runs (section "Redis Cluster (issue 13)")
CLUSTER_PARTS = ("latency", "throughput", "processes", "fleet")
CLUSTER_INTRO = (
    "Against a local Redis Cluster of 3 primaries and 3 replicas (tests/redis_cluster.py; "
    "every node a redis-server on this same machine) given to every process as a "
    "redis+cluster:// URL. Each hiscrm figure is measured in the same run as its floor, "
    "the same round trip written with bare redis-py on the same cluster (its cluster "
    "client, SPUBLISH, SSUBSCRIBE on the primary that serves the channel's slot); "
    "ratios are hiscrm ÷ floor. redis-server CPU is the sum over all six nodes."
)

# --smoke: every scenario, tiny; a flag given explicitly still wins
SMOKE_SIZES: dict[str, Any] = {
    "latency_n": 20,
    "warmup": 5,
    "idle_workers": 3,
    "workers": 4,
    "accounts_per_worker": 1,
    "updates": 40,
    "reconcile_accounts": 200,
    "reconcile_reps": 1,
    "celery_n": 5,
    "processes": 2,
    "process_workers": 4,
    "fleet_accounts": 20,
    "fleet_processes": 2,
    "fleet_reps": 1,
    "ingest_items": 2000,
    "ingest_accounts": 4,
    "ingest_workers": 2,
    "no_celery_install": True,
    "no_results": True,
}


async def run_processes(
    args: argparse.Namespace, pw: int, url: str, workdir: Path, flush: Flush
) -> dict[str, Any]:
    """The processes run with its two floors: the bare fleet in this one process (the
    goal's), and spread over host processes as hiscrm's workers are (like for like)."""
    floor = await floor_throughput(url, pw, args.updates, pw)
    flush.flushall()
    groups = HostGroups(split(list(range(pw)), args.processes))
    spread = await floor_throughput(url, pw, args.updates, pw, groups)
    flush.flushall()
    pt = await bench_processes(url, args.processes, pw, args.updates, workdir)
    return {**pt, "floor": floor, "floor_spread": spread}


async def run_all(
    args: argparse.Namespace, url: str, workdir: Path, tally: LogTally
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    flush = Flush(url)
    try:
        if "latency" in args.only:
            print(f"1/7 latency: {args.latency_n} round trips each (+{args.warmup} warm-up) …")
            with anyio.fail_after(600):
                results["latency"] = await bench_latency(
                    url, args.latency_n, args.warmup, workdir, args.idle_workers
                )
            flush.flushall()
        if "throughput" in args.only:
            print(f"2/7 throughput: {args.updates} updates across {args.workers} workers …")
            with anyio.fail_after(900):
                floor = await floor_throughput(url, args.workers, args.updates, args.workers)
                flush.flushall()
                tp = await bench_throughput(
                    url, args.workers, args.accounts_per_worker, args.updates, workdir
                )
            tp["floor"] = floor
            flush.flushall()
            with anyio.fail_after(300):
                tp["drain"] = await bench_master_drain(url, args.updates)
            results["throughput"] = tp
            flush.flushall()
        if "processes" in args.only:
            pw = args.process_workers or args.workers
            print(
                f"3/7 processes: {args.updates} updates, {pw} workers "
                f"in {args.processes} processes …"
            )
            with anyio.fail_after(900):
                results["processes"] = await run_processes(args, pw, url, workdir, flush)
            flush.flushall()
        if "fleet" in args.only:
            print(
                f"4/7 fleet: set --all over {args.fleet_accounts} accounts on "
                f"{args.fleet_processes} worker processes, {args.fleet_reps} times …"
            )
            with anyio.fail_after(900):
                results["fleet"] = await bench_fleet(
                    url, args.fleet_processes, args.fleet_accounts, args.fleet_reps, workdir
                )
            flush.flushall()
        if "reconcile" in args.only:
            print(f"5/7 reconcile: {args.reconcile_accounts} accounts …")
            with anyio.fail_after(900):
                results["reconcile"] = await bench_reconcile(
                    url, args.reconcile_accounts, args.reconcile_reps, workdir, tally
                )
            flush.flushall()
        if "ingest" in args.only:
            print(
                f"6/7 ingest: {args.ingest_items:,} comments over {args.ingest_accounts} accounts "
                f"and {args.ingest_workers} workers into {' and '.join(args.ingest_engines)} …"
            )
            with anyio.fail_after(3600):
                results["ingest"] = await run_ingest(
                    url,
                    workdir,
                    items=args.ingest_items,
                    accounts=args.ingest_accounts,
                    workers=args.ingest_workers,
                    per_batch=args.ingest_batch,
                    engines=args.ingest_engines,
                )
            flush.flushall()
    finally:
        flush.close()
    return results


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=DOC, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--latency-n", type=int, default=500, help="round trips measured (each side)")
    ap.add_argument("--warmup", type=int, default=50, help="round trips not measured")
    ap.add_argument(
        "--idle-workers",
        type=int,
        default=0,
        help="more workers registered (alive, idle) in the latency run, as in a fleet",
    )
    ap.add_argument("--workers", type=int, default=100, help="workers in the throughput run")
    ap.add_argument("--accounts-per-worker", type=int, default=1)
    ap.add_argument("--updates", type=int, default=2000, help="updates in the throughput run")
    ap.add_argument("--reconcile-accounts", type=int, default=10_000)
    ap.add_argument("--reconcile-reps", type=int, default=3)
    ap.add_argument("--celery-n", type=int, default=200, help="Celery broadcasts measured")
    ap.add_argument(
        "--no-celery-install",
        action="store_true",
        help="skip Celery unless it is installed already (else var/bench/celery-venv is made)",
    )
    ap.add_argument(
        "--processes", type=int, default=4, help="worker processes in the processes run"
    )
    ap.add_argument(
        "--process-workers",
        type=int,
        default=0,
        help="workers spread over those processes (default: --workers)",
    )
    ap.add_argument("--fleet-accounts", type=int, default=1000, help="accounts in the fleet run")
    ap.add_argument("--fleet-processes", type=int, default=10, help="worker processes, fleet run")
    ap.add_argument("--fleet-reps", type=int, default=3, help="fleet-wide changes (best kept)")
    ap.add_argument(
        "--ingest-items", type=int, default=100_000, help="crawled comments in the ingest run"
    )
    ap.add_argument("--ingest-accounts", type=int, default=100, help="accounts they belong to")
    ap.add_argument("--ingest-workers", type=int, default=10, help="workers owning those")
    ap.add_argument("--ingest-batch", type=int, default=50, help="comments per crawl batch")
    engines = ("sqlite", "postgresql")
    ap.add_argument(
        "--ingest-engines",
        nargs="+",
        choices=engines,
        default=list(engines),
        help="databases the ingest run stores into (PostgreSQL: Debian's, started for the run)",
    )
    parts = ("latency", "throughput", "processes", "fleet", "reconcile", "ingest", "celery")
    ap.add_argument("--only", nargs="+", choices=parts, default=list(parts))
    ap.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    ap.add_argument("--no-results", action="store_true", help="print only")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="every scenario at tiny sizes (a few seconds), checked for completion only;\n"
        "never writes results, never installs Celery (make bench-smoke, part of make test)",
    )
    ap.add_argument(
        "--cluster",
        action="store_true",
        help="run latency, throughput, processes and fleet (or those of --only) against a\n"
        "local 3-primary + 3-replica Redis Cluster (tests/redis_cluster.py) instead of one\n"
        'redis-server; results go to their own section, "Redis Cluster (issue 13)"',
    )
    ap.add_argument(
        "--hiredis",
        action="store_true",
        help="use redis-py's hiredis parser (installed into var/bench/hiredis, not the venv);\n"
        'results go to their own section, "… §7), with hiredis"',
    )
    args = ap.parse_args()
    if args.smoke:
        ap.set_defaults(**SMOKE_SIZES)
        args = ap.parse_args()
        args.no_results = args.no_celery_install = True
    if args.cluster:
        args.only = [p for p in args.only if p in CLUSTER_PARTS]
        if not args.only:  # e.g. make bench BENCH_ARGS="--only ingest": nothing to do here
            print(f"--cluster runs only {', '.join(CLUSTER_PARTS)}: nothing to run")
            raise SystemExit(0)
    return args


Section = tuple[str, dict[str, Any], Table, list[str], list[str], str | None]


def report_sections(args: argparse.Namespace, results: dict[str, Any], env: str) -> list[Section]:
    # one RESULTS.md section (and results.json entry) per group of scenarios, written
    # only when the run had one of them: --only ingest leaves the delivery figures alone
    hiredis = ", with hiredis" if args.hiredis else ""
    sections: list[Section] = []
    if args.cluster:
        delivery = {k: v for k, v in results.items() if k != "ingest"}
        sections.append(
            (
                CLUSTER_SECTION + hiredis,
                delivery,
                *build_report(delivery),
                CLUSTER_INTRO + f" Library measured: {describe_revision()}.",
            )
        )
    elif set(args.only) & DELIVERY_PARTS:
        delivery = {k: v for k, v in results.items() if k != "ingest"}
        sections.append((SECTION + hiredis, delivery, *build_report(delivery), None))
    if "ingest" in args.only:
        ingest = {"ingest": results.get("ingest"), "env": env}
        sections.append((INGEST_SECTION + hiredis, ingest, *build_ingest_report(ingest)))
    return sections


def main() -> None:
    args = parse_args()
    if args.hiredis and not hiredis_available():
        reexec_with_hiredis()

    tally = LogTally()
    logging.basicConfig(level=logging.WARNING, handlers=[tally], force=True)
    env = describe_machine()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hiscrm-bench-") as tmp:
        workdir = Path(tmp)
        # in-process Masters keep crawled data here, not in the current directory
        os.environ.setdefault("HISCRM_DATABASE_URL", f"sqlite+aiosqlite:///{workdir}/bench.db")
        if args.cluster:
            env += ", local Redis Cluster: 3 primaries + 3 replicas"
        with (redis_cluster if args.cluster else redis_server)(workdir) as url:
            print(f"{'Redis Cluster' if args.cluster else 'redis-server'} at {url}; {env}")
            results = anyio.run(run_all, args, url, workdir, tally, backend="asyncio")
            results["env"] = env
            if "celery" in args.only:
                print(f"7/7 celery: {args.celery_n} broadcasts with reply …")
                results["celery"] = bench_celery(
                    url, args.celery_n, args.warmup, workdir, not args.no_celery_install
                )
    sections = report_sections(args, results, env)
    for _title, _r, t, notes, says, _intro in sections:
        print()
        print(t.text())
        print()
        for n in notes:
            print(textwrap.fill(n, 100, initial_indent="- ", subsequent_indent="  "))
        print()
        print(textwrap.fill(" ".join(says), 100))
    if tally.counts:
        print("\nwarnings logged by hiscrm during the run:")
        for (name, msg), count in tally.counts.most_common():
            print(f"  {count:6d}  {name}: {msg}")
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if args.smoke:
        problems = smoke_problems(results, args)
        for problem in problems:
            print(f"smoke: {problem}", file=sys.stderr)
        if problems:
            raise SystemExit(1)
        print(
            "smoke: every scenario ran to completion (sizes too small for the numbers to mean much)"
        )
    if not args.no_results:
        command = " ".join([".venv/bin/python", "-m", "benchmarks.delivery", *sys.argv[1:]])
        results_json = args.results.parent / "results.json"
        for title, r, t, notes, says, intro in sections:
            write_results(
                args.results,
                title=title,
                command=command,
                env=env,
                t=t,
                notes=notes,
                says=says,
                intro=intro,
            )
            write_json(results_json, title=title, command=command, env=env, r=r)
        print(f"results written to {args.results} and {results_json}")


def smoke_problems(r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What a --smoke run shows broken: a scenario that did not run to completion, or
    instrumentation that no longer sees what it wraps. Never a judgement on the numbers."""
    out: list[str] = []
    lat = r.get("latency")
    if "latency" in args.only:
        rounds = args.latency_n + args.warmup
        if not lat or lat["statuses"] != {"applied": rounds}:
            out.append(f"latency: outcomes {lat and lat['statuses']}, expected {rounds} applied")
        elif lat["ack_seen"]["n"] != args.latency_n or lat["pub_ack_seen"]["n"] != args.latency_n:
            out.append("latency: the wrapped Master.on_acks / Updates.notify saw no updates")
    tp = r.get("throughput")
    if "throughput" in args.only:
        if not tp or tp["applied"] != tp["total"]:
            out.append(f"throughput: outcomes {tp and tp['statuses']}, expected all applied")
        elif tp["drain"]["applied"] != tp["drain"]["acks"]:
            out.append(f"Master drain: {tp['drain']['applied']} of {tp['drain']['acks']} applied")
    pt = r.get("processes")
    if "processes" in args.only and (not pt or pt["applied"] != pt["total"]):
        out.append(f"processes: outcomes {pt and pt['statuses']}, expected all applied")
    fc = r.get("fleet")
    if "fleet" in args.only and (not fc or not fc["complete"]):
        out.append(f"fleet: runs {fc and fc['runs']}, expected every account applied")
    rc = r.get("reconcile")
    if "reconcile" in args.only:
        if not rc or rc["run_applied"] != rc["accounts"]:
            out.append(
                f"reconcile: {rc and rc['run_applied']} of {args.reconcile_accounts} applied"
            )
        elif not {"ids_of_worker", "get_each"} <= set(rc["phases"]):
            out.append(f"reconcile: Worker.reconcile's reads not seen ({sorted(rc['phases'])})")
    ig = r.get("ingest")
    if "ingest" in args.only:
        if not ig or not ig["runs"]:
            out.append(f"ingest: no engine ran ({ig and ig['skipped']})")
        for engine, why in (ig or {}).get("skipped", {}).items():
            print(f"smoke: ingest into {engine} skipped ({why})")
        for engine, run in (ig or {}).get("runs", {}).items():
            if run["stored"] != args.ingest_items:
                out.append(f"ingest: {run['stored']} of {args.ingest_items} stored in {engine}")
            elif not run["transactions"] or not run["account_keys"]:
                out.append(f"ingest ({engine}): the wrapped Archive.store or the SCAN saw nothing")
    ce = r.get("celery")
    if "celery" in args.only:
        if ce and "skipped" in ce:
            print(f"smoke: celery skipped ({ce['skipped']})")
        elif not ce or ce["missing"] or ce["rt"]["n"] != args.celery_n:
            out.append(f"celery: {ce and ce['missing']} broadcasts without a reply")
    return out


if __name__ == "__main__":
    main()
