"""``hiscrm up [--demo]``: the whole stack on one machine — an embedded redis-server,
the sandbox site, a Master, one worker and the web console — stopped cleanly, all of
it, on Ctrl-C.

The embedded Redis listens on loopback only and has a password generated for the run,
kept in ``<data-dir>/redis-password`` (0600); the children read it through
HISCRM_REDIS_PASSWORD_FILE and redis-server from its config file, so it is never on a
command line. Everything under the data directory is private to this user.

``<data-dir>/env`` (0600) holds what another shell needs to use the stack (``source`` it):
the Redis URL, the password *file* (never the password: it changes on every start, and
the file keeps it out of every environment), the sandbox site and the settings the
stack runs with. A new run keeps the previous run's ports when they are free, so a
shell that sourced the file once keeps working across restarts.

The console (``hiscrm web``) listens on loopback only; its first user, ``admin``, gets a
generated password in ``<data-dir>/web-admin-password`` (0600), kept across runs (the
user is set to it again on every start, so a reset Redis keeps the same sign-in)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Annotated

import redis
import typer
from redis.cluster import RedisCluster

from hiscrm_bus.settings import BusSettings, masked_url
from hiscrm_worker.settings import private_dir, write_private

from . import localcluster
from .common import EXIT_FAILED, EXIT_OK, console, fail, run
from .localcluster import HOST
from .terminal import safe

# credentials for some other Redis, which must not reach the stack's own processes
_OTHER_REDIS_SETTINGS = (
    "HISCRM_REDIS_PASSWORD",
    "HISCRM_REDIS_CA_FILE",
    "HISCRM_REDIS_CERT_FILE",
    "HISCRM_REDIS_KEY_FILE",
)
# settings of one process, not of the stack: another shell's commands must not inherit
# them (a second worker would share w1's session directory, a second Master its port;
# the session key is for workers only)
_PER_PROCESS_SETTINGS = (
    "HISCRM_DATA_DIR",
    "HISCRM_SESSION_KEY_FILE",
    "HISCRM_WORKER_ID",
    "HISCRM_MASTER_ID",
    "HISCRM_METRICS_PORT",
    "HISCRM_METRICS_HOST",
    "HISCRM_LOG_LEVEL",
    "HISCRM_LOG_FORMAT",
)
ENV_FILE = "env"
WEB_USER = "admin"


def free_port(wanted: object = None) -> int:
    """``wanted`` when nothing listens on it (on loopback), else any free port."""
    if isinstance(wanted, int) and 0 < wanted < 65536:
        with socket.socket() as s:
            # as the servers do: a port held only by closed connections is free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", wanted))
            except OSError:
                pass
            else:
                return wanted
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shown_path(path: Path) -> str:
    """``path`` as typed in a shell here: relative to the working directory when under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class LocalStack:
    """Child processes, each in its own session so a stop takes its whole tree (the
    worker's Chromium included) and a terminal's Ctrl-C reaches only ``hiscrm up``."""

    def __init__(self, data_dir: Path, log_level: str, *, cluster: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.log_level = log_level
        self.cluster = cluster
        self.logs = self.data_dir / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports_file = self.data_dir / "ports.json"
        previous = self._previous_ports()
        self.redis_port = free_port(previous.get("redis"))
        self.site_port = free_port(previous.get("sandbox"))
        while self.site_port == self.redis_port:  # both free, neither bound yet
            self.site_port = free_port()
        self.web_port = free_port(previous.get("web"))
        while self.web_port in (self.redis_port, self.site_port):
            self.web_port = free_port()
        self.env_file = self.data_dir / ENV_FILE
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.cluster_ports: list[int] = []
        if cluster:  # 3 primaries + 3 replicas instead of the one redis-server
            wanted = previous.get("cluster")
            earlier = [p for p in wanted if isinstance(p, int)] if isinstance(wanted, list) else []
            ports = localcluster.cluster_ports(earlier, taken=[self.site_port, self.web_port])
            self.cluster_ports = ports
            self.redis_port = ports[0]
            self.redis_url = localcluster.cluster_url(ports)
        self.password_file = self.data_dir / "redis-password"
        self.redis_conf = self.data_dir / "redis.conf"
        self.site_url = f"http://127.0.0.1:{self.site_port}"
        self.web_url = f"http://127.0.0.1:{self.web_port}/"
        self.web_password_file = self.data_dir / "web-admin-password"
        self.password = ""

    def _previous_ports(self) -> dict[str, object]:
        try:
            doc = json.loads(self.ports_file.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            HISCRM_REDIS_URL=self.redis_url,
            HISCRM_SANDBOX_URL=self.site_url,
            HISCRM_DATA_DIR=str(self.data_dir / "worker"),
            HISCRM_HEARTBEAT_INTERVAL_S=os.environ.get("HISCRM_HEARTBEAT_INTERVAL_S", "1"),
            HISCRM_DATABASE_URL=self.database_url,
        )

    @property
    def database_url(self) -> str:
        """Where the Master keeps crawled data: the operator's database, else an SQLite
        file in the data directory (nothing to install)."""
        given = os.environ.get("HISCRM_DATABASE_URL")
        return given or f"sqlite+aiosqlite:///{self.data_dir / 'hiscrm.db'}"

    def _spawn(self, name: str, args: list[str], **extra: str) -> None:
        private_dir(self.logs)
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                args,
                env={**self.env(), **extra},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                umask=0o077,  # Redis' data files, sessions, logs: this user's only
            )
        (self.data_dir / "pids.json").write_text(
            json.dumps({n: p.pid for n, p in self.procs.items()})
        )

    def session_key(self) -> Path:
        """The workers' session key, made on the first run and kept after it."""
        from hiscrm_worker.vault import write_key_file

        path = self.data_dir / "session.key"
        if not path.exists():
            write_key_file(path)
        return path

    def _hiscrm(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hiscrm_cli", "--log-level", self.log_level, *args]

    def reset(self) -> None:
        """Forget earlier runs: Redis data and the worker's saved sessions."""
        for part in ("redis", "worker"):
            shutil.rmtree(self.data_dir / part, ignore_errors=True)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            fail(
                "redis-server was not found: install it (Debian: `apt-get install "
                "redis-server`) or run `make demo`, which does"
            )
        self._write_credentials()
        if self.cluster:
            self._start_cluster(binary)
        else:
            with console.status("starting redis-server…"):
                self._spawn("redis", [binary, str(self.redis_conf)])
                self._wait_ready("redis", self._redis_ready)
        what = "redis cluster " if self.cluster else "redis-server   "
        console.print(
            f"{what}{safe(masked_url(self.redis_url))}  (loopback only; password: "
            f"cat {safe(shown_path(self.password_file))}; "
            f"data in {safe(shown_path(self.data_dir / 'redis'))})"
        )
        with console.status("starting the sandbox site, the Master and a worker…"):
            self._spawn("sandbox", self._hiscrm("sandbox", "serve", "--port", str(self.site_port)))
            self._spawn("master", self._hiscrm("master", "--id", "master-1"))
            # the worker alone holds the key its sessions are sealed with in Redis
            self._spawn(
                "worker",
                self._hiscrm("worker", "--id", "w1"),
                HISCRM_SESSION_KEY_FILE=str(self.session_key()),
            )
            self._spawn(
                "web", self._hiscrm("web", "--host", "127.0.0.1", "--port", str(self.web_port))
            )
            self._add_web_user()
            self._wait_ready("worker", self._worker_ready)
            self._wait_ready("web", self._web_ready)
        console.print(f"sandbox site   {safe(self.site_url)}")
        console.print(f"master, worker w1 (logs in {safe(shown_path(self.logs))})")
        console.print(
            f"web console    {safe(self.web_url)}  (loopback only; user {WEB_USER}, password: "
            f"cat {safe(shown_path(self.web_password_file))})"
        )
        self._write_env_file()

    def _start_cluster(self, binary: str) -> None:
        """Six nodes, joined into 3 primaries with a replica each unless an earlier run
        of this data directory joined them already (their nodes.conf remembers)."""
        cli = shutil.which("redis-cli")
        if cli is None:
            fail("redis-cli was not found: install it (Debian: `apt-get install redis-tools`)")
        with console.status("starting a Redis Cluster (3 primaries, 3 replicas)…"):
            for n, port in enumerate(self.cluster_ports, 1):
                node_dir = private_dir(self.data_dir / "redis" / str(port))
                conf = node_dir / "redis.conf"
                write_private(
                    conf, localcluster.node_config(port, node_dir, password=self.password)
                )
                self._spawn(f"redis-{n}", [binary, str(conf)])
            for port in self.cluster_ports:
                self._wait_ready("redis", lambda p=port: self._node_info(p) is not None)
            if any(self._node_info(p) != "ok" for p in self.cluster_ports):
                joined = subprocess.run(
                    localcluster.create_args(cli, self.cluster_ports),
                    env={**os.environ, "REDISCLI_AUTH": self.password},
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                if joined.returncode != 0:
                    fail(f"redis-cli --cluster create failed: {safe(joined.stdout[-500:])}")
            self._wait_ready("redis", self._redis_ready)

    def _node_info(self, port: int) -> str | None:
        """The node's ``cluster_state`` (None while it does not answer)."""
        try:
            with redis.Redis(port=port, password=self.password, socket_connect_timeout=0.2) as r:
                info = r.execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return None
        text_ = info.decode() if isinstance(info, bytes) else str(info)
        fields = dict(line.split(":", 1) for line in text_.split() if ":" in line)
        return fields.get("cluster_state", "")

    def shell_env(self) -> dict[str, str]:
        """What a shell needs to use this stack: its connection, its sandbox site and
        the settings its processes run with (the key prefix among them), not the ones
        that belong to one process."""
        env = self.env()
        env["HISCRM_REDIS_PASSWORD_FILE"] = str(self.password_file)
        return {
            name: value
            for name, value in sorted(env.items())
            if name.startswith("HISCRM_")
            and name not in _PER_PROCESS_SETTINGS
            and name not in _OTHER_REDIS_SETTINGS
        }

    def _write_env_file(self) -> None:
        lines = [
            "# written by `hiscrm up`: `source` it to use this stack from another shell.",
            "# The password is not here: it is read from HISCRM_REDIS_PASSWORD_FILE (for",
            '# redis-cli: export REDISCLI_AUTH=$(cat "$HISCRM_REDIS_PASSWORD_FILE")).',
            *(f"export {name}={shlex.quote(value)}" for name, value in self.shell_env().items()),
            "",
        ]
        write_private(self.env_file, "\n".join(lines))
        ports: dict[str, object] = {
            "redis": self.redis_port,
            "sandbox": self.site_port,
            "web": self.web_port,
        }
        if self.cluster:
            ports["cluster"] = self.cluster_ports
        write_private(self.ports_file, json.dumps(ports) + "\n")

    def _write_credentials(self) -> None:
        """A new password for this run: in a 0600 file for the clients and in a 0600
        redis.conf for the server; this process and its children find it through
        HISCRM_REDIS_PASSWORD_FILE."""
        private_dir(self.data_dir, tighten=False)
        private_dir(self.data_dir / "redis")
        self.password = secrets.token_urlsafe(32)
        write_private(self.password_file, self.password + "\n")
        data = str(self.data_dir / "redis").replace("\\", "\\\\").replace('"', '\\"')
        write_private(
            self.redis_conf,
            "\n".join(
                [
                    f"port {self.redis_port}",
                    "bind 127.0.0.1",
                    "protected-mode yes",
                    f'dir "{data}"',
                    "appendonly yes",
                    'save ""',
                    # no value larger than a message may be (limits.MAX_MESSAGE_BYTES):
                    # a worker's user cannot make a reader take in hundreds of MB
                    "proto-max-bulk-len 8mb",
                    f"requirepass {self.password}",
                    "",
                ]
            ),
        )
        for name in _OTHER_REDIS_SETTINGS:
            os.environ.pop(name, None)
        # the demo, played in this process, reads its settings from the environment too
        os.environ["HISCRM_REDIS_URL"] = self.redis_url
        os.environ["HISCRM_REDIS_PASSWORD_FILE"] = str(self.password_file)
        os.environ["HISCRM_DATABASE_URL"] = self.database_url

    def _add_web_user(self) -> None:
        """The console's first user: ``admin`` with the password of the earlier runs'
        file, or a new one (written 0600 before Redis hears of it)."""
        from hiscrm_web.auth import MIN_PASSWORD, Users
        from hiscrm_web.settings import WebSettings

        from .common import build, redis_client

        try:
            password = self.web_password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            password = ""
        if len(password) < MIN_PASSWORD:
            password = secrets.token_urlsafe(18)
            write_private(self.web_password_file, password + "\n")
        settings = build(WebSettings, master_id="web")

        async def add() -> None:
            async with redis_client(settings) as redis:
                await Users(redis, settings.keys).add(WEB_USER, password, replace=True)

        run(add)

    def _wait_ready(self, name: str, ready: object, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            for pname, proc in self.procs.items():
                if proc.poll() is not None:
                    fail(
                        f"{pname} exited with {proc.returncode}; see {self.logs / (pname + '.log')}"
                    )
            if time.monotonic() > deadline:
                fail(f"{name} did not come up within {timeout:.0f}s; see {self.logs}")
            time.sleep(0.05)  # a starting process offers nothing to wait on

    def _redis_ready(self) -> bool:
        if self.cluster:  # every node sees every slot served
            return all(self._node_info(p) == "ok" for p in self.cluster_ports)
        try:
            with redis.Redis(
                port=self.redis_port, password=self.password, socket_connect_timeout=0.2
            ) as r:
                return bool(r.ping())
        except redis.RedisError:
            return False

    def _worker_ready(self) -> bool:
        keys = BusSettings(redis_url=self.redis_url).keys
        if self.cluster:
            with RedisCluster(host=HOST, port=self.redis_port, password=self.password) as c:
                return bool(c.exists(keys.worker("w1")))
        with redis.Redis(port=self.redis_port, password=self.password) as r:
            return bool(r.exists(keys.worker("w1")))

    def _web_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.web_url + "signin", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM in reverse order of start, then SIGKILL what is left of each tree."""
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
        for name, proc in reversed(list(self.procs.items())):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                console.print(f"{name} did not stop in time; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its children (Chromium) too
            proc.wait()


def up(
    demo: Annotated[bool, typer.Option("--demo", help="Play the login scenario and exit.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="With --demo: keep running after.")] = False,
    data_dir: Annotated[Path, typer.Option(help="Where Redis data and logs go.")] = Path("var/up"),
    log_level: Annotated[str, typer.Option(help="Log level of the services.")] = "info",
    cluster: Annotated[
        bool,
        typer.Option("--cluster", help="Run a local Redis Cluster (3 primaries, 3 replicas)."),
    ] = False,
) -> None:
    """Run the whole stack on this machine until Ctrl-C (with --demo: play the seed's
    scenario, print its timeline, and stop)."""
    from .demo import play

    stack = LocalStack(data_dir, log_level, cluster=cluster)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # even where a shell started us ignoring it
    code = EXIT_OK
    try:
        if demo:
            stack.reset()  # the scenario starts from nothing, every time
        stack.start()
        console.print(
            f"use it from another shell: source {safe(shlex.quote(shown_path(stack.env_file)))}"
        )
        if demo:
            code = run(lambda: play(stack.redis_url, stack.site_url))
        if not demo or keep:
            console.print("running; Ctrl-C stops everything")
            while all(p.poll() is None for p in stack.procs.values()):
                time.sleep(0.5)  # nothing to do but wait for Ctrl-C
            crashed = [n for n, p in stack.procs.items() if p.poll() is not None]
            console.print(f"[red]{', '.join(crashed)} exited[/red]; see {safe(stack.logs)}")
            code = EXIT_FAILED
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        with console.status("stopping everything…"):
            stack.stop()
        console.print("stopped; no process left behind")
    raise typer.Exit(code)
