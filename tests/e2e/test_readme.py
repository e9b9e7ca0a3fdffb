"""The README's "Running it" walkthrough, run as written, so it cannot drift from the product.

What runs is taken from the README itself: the ``console`` blocks of the "Running it"
section (up to its first subsection), in order. In a block, ``$ CMD`` is a command typed
in a shell and the lines after it are what the README shows it printing; ``^C`` is Ctrl-C.

- The first block is the first shell: its one command (``hiscrm up``) is started in a
  fresh directory and left running until the ``^C``, which is sent as a terminal sends
  it, to its process group; then every process it started must be gone, Chromium too.
- Every other block is the second shell: each command runs in ``bash`` with the
  environment the previous ones left (``source``, ``export`` carry over), from a clean
  environment with no ``HISCRM_*`` variable, and must exit 0, or the code its comment
  gives (``# … exit 1``). ``CMD &`` runs in the background: the lines shown after it are
  awaited in its output before the next command (as a person waits for the QR code),
  and ``wait`` waits for it, checks its exit code and the lines shown after ``wait``.
- Shown output is checked loosely, line by line in order, others may come between:
  numbers match any number, ids (8+ characters of letters and digits) any id, ``…`` any
  text, runs of spaces any spacing; table borders and lines of ``…`` are not checked.
- ``hiscrm data`` shows what the crawler found by its next crawl, so it is run again
  until its shown lines appear (each run must still exit 0); ``redis-cli`` runs on a
  terminal (a pty), where it formats replies as the README shows them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from tests.e2e.test_up import chromium_of, gone

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "Running it"
POLLED = ("hiscrm data",)  # their output waits on the crawler's next pass
POLL_S = 30.0
STEP_TIMEOUT_S = 60.0


@dataclass
class Step:
    command: str  # as typed after "$ ", or "^C"
    shown: list[str] = field(default_factory=list)


def section_blocks(text: str, title: str, info: str = "console") -> list[str]:
    """The fenced ``info`` blocks of the section headed ``title``, up to the next heading."""
    tokens = MarkdownIt().parse(text)
    blocks: list[str] = []
    inside = False
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            if inside:
                break
            inside = tokens[i + 1].content.strip() == title
        elif inside and token.type == "fence" and token.info.split()[:1] == [info]:
            blocks.append(token.content)
    return blocks


def steps_of(block: str) -> list[Step]:
    steps: list[Step] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append(Step(line[2:].strip()))
        elif line.strip() == "^C":
            steps.append(Step("^C"))
        else:
            assert steps, f"output before any command in a README block: {line!r}"
            steps[-1].shown.append(line)
    return steps


# --- loose matching of shown output -------------------------------------------------

_PIECE = re.compile(r"(…)|(\s+)|([\w-]*\d[\w-]*)|(.)", re.S)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _pattern(line: str) -> re.Pattern[str]:
    parts = []
    for ellipsis, space, word, other in _PIECE.findall(line.strip()):
        if ellipsis:
            parts.append(".*")
        elif space:
            parts.append(r"\s+")
        elif word:
            if len(word) >= 8 and re.search(r"[A-Za-z]", word):
                parts.append(r"[\w-]+")  # an id, a token, a file name made of them
            else:
                parts.append(
                    "".join(
                        r"\d+(?:\.\d+)?" if p.isdigit() else re.escape(p)
                        for p in re.split(r"(\d+)", word)
                        if p
                    )
                )
        else:
            parts.append(re.escape(other))
    return re.compile("".join(parts))


def _checked(line: str) -> bool:
    """Table borders (their width follows the data) and ``…`` lines are not checked."""
    return bool(line.strip()) and not all(
        ch.isspace() or ch == "…" or "\u2500" <= ch <= "\u257f" for ch in line
    )


def first_missing(shown: list[str], output: str) -> str | None:
    """The first shown line that the output lacks (in order), or None."""
    lines = [ln.strip() for ln in _ANSI.sub("", output).replace("\r", "").splitlines()]
    at = 0
    for want in filter(_checked, shown):
        pattern = _pattern(want)
        for i in range(at, len(lines)):
            if pattern.fullmatch(lines[i]):
                at = i + 1
                break
        else:
            return want
    return None


def test_loose_matching_is_loose_only_where_it_says() -> None:
    out = (
        "login 936fe959edd6494eafa8f65a1bc7c169 for acc-1: waiting for the worker…\n"
        "│ c7 │ 2026-12-01 10:00:00 │ fan │ nice  │\n"
        "config update applied: version 3 by worker w1 in 12.5 ms (login took 7.1s)\n"
    )
    assert first_missing(["login 0123abcd4567 for acc-1: waiting for the worker…"], out) is None
    assert first_missing(["┏━━┓", "│ c1 │ 2026-11-30 05:02:49 │ fan    │ nice │"], out) is None
    assert first_missing(["…", "config update applied: version 3 by worker w1 in …"], out) is None
    assert first_missing(["config update rejected: version 3 by worker w1 in 2.8 ms"], out)
    assert first_missing(["│ c1 │ 2026-11-30 05:02:49 │ fan │ nice! │"], out)
    # in order
    assert first_missing(["config update applied: …", "login … for acc-1: …"], out)


# --- the shells -----------------------------------------------------------------------


def _expected_code(command: str) -> int:
    match = re.search(r"#.*\bexit (\d+)\b", command)
    return int(match.group(1)) if match else 0


def _background(command: str) -> str | None:
    """The command without its trailing ``&``, when it has one."""
    match = re.fullmatch(r"(.*?)\s+&\s*(#.*)?", command)
    if match and shlex.split(command, comments=True)[-1:] == ["&"]:
        return match.group(1)
    return None


class Job:
    """A process whose output is read as it comes, so a test can wait on a line."""

    def __init__(self, command: str, env: dict[str, str], cwd: Path) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            ["bash", "-c", command],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a process group of its own, as a shell job has
        )
        self.output = ""
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.output += line
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_shown(self, shown: list[str], timeout: float = STEP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while (missing := first_missing(shown, self.output)) is not None:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(
                        f"`{self.command}` never printed {missing!r}; it printed:\n{self.output}"
                    )
                self.changed.wait(left)

    def finish(self, timeout: float = STEP_TIMEOUT_S) -> int:
        code = self.proc.wait(timeout)
        self._close(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._close(5)

    def _close(self, timeout: float) -> None:
        self.reader.join(timeout)  # it ends at EOF, once every writer is gone
        if not self.reader.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()


def _run_on_tty(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    proc = subprocess.Popen(
        args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + STEP_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(controller)
    code = proc.wait(5)
    return code, b"".join(chunks).decode(errors="replace")


class Shell:
    """One interactive shell, as far as the walkthrough needs one: the environment
    carries over from command to command, and background jobs are waited for."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.jobs: list[tuple[Job, list[str], int]] = []  # job, shown lines, exit code
        self._env_dump = cwd / ".walkthrough-env"

    def run(self, step: Step) -> None:
        command = step.command
        if (bg := _background(command)) is not None:
            job = Job(bg, dict(self.env), self.cwd)
            job.wait_shown(step.shown)
            self.jobs.append((job, list(step.shown), _expected_code(command)))
            return
        if shlex.split(command, comments=True) == ["wait"]:
            for job, shown, expected in self.jobs:
                code = job.finish()
                assert code == expected, f"`{job.command}` exited {code}:\n{job.output}"
                missing = first_missing(shown + step.shown, job.output)
                assert missing is None, f"`{job.command}` never printed {missing!r}:\n{job.output}"
            self.jobs.clear()
            return
        deadline = time.monotonic() + (POLL_S if command.startswith(POLLED) else 0)
        while True:
            code, output = self._foreground(command)
            assert code == _expected_code(command), f"`{command}` exited {code}:\n{output}"
            missing = first_missing(step.shown, output)
            if missing is None:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"`{command}` did not print {missing!r}; it printed:\n{output}"
                )
            time.sleep(0.5)  # the crawler's next pass; nothing to wait on from here

    def _foreground(self, command: str) -> tuple[int, str]:
        # the command as typed, then what it left in the environment for the next one
        script = f'{command}\n__rc=$?\nenv -0 > "{self._env_dump}"\nexit $__rc\n'
        args = ["bash", "-c", script]
        if command.startswith("redis-cli"):
            code, output = _run_on_tty(args, self.env, self.cwd)
        else:
            result = subprocess.run(
                args,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
            code, output = result.returncode, result.stdout
        if self._env_dump.exists():
            pairs = self._env_dump.read_bytes().decode().split("\0")
            self.env = dict(p.split("=", 1) for p in pairs if "=" in p)
            self._env_dump.unlink()
        return code, output

    def kill(self) -> None:
        for job, _, _ in self.jobs:
            job.kill()


def _fresh_env() -> dict[str, str]:
    """A new user's shell: no hiscrm setting, the venv's commands on the PATH."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("HISCRM_") and k != "REDISCLI_AUTH"
    }
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["COLUMNS"] = "80"
    return env


def _stop(up: Job, cwd: Path) -> None:
    """Leave nothing behind even when the walkthrough failed half-way."""
    if up.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            up.proc.wait(30)
    up.kill()
    pids_file = cwd / "var" / "up" / "pids.json"
    if pids_file.exists():
        for pid in json.loads(pids_file.read_text()).values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # each child leads its own session


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = [steps_of(b) for b in section_blocks(README.read_text(encoding="utf-8"), SECTION)]
    assert len(blocks) >= 3, f"the README's {SECTION!r} section lost its console blocks"
    first, *others = blocks
    assert [s.command for s in first] == ["hiscrm up"], first
    started = time.monotonic()

    env = _fresh_env()
    up = Job(first[0].command, env, tmp_path)
    second = Shell(dict(env), tmp_path)
    stopped = False
    try:
        up.wait_shown(first[0].shown)
        for block in others:
            for step in block:
                if step.command == "^C":
                    # a terminal's Ctrl-C: SIGINT to the foreground process group
                    os.killpg(up.proc.pid, signal.SIGINT)
                    code = up.finish()
                    stopped = True
                    assert code == 0, up.output
                    missing = first_missing(step.shown, up.output)
                    assert missing is None, f"`hiscrm up` never printed {missing!r}:\n{up.output}"
                else:
                    assert not stopped, f"`{step.command}` comes after the stack was stopped"
                    second.run(step)
        assert stopped, "the walkthrough never stops `hiscrm up` (a `^C` line)"
        assert not second.jobs, "a background job was never waited for"
    finally:
        second.kill()
        _stop(up, tmp_path)

    pids = json.loads((tmp_path / "var" / "up" / "pids.json").read_text())
    assert all(gone(pid) for pid in pids.values()), pids
    assert chromium_of(tmp_path) == []
    assert time.monotonic() - started < 90


def test_every_redis_cli_example_names_its_server() -> None:
    """Without ``-u`` (or ``-h``) redis-cli talks to whatever listens on 6379."""
    text = README.read_text(encoding="utf-8")
    tokens = MarkdownIt().parse(text)
    commands = []
    for token in tokens:
        if token.type != "fence":
            continue
        for line in token.content.splitlines():
            command = line.removeprefix("$ ").strip()
            if command.startswith("redis-cli "):
                commands.append(command)
    assert commands
    unnamed = [c for c in commands if not re.search(r"\s(-u|-h)\s", c)]
    assert unnamed == []
    walkthrough = [
        s.command
        for block in section_blocks(text, SECTION)
        for s in steps_of(block)
        if s.command.startswith("redis-cli")
    ]
    assert walkthrough
    assert all(c.startswith('redis-cli -u "$HISCRM_REDIS_URL" ') for c in walkthrough)
