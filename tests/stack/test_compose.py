"""The compose stack, built and run for real with podman (``make stack-test``).

It builds a Debian base image from this machine's apt sources (mmdebstrap; kept between
runs while the recipe is unchanged), the hiscrm, Redis and PostgreSQL images from it, and
plays the seed's scenario through compose.yaml with podman-compose, every hiscrm command
against the stack running in the ``cli`` service's container (the sandbox site is driven
from this venv through its loopback port, as a phone or a fan would):

PostgreSQL up, its database and role made on the first start → add a sandbox account →
``hiscrm login`` through the worker's Chromium in its container, scanned with ``hiscrm
sandbox scan`` → platform_user_id applied without a restart → a posted comment crawled
once, kept in PostgreSQL (``hiscrm data`` and psql agree) and in no Redis key of the
account → a second worker added (``deploy/stack.py add-worker``) → the first worker's
container killed: the account fails over and stays logged in (its session is sealed in
Redis) → Redis stopped first, then everything: each container exits by itself within its
grace period → ``down`` and ``up`` (all but the sandbox site, which stands for the
platform and keeps its logins in memory): accounts, versions, the session and the
crawled comments survive on the volumes → ``down -v``, and nothing is left: no container,
network, volume or process of the project, also when a step failed.

Podman's configuration (runc, ulimits within the hard limits, storage, networks) lives
in files of its own under the cache directory (HISCRM_STACK_CACHE, default
~/.cache/hiscrm/stack): nothing global changes. Each phase is printed with its time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytestmark = [pytest.mark.stack]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
PROJECT = "hiscrm-stacktest"
BASE_IMAGE = "localhost/debian:bookworm-base"
APP_IMAGE = "localhost/hiscrm:stack-test"
REDIS_IMAGE = "localhost/hiscrm-redis:stack-test"
POSTGRES_IMAGE = "localhost/hiscrm-postgres:stack-test"
# what makes the base image: a change here (or in the apt sources) builds a new one
MMDEBSTRAP = ["--variant=minbase", "--include=ca-certificates", "bookworm"]
USER = "1864722759"
NOISE = ("systemd", "syslog", "podman_compose:Ignored")  # podman without systemd says so


def _cache_dir() -> Path:
    given = os.environ.get("HISCRM_STACK_CACHE")
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "hiscrm" / "stack"


class Clock:
    """Prints each phase with its duration and the time since the start."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        print(f"[stack +{began - self.start:6.1f}s] {name} …", flush=True)
        try:
            yield
        finally:
            took = time.monotonic() - began
            self.phases.append((name, took))
            print(f"[stack +{time.monotonic() - self.start:6.1f}s] {name}: {took:.1f}s", flush=True)

    def note(self, text: str) -> None:
        print(f"[stack +{time.monotonic() - self.start:6.1f}s]   {text}", flush=True)


def _quiet(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not any(n in line for n in NOISE))


def poll(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


class Podman:
    """podman and podman-compose with this test's own configuration and project."""

    def __init__(self, cache: Path, work: Path) -> None:
        self.cache = cache
        self.work = work
        self.env = dict(os.environ)
        self.env.update(self._config())
        self.override = work / "compose.workers.yaml"
        self.compose_bin = str(Path(sys.executable).parent / "podman-compose")

    def _config(self) -> dict[str, str]:
        c = self.cache
        for d in ("storage", "run", "tmp", "networks"):
            (c / d).mkdir(parents=True, exist_ok=True)
        (c / "containers.conf").write_text(
            "[containers]\n"
            "# the defaults exceed the hard limits of machines like ours\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            '# crun fails on mixed cgroups v1/v2: "cgroups in hybrid mode not supported"\n'
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{c / "tmp"}"\n'
            "[network]\n"
            f'network_config_dir = "{c / "networks"}"\n'
        )
        (c / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{c / "storage"}"\n'
            f'runroot = "{c / "run"}"\n'
        )
        return {
            "CONTAINERS_CONF": str(c / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(c / "storage.conf"),
        }

    def run(
        self, *args: str, check: bool = True, timeout: float = 600, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            args,
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            **kw,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args[:6])} … exit {result.returncode}\n"
                f"{_quiet(result.stdout)[-3000:]}\n{_quiet(result.stderr)[-3000:]}"
            )
        return result

    def podman(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("podman", *args, **kw)

    def compose_args(self) -> list[str]:
        args = [self.compose_bin, "--env-file", "/dev/null", "-p", PROJECT]
        args += ["-f", str(ROOT / "compose.yaml")]
        if self.override.exists():
            args += ["-f", str(self.override)]
        return args

    def compose(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(*self.compose_args(), *args, **kw)

    def cli_args(self, *args: str) -> list[str]:
        run = ["--profile", "tools", "run", "--rm", "--no-deps", "-T", "cli"]
        return [*self.compose_args(), *run, *args]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(*self.cli_args(*args), check=check, timeout=120)

    def name(self, service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def healthy(self, service: str) -> bool:
        # no systemd here to run healthchecks on their interval: run them ourselves
        return self.podman("healthcheck", "run", self.name(service), check=False).returncode == 0

    def wait_healthy(self, *services: str, timeout: float = 60) -> None:
        for service in services:
            poll(lambda s=service: self.healthy(s), timeout, f"{service} healthy")

    def inspect(self, service: str, fmt: str) -> str:
        return self.podman("inspect", "--format", fmt, self.name(service)).stdout.strip()

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=io.podman.compose.project={PROJECT}"
        ps = self.podman("ps", "-a", "--filter", label, "--format", "{{.Names}}", check=False)
        nets = self.podman("network", "ls", "--format", "{{.Name}}", check=False)
        vols = self.podman("volume", "ls", "--format", "{{.Name}}", check=False)
        procs = subprocess.run(
            ["pgrep", "-af", f"{PROJECT}|{self.cache}"], capture_output=True, text=True, check=False
        )
        return {
            "containers": ps.stdout.split(),
            "networks": [n for n in nets.stdout.split() if n.startswith(PROJECT)],
            "volumes": [v for v in vols.stdout.split() if v.startswith(PROJECT)],
            "processes": [
                p for p in procs.stdout.splitlines() if "pgrep" not in p and "pytest" not in p
            ],
        }

    def clean(self) -> None:
        """Everything of the project gone, whatever state a failure left it in."""
        self.compose("--profile", "sandbox", "down", "-v", "-t", "5", check=False, timeout=120)
        left = self.leftovers()
        if left["containers"]:
            self.podman("rm", "-f", "-t", "0", *left["containers"], check=False)
        if left["networks"]:
            self.podman("network", "rm", "-f", *left["networks"], check=False)
        if left["volumes"]:
            self.podman("volume", "rm", "-f", *left["volumes"], check=False)


def _apt_sources() -> list[str]:
    """This machine's Debian sources (third-party ones need keyrings the base lacks)."""
    found = [Path("/etc/apt/sources.list")]
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    return [
        str(p)
        for p in found
        if p.is_file() and any("debian" in line for line in p.read_text().splitlines())
    ]


def _pip_settings() -> tuple[str | None, str | None]:
    """(CA bundle, index URL) pip uses on this machine, for pip inside the build."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    conf: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        conf[key.split(".", 1)[-1]] = value.strip("'\"")
    ca = os.environ.get("PIP_CERT") or conf.get("cert")
    if not ca and Path("/etc/ssl/certs/ca-certificates.crt").exists():
        ca = "/etc/ssl/certs/ca-certificates.crt"
    index = os.environ.get("PIP_INDEX_URL") or conf.get("index-url")
    if index and not index.startswith(("http://", "https://")):
        index = None
    return ca, index


def build_base(pm: Podman, clock: Clock) -> None:
    sources = _apt_sources()
    assert sources, "no Debian apt sources on this machine"
    recipe = hashlib.sha256(
        json.dumps([MMDEBSTRAP, [Path(s).read_text() for s in sources]]).encode()
    ).hexdigest()[:16]
    label = pm.podman(
        "image",
        "inspect",
        "--format",
        '{{index .Config.Labels "org.hiscrm.recipe"}}',
        BASE_IMAGE,
        check=False,
    ).stdout.strip()
    if label == recipe:
        clock.note(f"base image {BASE_IMAGE} cached (recipe {recipe})")
        return
    tar = pm.cache / "base.tar"
    pm.run("mmdebstrap", "--quiet", *MMDEBSTRAP, str(tar), *sources)
    pm.podman("import", "-q", "--change", f"LABEL=org.hiscrm.recipe={recipe}", str(tar), BASE_IMAGE)
    tar.unlink()
    clock.note(f"base image {BASE_IMAGE} made from {', '.join(sources)}")


def build_images(pm: Podman, clock: Clock) -> None:
    ca, index = _pip_settings()
    args = ["build", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    app = [*args, "-t", APP_IMAGE]
    if ca:
        app += ["--secret", f"id=pip_ca,src={ca}"]
    if index:
        app += ["--build-arg", f"PIP_INDEX_URL={index}"]
    with clock.phase("build the Redis image"):
        pm.podman(*args, "-t", REDIS_IMAGE, str(ROOT / "deploy" / "redis"), timeout=900)
    with clock.phase("build the PostgreSQL image"):
        pm.podman(*args, "-t", POSTGRES_IMAGE, str(ROOT / "deploy" / "postgres"), timeout=900)
    with clock.phase("build the hiscrm image (Chromium, the project in a venv)"):
        pm.podman(*app, str(ROOT), timeout=900)
    pm.podman("image", "prune", "-f", check=False)
    for image in (BASE_IMAGE, REDIS_IMAGE, POSTGRES_IMAGE, APP_IMAGE):
        size = int(pm.podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
        clock.note(f"{image}: {size / 1e6:.0f} MB")


class Login:
    """``hiscrm login`` running in a cli container, its output read as it comes."""

    def __init__(self, pm: Podman, account: str) -> None:
        self.proc = subprocess.Popen(
            [*pm.cli_args("login", account, "--timeout", "90")],
            env=pm.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def output(self) -> str:
        return "\n".join(line for line in self.lines if not any(n in line for n in NOISE))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def account(pm: Podman, account_id: str) -> dict[str, Any]:
    return json.loads(pm.cli("account", "show", account_id, "--json").stdout)  # type: ignore[no-any-return]


def crawled(pm: Podman, account_id: str) -> list[str]:
    doc = json.loads(pm.cli("data", account_id, "--json", "--limit", "100").stdout)
    return [item["text"] for item in doc["items"]]


def psql(pm: Podman, sql: str) -> str:
    """One query in the postgres container, as its superuser through the socket (peer:
    the only way in without the role hiscrm's password)."""
    args = ["psql", "--no-psqlrc", "--tuples-only", "--no-align", "--set=ON_ERROR_STOP=1"]
    args += ["--username=postgres", "--dbname=hiscrm", "--command", sql]
    return pm.podman("exec", pm.name("postgres"), *args).stdout.strip()


def redis_keys(pm: Podman, pattern: str) -> set[str]:
    """The keys matching ``pattern`` (SCAN, as the default user inside the container)."""
    scan = f'redis-cli --no-auth-warning --scan --pattern "{pattern}"'
    script = f'REDISCLI_AUTH="$(cat /run/secrets/redis-default)" {scan}'
    return set(pm.podman("exec", pm.name("redis"), "sh", "-c", script).stdout.split())


def sandbox(site: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "sandbox", *args, "--url", site],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_generated_workers_match_compose_yaml() -> None:
    """deploy/stack.py writes a worker service as compose.yaml writes worker-w1."""
    yaml = pytest.importorskip("yaml")
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        import stack  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert stack.worker_service("w1") == services["worker-w1"]


@pytest.mark.timeout(900)
def test_the_stack_plays_the_seed_scenario(tmp_path: Path) -> None:
    for program in ("podman", "mmdebstrap"):
        assert shutil.which(program), f"{program} is missing: run make stack-test"
    clock = Clock()
    pm = Podman(_cache_dir(), tmp_path)
    secrets = tmp_path / "secrets"
    metrics_port, sandbox_port, web_port = _free_port(), _free_port(), _free_port()
    site = f"http://127.0.0.1:{sandbox_port}"
    pm.env.update(
        HISCRM_IMAGE=APP_IMAGE,
        HISCRM_REDIS_IMAGE=REDIS_IMAGE,
        HISCRM_POSTGRES_IMAGE=POSTGRES_IMAGE,
        HISCRM_SECRETS_DIR=str(secrets),
        HISCRM_METRICS_PORT=str(metrics_port),
        HISCRM_SANDBOX_PORT=str(sandbox_port),
        HISCRM_WEB_PORT=str(web_port),
        HISCRM_HEARTBEAT_INTERVAL_S="1",
        HISCRM_HEARTBEAT_TTL_S="4",
    )
    login: Login | None = None
    pm.clean()  # what an interrupted earlier run may have left
    try:
        with clock.phase("base image (mmdebstrap from this machine's apt sources)"):
            build_base(pm, clock)
        build_images(pm, clock)
        with clock.phase("secrets: deploy/stack.py init"):
            pm.run(
                sys.executable, "deploy/stack.py", "init", "--secrets-dir", str(secrets), "--no-env"
            )
            assert oct(secrets.stat().st_mode & 0o777) == "0o700"
            database_password = (secrets / "database.password").read_text().strip()
            assert len(database_password) >= 32

        with clock.phase("up: PostgreSQL, its database and role made on the first start"):
            pm.compose("up", "-d", "postgres")
            pm.wait_healthy("postgres")
            assert pm.inspect("postgres", "{{.Config.User}}") == "postgres"
            assert pm.podman("port", pm.name("postgres")).stdout.strip() == ""
            owner = psql(
                pm, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'hiscrm'"
            )
            assert owner == "hiscrm", owner
            assert psql(pm, "SELECT rolsuper FROM pg_roles WHERE rolname = 'hiscrm'") == "f"
            # over the network only the role hiscrm gets in, and only with its password
            refused = pm.podman(
                "exec",
                pm.name("postgres"),
                "psql",
                "--host=127.0.0.1",
                "--username=postgres",
                "--dbname=hiscrm",
                "--command=SELECT 1",
                check=False,
            )
            assert "no pg_hba.conf entry" in refused.stderr, refused

        with clock.phase("up: Redis, healthy only with its password"):
            pm.compose("up", "-d", "redis")
            pm.wait_healthy("redis")
            anonymous = pm.podman("exec", pm.name("redis"), "redis-cli", "ping", check=False)
            assert "NOAUTH" in anonymous.stdout + anonymous.stderr, anonymous
        with clock.phase("up: Master, worker w1, web console, sandbox site"):
            pm.compose("--profile", "sandbox", "up", "-d")
            pm.wait_healthy("master", "worker-w1", "web")
            poll(lambda: _get(site), 30, "the sandbox site")
            # the console answers on the host's loopback (its sign-in page: no user yet)
            signin = _get(f"http://127.0.0.1:{web_port}/signin")
            assert '<form method="post" action="/signin"' in signin, signin
            assert f"127.0.0.1:{web_port}" in pm.podman("port", pm.name("web")).stdout
            for service in ("master", "worker-w1", "sandbox", "web"):
                assert pm.inspect(service, "{{.Config.User}}") == "hiscrm"
            assert pm.podman("exec", pm.name("worker-w1"), "id", "-u").stdout.strip() == "10001"
            ports = pm.podman("port", pm.name("master")).stdout
            assert f"127.0.0.1:{metrics_port}" in ports, ports
            assert "hiscrm_" in _get(f"http://127.0.0.1:{metrics_port}/metrics")
            w1_started = pm.inspect("worker-w1", "{{.State.StartedAt}}")

        with clock.phase("account added, placed on w1 by the Master"):
            pm.cli("account", "add", "acc-1", "--platform", "sandbox", "--interval", "2")
            poll(lambda: account(pm, "acc-1")["config"]["worker_id"] == "w1", 30, "acc-1 on w1")

        with clock.phase("QR login through w1's Chromium, scanned with hiscrm sandbox scan"):
            login = Login(pm, "acc-1")
            poll(lambda: login.saw("QR code") or login.proc.poll() is not None, 90, "a QR code")
            assert login.saw("QR code"), login.output()
            sandbox(site, "scan", "--user-id", USER, "--nickname", "fan")
            assert login.proc.wait(timeout=90) == 0, login.output()
            login.reader.join(5)
            out = login.output()
            assert f"logged in: platform_user_id {USER}" in out, out
            assert "config update applied" in out and "by worker w1" in out, out
            clock.note(next(line for line in login.lines if "config update applied" in line))
        with clock.phase("platform_user_id applied without a restart, task running"):
            doc = poll(
                lambda: (
                    (d := account(pm, "acc-1"))["task"] and d["task"]["state"] == "running" and d
                ),
                30,
                "the task running",
            )
            assert doc["config"]["platform_user_id"] == USER
            assert doc["task"]["applied_version"] == doc["config"]["config_version"]
            assert pm.inspect("worker-w1", "{{.State.StartedAt}}") == w1_started
            assert pm.inspect("worker-w1", "{{.RestartCount}}") == "0"
            version = doc["config"]["config_version"]

        with clock.phase("a posted comment crawled, once"):
            sandbox(site, "post-comment", "hello from compose", "--user-id", USER)
            poll(lambda: "hello from compose" in crawled(pm, "acc-1"), 60, "the comment crawled")
            time.sleep(4)  # two more crawls
            assert crawled(pm, "acc-1").count("hello from compose") == 1

        with clock.phase("the crawled comments in PostgreSQL, none in Redis"):
            doc = json.loads(pm.cli("data", "acc-1", "--json", "--limit", "100").stdout)
            texts = [item["text"] for item in doc["items"]]
            assert "hello from compose" in texts and doc["comments"] >= 1, doc
            rows = psql(pm, "SELECT count(*) FROM comments WHERE account_id = 'acc-1'")
            assert int(rows) == doc["comments"], (rows, doc["comments"])
            found = psql(pm, "SELECT count(*) FROM comments WHERE text = 'hello from compose'")
            assert found == "1", found
            # the account's keys in Redis: its config hash, its sealed session and its
            # pending updates, never crawled items (legacy :comments, :dms, :crawl)
            keys = redis_keys(pm, "hiscrm:account:acc-1:*")
            items = keys - {"hiscrm:account:acc-1:session", "hiscrm:account:acc-1:pending"}
            assert not items, keys
            assert "hiscrm:account:acc-1:session" in keys, keys
            # hiscrm diagnose reaches the database too, and counts the same
            diag = json.loads(pm.cli("diagnose", "acc-1", "--json", check=False).stdout)
            assert not [p for p in diag["problems"] if p["code"].startswith("database")], diag
            assert diag["accounts"][0]["comments"] == doc["comments"], diag
            # the password is in no container's environment or log, only in the secret
            for service in ("postgres", "master"):
                env = pm.inspect(service, "{{json .Config.Env}}")
                logs = pm.podman("logs", pm.name(service))
                assert database_password not in env + logs.stdout + logs.stderr, service

        with clock.phase("worker w2 added: deploy/stack.py add-worker 2"):
            compose_cmd = " ".join(pm.compose_args()).replace(
                f"-f {ROOT / 'compose.yaml'}",
                f"-f {ROOT / 'compose.yaml'} -f {pm.override}",
            )
            pm.run(
                sys.executable,
                "deploy/stack.py",
                "add-worker",
                "2",
                "--secrets-dir",
                str(secrets),
                "--override",
                str(pm.override),
                "--compose",
                compose_cmd,
            )
            pm.wait_healthy("worker-w2")

        with clock.phase("w1's container killed: acc-1 fails over to w2, still logged in"):
            pm.podman("kill", pm.name("worker-w1"))
            poll(lambda: account(pm, "acc-1")["config"]["worker_id"] == "w2", 60, "acc-1 on w2")
            sandbox(site, "post-comment", "after failover", "--user-id", USER)
            poll(lambda: "after failover" in crawled(pm, "acc-1"), 60, "a comment crawled on w2")
            doc = account(pm, "acc-1")
            assert doc["config"]["login_status"] == "logged_in", doc
            assert doc["task"]["state"] == "running", doc

        # the sandbox site stands for the platform: it keeps its logins (in memory) while
        # the hiscrm stack goes down and up, as the real platform keeps them on its servers
        hiscrm_services = ["redis", "postgres", "master", "worker-w1", "worker-w2", "web"]
        with clock.phase("stop: Redis first, then every other container by itself"):
            stops: dict[str, float] = {}
            services = ["redis", "postgres", "master", "worker-w2"]
            for service in services:
                began = time.monotonic()
                pm.podman("stop", "-t", "30", pm.name(service))
                stops[service] = time.monotonic() - began
            clock.note(", ".join(f"{s} {t:.1f}s" for s, t in stops.items()))
            for service in services:
                code = pm.inspect(service, "{{.State.ExitCode}}")
                assert code in ("0", "143"), f"{service} exited {code} (137: killed)"
            # a worker whose Redis is gone exits at once, not after its grace period
            assert stops["worker-w2"] < 10, stops

        with clock.phase("down (all but the sandbox site)"):
            pm.compose("down", "-t", "30", *hiscrm_services)
            left = pm.leftovers()["containers"]
            assert left == [pm.name("sandbox")], left

        with clock.phase("up again: accounts, versions, the session and the comments survived"):
            pm.compose("up", "-d", "redis", "postgres")
            pm.wait_healthy("redis", "postgres")
            pm.compose("--profile", "sandbox", "up", "-d")
            pm.wait_healthy("master", "worker-w1", "worker-w2")
            doc = poll(
                lambda: (
                    (d := account(pm, "acc-1"))["task"] and d["task"]["state"] == "running" and d
                ),
                60,
                "acc-1 running after the restart",
            )
            assert doc["config"]["platform_user_id"] == USER
            assert doc["config"]["config_version"] >= version
            assert "hello from compose" in crawled(pm, "acc-1")
            sandbox(site, "post-comment", "after restart", "--user-id", USER)
            poll(lambda: "after restart" in crawled(pm, "acc-1"), 60, "a comment after restart")
            assert account(pm, "acc-1")["config"]["login_status"] == "logged_in"
    except BaseException:
        for name in pm.leftovers()["containers"]:
            logs = pm.podman("logs", "--tail", "25", name, check=False)
            print(f"--- {name}\n{_quiet(logs.stdout + logs.stderr)}", flush=True)
        raise
    finally:
        if login is not None:
            login.stop()
        with clock.phase("down -v: nothing left behind"):
            pm.clean()
            left = poll(
                lambda: None if any((lo := pm.leftovers()).values()) else lo,
                30,
                "every container, network, volume and process of the project gone",
                every=1,
            )
            assert left is not None
        total = time.monotonic() - clock.start
        print(f"[stack] total {total:.1f}s", flush=True)


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode("utf-8", "replace")  # type: ignore[no-any-return]
    except OSError:
        return ""
