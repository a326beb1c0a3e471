"""`imaging-facade db upgrade | current | history`: the store's schema version (Alembic).

`serve`, `sync` and the other commands refuse a store whose schema is behind or ahead of this
release; `db upgrade` is the one command that moves it, so an operator upgrades when they choose
to (after a backup), never as a side effect of a restart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from app.cli.common import config_option, fail, load
from app.config import Config

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def _engine(config: Config) -> Engine:
    from app.store.engine import make_engine

    return make_engine(config.store)


@click.group()
def db() -> None:
    """The store's schema version: upgrade it, show it, list the versions."""


@db.command()
@config_option
def upgrade(config_path: str | None) -> None:
    """Migrate the store to this release's schema (an empty store is made at it)."""
    from app.store import schema

    config = load(config_path)
    logging.getLogger("alembic").setLevel(logging.INFO)  # each migration as it runs
    engine = _engine(config)
    try:
        before, after = schema.upgrade(engine)
    except schema.SchemaMismatch as exc:
        fail(exc.advice())
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"the store is up to date: {schema.describe(after)}")
    else:
        click.echo(f"the store was {schema.describe(before)}; now {schema.describe(after)}")


@db.command()
@config_option
def current(config_path: str | None) -> None:
    """Show the store's schema version; exit status 1 when it is not this release's."""
    from app.store import schema

    config = load(config_path)
    engine = _engine(config)
    try:
        with engine.connect() as conn:
            version = schema.version_of(conn)
    finally:
        engine.dispose()
    click.echo(schema.describe(version))
    if version.revision is not None and not schema.known(version.revision):
        fail("run the release that made it", status=1)
    if version.revision != schema.head():
        fail(f"run `{schema.UPGRADE} --config {config.path}`", status=1)


@db.command()
def history() -> None:
    """List the schema versions this release knows, oldest first."""
    from app.store import schema

    for revision, doc in schema.history():
        marker = "  (newest)" if revision == schema.head() else ""
        click.echo(f"{revision}  {doc}{marker}")
