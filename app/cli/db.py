"""`imaging-facade db upgrade | current | history | backup | restore`: the store's schema
version (Alembic), and its backups.

`serve`, `sync` and the other commands refuse a store whose schema is behind or ahead of this
release; `db upgrade` is the one command that moves it, so an operator upgrades when they choose
to (after a backup), never as a side effect of a restart.
"""

from __future__ import annotations

import logging
from pathlib import Path
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
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(min=1, max=10000),
              help="Patients (or rows) per transaction of a re-key of Patient ids.")  # fmt: skip
def upgrade(config_path: str | None, batch: int) -> None:
    """Migrate the store to this release's schema (an empty store is made at it), then re-key
    its Patient ids if they are of the old scheme (in batches; run it again after a stop)."""
    from app.store import schema

    config = load(config_path)
    logging.getLogger("alembic").setLevel(logging.INFO)  # each migration as it runs
    engine = _engine(config)
    try:
        before, after = schema.upgrade(engine)
        if before == after:
            click.echo(f"the store is up to date: {schema.describe(after)}")
        else:
            click.echo(f"the store was {schema.describe(before)}; now {schema.describe(after)}")
        _rekey_patients(engine, config, batch)
    except schema.SchemaMismatch as exc:
        fail(exc.advice())
    finally:
        engine.dispose()


def _rekey_patients(engine: Engine, config: Config, batch: int) -> None:
    """Re-key the store's Patient ids from the old, unkeyed scheme (app/identity/rekey.py): every
    batch one transaction, progress said as it goes; nothing but counts is printed."""
    import time

    from app.identity import rekey
    from app.store.patient_ids import KeyMismatch, resolve_key

    if not rekey.needed(engine):
        return
    try:
        key = resolve_key(engine, config.identity.secret)
    except KeyMismatch as exc:
        fail(f"invalid configuration in {config.path}:\n  {exc}")
    click.echo("re-keying Patient ids (the old ones reveal the Patient ID); safe to stop and run again")
    _store_spooled_events(config)
    started = last = time.monotonic()

    def told(step: str, done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 2.0:
            click.echo(f"  {step}: {done} done ({now - started:.0f} s)")
            last = now

    count = rekey.rekey(engine, key, config.identity, batch, told)
    click.echo(f"re-keyed {count} Patient ids in {time.monotonic() - started:.1f} s")


def _store_spooled_events(config: Config) -> None:
    """Move the AuditEvents that stopped servers left in the audit spool into the store first:
    they name Patients by their old ids, and once the re-key has begun nothing could map them.
    A segment a live process holds stays (servers must be stopped for an upgrade)."""
    from app.store.audit_log import AuditLog

    spool = config.security.audit_spool
    if spool is None or not spool.is_dir():
        return
    audit_log = AuditLog(config.store, spool)
    try:
        stored = audit_log.flush()
    finally:
        audit_log.close()
    if stored:
        click.echo(f"stored {stored} audit events left in the audit spool")


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


@db.command()
@config_option
@click.option("--to", "destination", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The backup file to write (must not exist).")  # fmt: skip
def backup(config_path: str | None, destination: Path) -> None:
    """Back up the store while it serves (SQLite's online backup, or pg_dump's custom format)."""
    from app.store.backup import BackupError
    from app.store.backup import backup as back_up

    config = load(config_path)
    try:
        back_up(config.store, destination)
    except BackupError as exc:
        fail(str(exc))
    click.echo(f"backed up the store to {destination}")


@db.command()
@config_option
@click.option("--from", "backup_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A file written by `db backup`.")  # fmt: skip
def restore(config_path: str | None, backup_file: Path) -> None:
    """Fill the config's store, which must be new and empty, from a backup."""
    from app.store import schema
    from app.store.backup import BackupError
    from app.store.backup import restore as restore_into

    config = load(config_path)
    try:
        restore_into(backup_file, config.store)
    except BackupError as exc:
        fail(str(exc))
    engine = _engine(config)
    try:
        with engine.connect() as conn:
            version = schema.version_of(conn)
    finally:
        engine.dispose()
    click.echo(f"restored {backup_file}: {schema.describe(version)}")
    if version.revision != schema.head():
        click.echo(f"before serving it, run `{schema.UPGRADE} --config {config.path}`")
