"""`artifacts keys create | list | revoke | reopen`: API keys, each bound to a project (the
tenant). Each command says what it changes for a running server: the first key ends open mode,
revoking the last active one leaves a server that refuses every request, and only `reopen`
brings open mode back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from app.cli.base import DataDir, cli, duration_flag, load_settings, migrate_database
from storage.apikeys import SCOPES, ApiKey, ApiKeyNotFound, ApiKeys, KeysStillActive
from storage.db.engine import Database
from storage.db.tables import DEFAULT_TENANT
from storage.records import now_us, us_to_iso

keys_group = typer.Typer(no_args_is_help=True, help="Manage API keys (each bound to one project).")
cli.add_typer(keys_group, name="keys")
T = TypeVar("T")


def _run(data_dir: Path | None, job: Callable[[ApiKeys], Awaitable[T]]) -> T:
    settings = load_settings(data_dir)
    migrate_database(settings)

    async def go() -> T:
        db = Database(settings.resolved_database_url)
        try:
            return await job(ApiKeys(db))
        finally:
            await db.dispose()

    return asyncio.run(go())


def _as_json(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "project": key.tenant,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes),
        "created_at": us_to_iso(key.created_at),
        "expires_at": None if key.expires_at is None else us_to_iso(key.expires_at),
        "revoked_at": None if key.revoked_at is None else us_to_iso(key.revoked_at),
    }


def _say(message: str) -> None:
    """One line for the operator on stderr (stdout carries what a script reads, e.g. the key);
    not wrapped here, so it stays one line in a log."""
    typer.echo(message, err=True)


@keys_group.command()
def create(
    scopes: Annotated[
        list[str], typer.Option(help=f"comma-separated or repeated: {', '.join(SCOPES)}")
    ],
    project: Annotated[
        str,
        typer.Option(help="the tenant this key reads and writes; `default` is open mode's"),
    ] = DEFAULT_TENANT,
    expires: Annotated[str | None, typer.Option(help="lifetime, e.g. 30d, 12h")] = None,
    name: Annotated[str | None, typer.Option(help="what the key is for")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a key and print it once: only its hash and a short prefix are stored."""
    wanted = sorted({s.strip() for item in scopes for s in item.split(",") if s.strip()})
    expires_at = None
    if expires is not None:
        expires_at = now_us() + int(duration_flag("--expires", expires, 0) * 1e6)

    async def job(keys: ApiKeys) -> tuple[ApiKey, str, bool, int]:
        first = (await keys.access()).open
        key, secret = await keys.create(project, wanted, name=name, expires_at=expires_at)
        unseen = 0  # artifacts of `default` that no active key sees, this one neither
        if key.tenant != DEFAULT_TENANT:
            now = now_us()
            if not any(k.active(now) for k in await keys.list(tenant=DEFAULT_TENANT)):
                unseen = await keys.visible_artifacts(DEFAULT_TENANT)
        return key, secret, first, unseen

    try:
        key, secret, first, unseen = _run(data_dir, job)
    except ValueError as exc:
        typer.echo(f"keys create: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(secret)
    _say(
        f"key {key.prefix} for project {key.tenant!r} with {', '.join(key.scopes)}"
        f"{'' if expires_at is None else ', expires ' + us_to_iso(expires_at)}. "
        "It is shown only now: store it somewhere safe."
    )
    if first:
        _say(
            "This is the first key: open mode is over. A running server asks every request "
            "for a key within a second."
        )
    if unseen:
        _say(
            f"Note: {unseen} artifact{'s are' if unseen > 1 else ' is'} in the project "
            f"{DEFAULT_TENANT!r} (open mode's), which this key does not see and no active key "
            f"does; `artifacts keys create --project {DEFAULT_TENANT} --scopes artifact:read` "
            "makes one that does."
        )


@keys_group.command("list")
def list_keys(
    project: Annotated[str | None, typer.Option(help="only this project's keys")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable, with ids")] = False,
    data_dir: DataDir = None,
) -> None:
    """Every key's prefix (what `keys revoke` takes), project, scopes and state; never the
    key itself. Made to be read at 80 columns: the prefix is never cut."""
    found = _run(data_dir, lambda keys: keys.list(tenant=project))
    if as_json:
        typer.echo(json.dumps([_as_json(k) for k in found], indent=2))
        return
    if not found:
        typer.echo("No API key is on record." if project is None else f"No key of {project!r}.")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("prefix", no_wrap=True, min_width=12)
    table.add_column("project", overflow="fold", ratio=1, min_width=7)
    table.add_column("scopes", no_wrap=True, min_width=15)
    table.add_column("state", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("name", overflow="fold", ratio=1, min_width=4)
    now = now_us()
    for k in found:
        state = "revoked" if k.revoked_at else "expired" if not k.active(now) else "active"
        table.add_row(
            k.prefix, Text(k.tenant), "\n".join(k.scopes), state,
            us_to_iso(k.created_at)[:10], Text(k.name or ""),
        )  # fmt: skip
    Console(highlight=False).print(table)


@keys_group.command()
def revoke(
    key: Annotated[str, typer.Argument(help="the key's prefix as `keys list` shows it, or its id")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a key: requests with it answer 401 from now on. The key stays on record, so
    revoking the last one never reopens the server (see `keys reopen`)."""
    ref = key.strip().removesuffix("…")

    async def job(keys: ApiKeys) -> tuple[ApiKey, bool, int]:
        done, revoked = await keys.revoke(ref)
        return done, revoked, (await keys.access()).active

    try:
        done, revoked, active = _run(data_dir, job)
    except ApiKeyNotFound as exc:
        typer.echo(f"keys revoke: {exc} `artifacts keys list` shows every key's prefix.", err=True)
        raise typer.Exit(1) from None
    if not revoked:
        assert done.revoked_at is not None
        typer.echo(
            f"{done.prefix} (project {done.tenant!r}) was already revoked, at "
            f"{us_to_iso(done.revoked_at)}"
        )
        return
    typer.echo(f"revoked {done.prefix} (id {done.id}, project {done.tenant!r})")
    if not active:
        _say(
            "That was the last active key: a running server now refuses every request (401) "
            "until `artifacts keys create` makes a key. It does not go back to open mode; "
            "`artifacts keys reopen` does that."
        )


@keys_group.command()
def reopen(
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    data_dir: DataDir = None,
) -> None:
    """Forget every revoked and expired key so that open mode applies again: a server on
    loopback (or with --insecure-no-auth) then serves every request as the project `default`
    with every scope, until the next key is created. Refused while a key is active."""
    if not yes:
        typer.confirm(
            "Forget every revoked and expired key and let a server with no key serve anyone "
            "who reaches it?",
            abort=True,
        )
    try:
        forgotten = _run(data_dir, lambda keys: keys.forget_all())
    except KeysStillActive as exc:
        typer.echo(f"keys reopen: {exc}", err=True)
        raise typer.Exit(1) from None
    if not forgotten:
        typer.echo("No key is on record: open mode already applies.")
        return
    typer.echo(f"forgot {forgotten} revoked or expired key{'s' if forgotten > 1 else ''}")
    _say(
        "OPEN MODE is back: within a second a running server on loopback (or started with "
        "--insecure-no-auth) serves every request as the project 'default' with every scope, "
        "and says so in its log; the next `artifacts keys create` ends it."
    )
