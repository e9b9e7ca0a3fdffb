"""``hiscrm acl …``: the Redis users of a fleet (one per worker, the Master, operators)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from hiscrm_bus import acl
from hiscrm_bus.accounts import ID_PATTERN
from hiscrm_bus.errors import BusUnavailable
from hiscrm_bus.keys import Keys
from hiscrm_worker.settings import write_private

from .common import RedisUrl, command_settings, console, err_console, fail, redis_client, run
from .terminal import safe

app = typer.Typer(
    help="Redis users: one per worker, the Master's, operators'.", no_args_is_help=True
)

PasswordFile = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        help="Where the password is (made, mode 0600, when the file does not exist). "
        "Default: var/acl/<user>.password.",
        show_default=False,
    ),
]


def _worker_id(value: str) -> str:
    if not re.match(ID_PATTERN, value):
        fail(f"{value!r} is not a valid worker id (letters, digits, _.@- ; up to 128)")
    return value


def password_from(path: Path) -> tuple[str, bool]:
    """The password kept in ``path``, made (mode 0600, directory 0700) when the file
    does not exist. Returns (password, made now)."""
    if path.exists():
        try:
            password = path.read_text().strip()
        except OSError as exc:
            fail(f"cannot read the password file {path}: {exc.strerror}")
        if not password:
            fail(f"the password file {path} is empty")
        return password, False
    password = acl.new_password()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, password + "\n", new=True)
    except OSError as exc:
        fail(f"cannot write the password file {path}: {exc.strerror}")
    return password, True


def _default_file(user: str) -> Path:
    return Path("var/acl") / f"{user}.password"


@app.command("add-worker")
def add_worker(
    worker_id: Annotated[str, typer.Argument(metavar="ID")],
    password_file: PasswordFile = None,
    redis_url: RedisUrl = None,
) -> None:
    """Create or update the Redis user ``worker-ID`` (its password is never printed)."""
    worker_id = _worker_id(worker_id)
    settings = command_settings(redis_url)
    user = acl.worker_user(worker_id)
    path = password_file or _default_file(user)
    password, made = password_from(path)

    async def main() -> acl.Applied:
        async with redis_client(settings) as redis:
            return await acl.add_worker(redis, settings.keys, worker_id, password)

    applied = run(main)
    where = f" on {applied.nodes} nodes" if settings.cluster else ""
    console.print(
        f"user {safe(user)} {'created' if made else 'updated'}{where}; its password is in "
        f"{safe(str(path))} ({'new, ' if made else ''}mode 0600)"
    )
    url = (
        f"redis+cluster://{safe(user)}@HOST:PORT,HOST:PORT/"
        if settings.cluster
        else f"redis://{safe(user)}@HOST:PORT/0"
    )
    console.print(
        f"run the worker with HISCRM_REDIS_URL={url} and "
        f"HISCRM_REDIS_PASSWORD_FILE={safe(str(path))}",
        highlight=False,
    )
    if applied.saved < applied.nodes:
        which = (
            "Redis has no ACL file"
            if not settings.cluster
            else f"{applied.nodes - applied.saved} of {applied.nodes} nodes have no ACL file"
        )
        err_console.print(
            f"[yellow]warning:[/yellow] {which}: this user is gone when Redis "
            "restarts (start Redis with an aclfile, see `hiscrm acl render`)",
            highlight=False,
        )
    _unreached(applied)


def _unreached(applied: acl.Applied) -> None:
    """Exit 1 when a cluster node could not be reached: it lacks the change."""
    if applied.failed:
        fail(
            f"not done on {len(applied.failed)} node(s), which did not answer: "
            f"{safe('; '.join(applied.failed))} (run the command again once they do)",
            1,
        )


@app.command("remove-worker")
def remove_worker(
    worker_id: Annotated[str, typer.Argument(metavar="ID")],
    redis_url: RedisUrl = None,
) -> None:
    """Delete the Redis user ``worker-ID``; Redis closes its connections."""
    worker_id = _worker_id(worker_id)
    settings = command_settings(redis_url)

    async def main() -> tuple[bool, acl.Applied]:
        async with redis_client(settings) as redis:
            return await acl.remove_worker(redis, worker_id)

    existed, applied = run(main)
    if not existed and applied.everywhere:
        fail(f"there is no user {acl.worker_user(worker_id)}", 1)
    where = f" on {applied.nodes} nodes" if settings.cluster else ""
    console.print(f"user {safe(acl.worker_user(worker_id))} removed{where}")
    _unreached(applied)


@app.command("show")
def show(
    worker_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
    redis_url: RedisUrl = None,
) -> None:
    """The rules of the fleet's users (or of ``worker-ID``), password hashes masked."""
    names = [acl.worker_user(_worker_id(worker_id))] if worker_id else None
    settings = command_settings(redis_url)

    async def main() -> dict[str, dict[str, str] | BusUnavailable]:
        async with redis_client(settings) as redis:
            if settings.cluster:
                return await acl.rules_on_nodes(redis, names)
            return {"": await acl.rules_of(redis, names)}

    by_node = run(main)
    read = {node: rules for node, rules in by_node.items() if isinstance(rules, dict)}
    rules: dict[str, str] = {}
    for node_rules in read.values():
        rules = {**node_rules, **rules}
    if not rules:
        fail("no such user" if worker_id else "no hiscrm users on this Redis", 1)
    for name, text in rules.items():
        console.print(f"[bold]{safe(name)}[/bold] {safe(text)}", highlight=False)
        if settings.cluster:
            # Redis lists a user's commands in an order of its own on each node
            same = [
                n for n, r in read.items() if acl.same_rules(r.get(name, "").split(), text.split())
            ]
            missing = [n for n, r in read.items() if name not in r]
            other = [n for n in read if n not in same and n not in missing]
            line = f"  the same on {len(same)} of {len(by_node)} nodes"
            line += "".join(
                f"; {what} on {', '.join(nodes)}"
                for what, nodes in (("missing", missing), ("different", other))
                if nodes
            )
            console.print(safe(line), highlight=False)
    for node, error in by_node.items():
        if not isinstance(error, dict):
            err_console.print(
                f"[yellow]warning:[/yellow] node {safe(node)} not read: {safe(str(error))}",
                highlight=False,
            )


@app.command("render")
def render(
    out: Annotated[Path, typer.Option("--out", help="The ACL file to write (mode 0600).")],
    workers: Annotated[
        list[str] | None, typer.Option("--worker", help="A worker id (repeat for each).")
    ] = None,
    secrets_dir: Annotated[
        Path,
        typer.Option(help="Passwords, one <user>.password file each (made when missing)."),
    ] = Path("var/acl"),
    key_prefix: Annotated[
        str | None, typer.Option(envvar="HISCRM_KEY_PREFIX", help="Key prefix.")
    ] = None,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="For a Redis Cluster (hash-tagged names, a cluster client's commands); "
            "give every node the file.",
        ),
    ] = False,
) -> None:
    """Write an ACL file (for redis-server's ``aclfile``): the Master's and the
    operators' users, one user per worker, and the default user behind a generated
    password (Redis needs its full rights to replay its append-only file)."""
    keys = Keys(key_prefix or "hiscrm:", cluster=cluster)
    ids = [_worker_id(w) for w in workers or []]
    users = []
    for name, rules in [
        (acl.MASTER_USER, acl.admin_rules(keys)),
        (acl.OPERATOR_USER, acl.admin_rules(keys)),
        *[(acl.worker_user(w), acl.worker_rules(keys, w)) for w in ids],
    ]:
        password, _made = password_from(secrets_dir / f"{name}.password")
        users.append(acl.UserLine(name, rules, password))
    default_password, _made = password_from(secrets_dir / "default.password")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_private(out, acl.render_file(users, default_password))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    console.print(
        f"wrote {safe(str(out))}: {len(users)} users "
        f"({', '.join(safe(u.name) for u in users)}); passwords in {safe(str(secrets_dir))}"
    )
