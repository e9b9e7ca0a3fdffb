"""Delivery performance against DESIGN.md §7, side by side with the raw Redis floor.

A benchmark, not a test: it prints what it measured and never fails on the numbers.
Everything runs against a private redis-server on a free loopback port, in one anyio
event loop (asyncio backend), with the hiscrm services in-process:

1. latency — publish → applied → ACK seen by the Master, one worker, p50 / p99; the
   floor is the same round trip with bare redis-py (HSET+PUBLISH → HGETALL → XADD →
   XREAD). The two are interleaved, one round trip each in turn.
2. throughput — updates across many workers (default 100), applied outcomes per second;
   the floor is 100 bare subscribers doing HGETALL+XADD, a pipelining producer and a
   stream reader.
3. reconcile — a worker taking over 10,000 accounts on start; the floor is one
   pipelined HGETALL of every hash.
4. celery — ``app.control.broadcast("ping", reply=True)`` to one Celery worker on the
   same redis-server (Celery lives in its own venv under var/bench, made on demand, so
   the project's venv is left alone).
5. ingest (issue 16) — crawled comments from a backlog in the workers' ingest streams
   into the database, items/s per engine (SQLite, a file in the run's directory;
   PostgreSQL, Debian's, started for the run with tests/postgres_server.py); the floor
   is bare XREADGROUP + XACK of the same entries. And Redis memory per account: the
   old layout (1,000 comments kept in Redis) against every key of an account now.

    .venv/bin/python -m benchmarks.delivery             # the default, short run
    .venv/bin/python -m benchmarks.delivery --latency-n 5000 --updates 20000 \\
        --reconcile-reps 5 --celery-n 1000                  # a longer one
    .venv/bin/python -m benchmarks.delivery --only latency --no-results
    .venv/bin/python -m benchmarks.delivery --hiredis       # redis-py's C reply parser
    .venv/bin/python -m benchmarks.delivery --only ingest   # issue 16's section alone
    .venv/bin/python -m benchmarks.delivery --smoke         # every scenario, tiny (make test)

The numbers go to stdout as a table and (unless --no-results) into the section
"## Delivery (DESIGN.md §7)" of benchmarks/RESULTS.md (", with hiredis" for --hiredis),
replacing an earlier one; the ingest scenario into its own section, "## Crawled data:
ingest and Redis memory (issue 16)". A section (and its entry in results.json) is
rewritten only by a run that had one of its scenarios, and then with that run's figures
alone. The hiscrm side is instrumented without changing it: the Master's ACK batch
handler, ``Updates.notify`` and (ingest) ``Master.on_batches`` / ``Archive.store`` are
wrapped on their instances.

``--smoke`` runs every scenario at tiny sizes in a few seconds, so a change to the
library that breaks the benchmark fails ``make test``: it checks that each scenario ran
to completion (every update applied, every account reconciled), never the numbers, and
writes nothing to RESULTS.md. Celery is compared only if already installed.
"""
