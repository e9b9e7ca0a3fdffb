"""4. celery — ``app.control.broadcast("ping", reply=True)`` to one Celery worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .infra import CELERY_VENV, ROOT, dist

# ----------------------------------------------------------------------------- 4. celery

CELERY_APP = """
import os
from celery import Celery

app = Celery("hiscrm_bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
"""

CELERY_CLIENT = """
import json, os, sys, time
from celery_app import app

node = os.environ["BENCH_NODE"]
n, warmup = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 60
while not app.control.ping(destination=[node], timeout=0.5):
    if time.monotonic() > deadline:
        sys.exit("celery worker never answered")
samples, missing = [], 0
for i in range(warmup + n):
    t0 = time.perf_counter()
    replies = app.control.broadcast("ping", reply=True, destination=[node], limit=1, timeout=5)
    dt = time.perf_counter() - t0
    if not replies:
        missing += 1
    elif i >= warmup:
        samples.append(dt)
print(json.dumps({"samples": samples, "missing": missing}))
"""


def celery_python(install: bool) -> tuple[str | None, str]:
    """An interpreter that can import celery (ours, or var/bench/celery-venv)."""
    probe = [sys.executable, "-c", "import celery"]
    if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return sys.executable, "the project venv"
    py = CELERY_VENV / "bin" / "python"
    if not py.exists() and install:
        print("  creating var/bench/celery-venv (pip install 'celery[redis]') …", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(CELERY_VENV)], check=True)
            subprocess.run(
                [
                    str(py),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "celery[redis]",
                ],
                check=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"could not install celery: {exc}"
    if not py.exists():
        return None, "celery is not installed (run without --no-celery-install)"
    return str(py), str(CELERY_VENV.relative_to(ROOT))


def bench_celery(url: str, n: int, warmup: int, workdir: Path, install: bool) -> dict[str, Any]:
    py, where = celery_python(install)
    if py is None:
        return {"skipped": where}
    version = subprocess.run(
        [py, "-c", "import celery, kombu; print(celery.__version__, kombu.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    appdir = workdir / "celery"
    appdir.mkdir(exist_ok=True)
    (appdir / "celery_app.py").write_text(CELERY_APP)
    (appdir / "client.py").write_text(CELERY_CLIENT)
    node = "hiscrmbench@bench"
    broker = url.rsplit("/", 1)[0] + "/1"  # same redis-server, its own database
    env = dict(os.environ, BENCH_BROKER=broker, BENCH_NODE=node, PYTHONPATH=str(appdir))
    env.pop("PYTHONSTARTUP", None)
    worker_cmd = [py, "-m", "celery", "-A", "celery_app", "worker", "--pool", "solo", "-n", node]
    worker_cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
    with (appdir / "worker.log").open("ab") as log:
        proc = subprocess.Popen(worker_cmd, cwd=appdir, env=env, stdout=log, stderr=log)
    try:
        client = subprocess.run(
            [py, "client.py", str(n), str(warmup)],
            cwd=appdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(120, n * 0.5),
            check=False,
        )
        if client.returncode != 0:
            tail = (client.stderr or client.stdout).strip().splitlines()[-3:]
            return {"skipped": "celery client failed: " + " | ".join(tail)}
        data = json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "celery": version[0],
        "kombu": version[1],
        "where": where,
        "missing": data["missing"],
        "rt": dist(data["samples"]),
    }
