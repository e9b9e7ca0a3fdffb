"""Every figure of a run as data, for ``benchmarks/results.json`` beside RESULTS.md.

Each figure has its value, its floor (the same work with bare redis-py, measured in the
same run; ``None`` where there is none), their ratio, and its goal from issue 11 or, for
the ingest scenario, issue 16 (``None`` where the figure is reported only). ``met`` says
whether the goal was met in this run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .infra import ratio
from .report import ENGINES, ingest_memory


def _num(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(v, 4)


def figure(
    name: str,
    unit: str,
    value: float,
    floor: float | None = None,
    goal: tuple[str, str, float] | None = None,
) -> dict[str, Any]:
    """``goal`` is (what it bounds: "ratio" or "value", "<=" or ">=", the bound)."""
    r = ratio(value, floor) if floor is not None else math.nan
    met: bool | None = None
    goal_out: dict[str, Any] | None = None
    if goal is not None:
        of, op, bound = goal
        measured = r if of == "ratio" else value
        if not math.isnan(measured):
            met = measured <= bound if op == "<=" else measured >= bound
        shown = f"{bound}×" if of == "ratio" else f"{bound} {unit}"
        goal_out = {"of": of, "op": op, "bound": bound, "text": f"{op} {shown}"}
    return {
        "name": name,
        "unit": unit,
        "value": _num(value),
        "floor": _num(floor),
        "ratio": _num(r),
        "goal": goal_out,
        "met": met,
    }


def _latency(lat: dict[str, Any]) -> list[dict[str, Any]]:
    f = lat["floor"]
    goals: dict[tuple[str, str], tuple[str, str, float]] = {
        ("pub_ack_seen", "p50"): ("ratio", "<=", 1.2),
        ("pub_ack_seen", "p99"): ("ratio", "<=", 1.4),
        ("e2e", "p50"): ("ratio", "<=", 1.5),
    }
    out = []
    for key, label in (
        ("pub_ack_seen", "PUBLISH → ACK seen by the Master"),
        ("ack_seen", "change() → ACK seen by the Master"),
        ("resolved", "change() → Master's ACK handler done"),
        ("e2e", "change() → outcome seen by the caller"),
    ):
        for q in ("p50", "p99"):
            out.append(
                figure(f"1 worker, {label}, {q}", "ms", lat[key][q], f[q], goals.get((key, q)))
            )
    return out


def _throughput(tp: dict[str, Any]) -> list[dict[str, Any]]:
    fl = tp["floor"]
    out = [
        figure(
            f"{tp['workers']} in-process workers, applied updates/s",
            "updates/s",
            tp["per_s"],
            fl["per_s"],
        )
    ]
    dr = tp.get("drain")
    if dr:
        out.append(figure("Master alone, ACKs resolved/s", "ACKs/s", dr["per_s"], fl["per_s"]))
    return out


def _processes(pt: dict[str, Any]) -> list[dict[str, Any]]:
    name = f"{pt['workers']} workers in {pt['processes']} processes, applied updates/s"
    out = [figure(name, "updates/s", pt["per_s"], pt["floor"]["per_s"], ("ratio", ">=", 1.0))]
    sp = pt.get("floor_spread")
    if sp:
        spread = f"{name}, against the floor spread over {sp['processes']} processes too"
        out.append(figure(spread, "updates/s", pt["per_s"], sp["per_s"]))
    return out


def _fleet(fc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        figure(
            f"account set --all over {fc['accounts']:,} accounts on {fc['processes']} worker "
            "processes, last ACK after",
            "ms",
            fc["last_ack_ms"],
            fc.get("floor_ms"),
            ("value", "<=", 250.0),
        )
    ]


def _reconcile(rc: dict[str, Any]) -> list[dict[str, Any]]:
    best = min(rc["reconcile_s"]) * 1000
    return [
        figure(
            f"reconcile {rc['accounts']:,} accounts (Worker.reconcile)",
            "ms",
            best,
            min(rc["floor_s"]) * 1000,
            ("ratio", "<=", 2.0),
        ),
        figure(
            "reconcile against the same 4 round trips bare",
            "ms",
            best,
            min(rc["floor_same_s"]) * 1000,
        ),
        figure("Worker.run until ready", "ms", rc["run_ready_s"] * 1000),
    ]


def _celery(ce: dict[str, Any], lat: dict[str, Any] | None) -> list[dict[str, Any]]:
    if "skipped" in ce:
        return []
    f = (lat or {}).get("floor") or {}
    return [
        figure(f"Celery broadcast(reply=True), 1 worker, {q}", "ms", ce["rt"][q], f.get(q))
        for q in ("p50", "p99")
    ]


def _ingest(ig: dict[str, Any]) -> list[dict[str, Any]]:
    out = [
        figure(
            f"{ig['items']:,} comments from a backlog into {ENGINES[engine]}, items/s",
            "items/s",
            run["per_s"],
            ig["floor"]["per_s"],
            ("value", ">=", ig["goal_per_s"]),
        )
        for engine, run in ig["runs"].items()
    ]
    mem = ingest_memory(ig)
    if mem is not None:
        before, after, streams = mem
        out += [
            figure(
                f"Redis memory per account, before: {ig['legacy_cap']:,} comments kept in "
                "Redis, and the account's keys",
                "bytes",
                before,
            ),
            figure("Redis memory per account now: every key naming the account", "bytes", after),
            figure(
                "ingest streams after the backlog, per account (acknowledged entries, kept "
                "until trimmed)",
                "bytes",
                streams,
            ),
        ]
    return out


def collect(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if r.get("latency"):
        out += _latency(r["latency"])
    if r.get("throughput"):
        out += _throughput(r["throughput"])
    if r.get("processes"):
        out += _processes(r["processes"])
    if r.get("fleet"):
        out += _fleet(r["fleet"])
    if r.get("reconcile"):
        out += _reconcile(r["reconcile"])
    if r.get("celery"):
        out += _celery(r["celery"], r.get("latency"))
    if r.get("ingest"):
        out += _ingest(r["ingest"])
    return out


def write_json(path: Path, *, title: str, command: str, env: str, r: dict[str, Any]) -> None:
    """Replace the delivery run's entry (keyed by the RESULTS.md section title) in ``path``."""
    write_figures(path, title=title, command=command, env=env, figures=collect(r))


def write_figures(
    path: Path, *, title: str, command: str, env: str, figures: list[dict[str, Any]]
) -> None:
    """Replace one benchmark run's entry (keyed by its RESULTS.md section title) in
    ``path``: each figure as :func:`figure` made it."""
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
    data[title.removeprefix("## ")] = {
        "command": command,
        "env": env,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": figures,
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
