"""A real PostgreSQL server (Debian's) on a free loopback port, started and stopped by
the tests.

Debian keeps PostgreSQL's programs off PATH, under ``/usr/lib/postgresql/<N>/bin``; the
newest N is used. The cluster lives in a fresh temporary directory (data, the Unix
socket, the log), on /dev/shm when that is a roomy tmpfs: on this machine's ext4, mounted
with ``discard``, initdb takes 1 s and each new database 240 ms, on tmpfs 0.45 s and
25 ms. It is tuned for tests, not for safety (no fsync, no synchronous commit, no
full-page writes): a crash of the machine could corrupt it; ``kill()`` of the server's
processes does not, though it may lose the last commits (see ``kill``).

PostgreSQL will not run as root: as root, initdb and the server run as the ``postgres``
user of Debian's package (or a system user ``hiscrm-pg`` made here when it is missing),
and the work directory belongs to that user. The switch of user is subprocess's own
(``user=``, ``group=``, no supplementary groups), not ``runuser``: runuser would stay
between us and the postmaster, stopping itself when its child is stopped and holding the
child's exit, and ``kill()`` needs the postmaster as a child of ours to reap.

One superuser role, ``hiscrm``, with a generated password and SCRAM authentication on
every connection, the socket's too. The password reaches initdb in a 0600 file and the
client programs in their environment (``PGPASSWORD``), never on a command line."""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

ROLE = "hiscrm"
_FALLBACK_USER = "hiscrm-pg"
# settings for a throwaway cluster: speed over durability
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "100",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<N>/bin`` that has an initdb."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [p for p in found if p.parent.name.isdigit()]
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb "
            "(make system-deps, or apt-get install postgresql)"
        )
    return max(found, key=lambda p: int(p.parent.name))


def _scratch_parent() -> str | None:
    """/dev/shm when it is a writable tmpfs with 1 GiB free (a container's is often
    64 MiB), else None: the usual temporary directory."""
    shm = "/dev/shm"
    try:
        with open("/proc/mounts") as mounts:
            tmpfs = any(line.split()[1:3] == [shm, "tmpfs"] for line in mounts)
        st = os.statvfs(shm)
    except OSError:
        return None
    if tmpfs and os.access(shm, os.W_OK | os.X_OK) and st.f_bavail * st.f_frsize >= 1 << 30:
        return shm
    return None


def _server_user() -> pwd.struct_passwd:
    """The unprivileged user the server runs as when we are root: ``postgres`` from
    Debian's package, or a system user of our own made on first use."""
    for name in ("postgres", _FALLBACK_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _FALLBACK_USER],
        check=False,
        capture_output=True,
    )
    # 9: it exists, made meanwhile by another test process (pytest-xdist's workers start
    # their servers at the same time)
    if made.returncode not in (0, 9):
        raise subprocess.CalledProcessError(made.returncode, made.args, made.stdout, made.stderr)
    return pwd.getpwnam(_FALLBACK_USER)


class PostgresServer:
    """``start()``, ``stop()``, ``kill()``, ``restart()``, ``remove()``; ``url(db)`` and
    ``create_database(name)`` / ``drop_database(name)`` for the tests' databases, and
    ``psql(sql)`` for anything else, as the superuser ``hiscrm``."""

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        """``settings``: more server settings (``-c name=value``), over ours."""
        self.bin = bin_dir()
        self.password = secrets.token_urlsafe(24) + "/@:%"  # URL-special on purpose
        self.port = free_port()
        self.settings = {**_SETTINGS, **(settings or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="hiscrm-pg-", dir=_scratch_parent()))
        # as root, the server's programs run as this user (None: as we are)
        self._uid: int | None = None
        self._gid: int | None = None
        self._groups: list[int] | None = None
        if os.geteuid() == 0:
            user = _server_user()
            self._uid, self._gid, self._groups = user.pw_uid, user.pw_gid, []
            os.chown(self.workdir, user.pw_uid, user.pw_gid)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_file(self) -> Path:
        return self.workdir / "postgres.log"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL (asyncpg driver) of ``database`` as ``hiscrm``."""
        password = quote(self.password, safe="")
        return f"postgresql+asyncpg://{ROLE}:{password}@127.0.0.1:{self.port}/{database}"

    def _initdb(self) -> None:
        pwfile = self.workdir / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        if self._uid is not None and self._gid is not None:
            os.chown(pwfile, self._uid, self._gid)
        try:
            result = subprocess.run(
                [
                    str(self.bin / "initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    ROLE,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                capture_output=True,
                check=False,
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )
        finally:
            pwfile.unlink()
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{_tail(output)}")

    def start(self) -> None:
        """Start the server (making the cluster on the first start) and return once it
        accepts connections."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        argv = [str(self.bin / "postgres"), "-D", str(self.data_dir)]
        settings = {**self.settings, "port": str(self.port)}
        settings["unix_socket_directories"] = str(self.workdir)
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        with self.log_file.open("ab") as log:
            # a session of its own: a ^C of pytest is not a signal to the server
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"postgres did not start on {self.port} ({self.log_file}):\n"
                    + _tail(self.log_file.read_text(errors="replace"))
                )
            time.sleep(0.02)  # polling a process we just started; no event to await

    def _pid_file(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return []

    def _ready(self) -> bool:
        """The postmaster writes its status into postmaster.pid: ``ready`` once it
        accepts connections (the line's position is fixed, PM_STATUS in pidfile.h). The
        file of a killed server stays behind saying ``ready``: its first line, the
        process id, tells ours from it."""
        lines = self._pid_file()
        return (
            len(lines) >= 8
            and self.proc is not None
            and lines[0] == str(self.proc.pid)
            and lines[7].strip() == "ready"
        )

    def pids(self) -> list[int]:
        """The server's processes: the postmaster, then its children."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *_children(self.proc.pid)]

    def stop(self) -> None:
        """Fast shutdown (sessions are ended, work is checkpointed); SIGKILL when it
        takes longer than 10 seconds."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL of the postmaster and of every process it started, as in a crash of
        the machine: connections die without a goodbye, nothing is checkpointed, and
        with ``synchronous_commit=off`` the last commits may be lost (a test that needs
        a commit to survive sets it on for its session). The next ``start()`` recovers
        from the WAL. Returns once they are all gone, so that a restart finds no process
        still holding the cluster."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            postmaster = self.proc.pid
            os.kill(postmaster, signal.SIGSTOP)  # no new children while we list them
            victims = _children(postmaster)
            pidfds = [_pidfd(pid) for pid in victims]
            for pid in [postmaster, *victims]:
                _signal(pid, signal.SIGKILL)
            # the children are orphans now, reaped by whoever adopts them (maybe never);
            # their pidfds tell when they have exited all the same
            for fd in pidfds:
                if fd is not None:
                    _wait_pidfd(fd)
        self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGHOST="127.0.0.1",
            PGPORT=str(self.port),
            PGUSER=ROLE,
            PGPASSWORD=self.password,
            PGDATABASE="postgres",
            PGCONNECT_TIMEOUT="10",
        )
        return env

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql as ``hiscrm``; its output (unaligned, tuples only)."""
        result = subprocess.run(
            [
                str(self.bin / "psql"),
                "--no-psqlrc",
                "--quiet",
                "--tuples-only",
                "--no-align",
                "--set=ON_ERROR_STOP=1",
                "--dbname",
                database,
            ],
            input=sql.encode(),
            env=self._client_env(),
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout.decode()

    def create_database(self, name: str) -> str:
        """A new, empty database ``name`` (a plain identifier); its URL."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        # a file copy of template1 (after a checkpoint, cheap without fsync) takes some
        # 30 ms; the default, writing the copy through the WAL, some 250 ms
        self.psql(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any session still on it."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _signal(pid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_pidfd(fd: int, timeout_s: float = 10) -> None:
    """Wait until the process of ``fd`` has exited (a zombie counts: the server's
    children are reaped by whoever adopts them, which may be never)."""
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout_s * 1000):
            raise RuntimeError("a postgres process outlived SIGKILL")
    finally:
        os.close(fd)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextmanager
def running(server: PostgresServer) -> Iterator[PostgresServer]:
    """``server`` started for the block, stopped and removed after it."""
    server.start()
    try:
        yield server
    finally:
        server.remove()
