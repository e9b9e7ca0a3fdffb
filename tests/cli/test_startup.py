"""The lazily loaded commands of ``hiscrm`` (issue 11): ``hiscrm --help`` lists them from
``main.COMMANDS`` without importing them, so that table must say what the commands say;
and the CLI must behave as it did when main.py imported and registered every command.

No timings here: benchmarks/startup.py measures them."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from hiscrm_cli import main as cli
from hiscrm_cli.main import COMMANDS, LazyGroup, load

runner = CliRunner()


def eager_app() -> typer.Typer:
    """``hiscrm`` as main.py built it before: every command imported and registered."""
    app = typer.Typer(
        name=cli.app.info.name,
        help=cli.app.info.help,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    app.callback()(cli.main)
    for name, entry in COMMANDS.items():
        module, _, attribute = entry.target.partition(":")
        target = getattr(__import__(f"hiscrm_cli.{module}", fromlist=[attribute]), attribute)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    return app


def every_command_line() -> list[list[str]]:
    """``--help`` of the group, of each command and of each command's subcommands."""
    lines = [["--help"]]
    for name in COMMANDS:
        lines.append([name, "--help"])
        lines += [[name, sub, "--help"] for sub in getattr(load(name), "commands", {})]
    return lines


def test_the_table_says_what_each_command_says() -> None:
    for name, entry in COMMANDS.items():
        real = load(name)
        assert real.name == name
        listed = inspect.cleandoc(real.short_help or real.help or "").split("\n\n")[0]
        assert entry.help == listed, f"COMMANDS[{name!r}].help differs from its command's help"
        # what `hiscrm --help` would show of a command besides its help line
        assert not real.hidden
        assert not real.deprecated
        assert not getattr(real, "rich_help_panel", None)


@pytest.mark.parametrize(
    "args",
    [
        *every_command_line(),
        [],  # no arguments: the help
        ["nosuch"],
        ["acount"],  # close to a command: "Did you mean"
        ["account", "lst"],
        ["--bogus"],
        ["--log-level", "loud", "account", "list", "--help"],
    ],
    ids=" ".join,
)
def test_the_cli_behaves_as_when_every_command_was_imported(args: list[str]) -> None:
    lazy = runner.invoke(cli.app, args)
    eager = runner.invoke(eager_app(), args)
    assert (lazy.exit_code, lazy.output) == (eager.exit_code, eager.output)


@pytest.mark.parametrize("args", every_command_line(), ids=" ".join)
def test_every_command_resolves_and_shows_its_help(args: list[str]) -> None:
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert result.output.lstrip().startswith(f"Usage: hiscrm {' '.join(args[:-1])}".rstrip())


def test_an_unknown_command_is_a_usage_error() -> None:
    result = runner.invoke(cli.app, ["nosuch"])
    assert result.exit_code == 2
    assert "No such command 'nosuch'." in result.output
    assert "Did you mean 'account'?" in runner.invoke(cli.app, ["acount"]).output


@pytest.mark.parametrize("incomplete", ["", "a", "s", "--"])
def test_completion_is_the_same(incomplete: str) -> None:
    def completions(app: typer.Typer) -> list[tuple[str, str | None]]:
        group = get_command(app)
        ctx = group.make_context("hiscrm", [], resilient_parsing=True)
        return [(c.value, c.help) for c in group.shell_complete(ctx, incomplete)]

    assert completions(cli.app) == completions(eager_app())


def test_a_command_module_is_imported_once_and_only_when_resolved() -> None:
    group = get_command(cli.app)
    assert isinstance(group, LazyGroup)
    ctx = group.make_context("hiscrm", [], resilient_parsing=True)
    account = group.get_command(ctx, "account")
    assert isinstance(account, typer.core.TyperGroup)
    assert "list" in account.commands
    assert group.get_command(ctx, "account") is account
    assert group.get_command(ctx, "nosuch") is None


def imported_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running ``code``."""
    probe = f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
    probe += "print('MODULES', *sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    _output, _, modules = done.stdout.rpartition("MODULES ")
    return set(modules.split())


def test_help_imports_no_command() -> None:
    modules = imported_after("from hiscrm_cli.main import app; app(['--help'])")
    ours = {m for m in modules if m.split(".")[0].startswith("hiscrm")}
    assert ours == {"hiscrm_cli", "hiscrm_cli.main"}
    assert "pydantic_settings" not in modules


def test_account_list_imports_no_update_machinery() -> None:
    modules = imported_after("from hiscrm_cli.main import app; app(['account', 'list', '--help'])")
    assert "hiscrm_cli.account" in modules
    heavy_modules = ("hiscrm_master.updates", "hiscrm_master.login", "hiscrm_cli.bulk")
    # nor the message models (~25 ms of class building): reading hashes needs none
    for heavy in (*heavy_modules, "hiscrm_bus.messages"):
        assert heavy not in modules, f"`hiscrm account list` imports {heavy}"
