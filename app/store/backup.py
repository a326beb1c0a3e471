"""Backups of the store while it serves, and their restore into a new, empty store.

Each engine's own consistent copy, never a file copy of a live database: SQLite's online
backup API copies pages under a read transaction, so a backup taken while a sync writes is the
store as it was at one commit (a `cp` of a WAL-mode file can miss the last commits or tear a
page); PostgreSQL's `pg_dump` reads one snapshot (REPEATABLE READ) and writes the custom
format that `pg_restore` takes. A restore only ever fills an empty store, so a mistyped target
can never overwrite a hospital's data; an older backup restored by a newer release is upgraded
by `imaging-facade db upgrade`, as any older store is.

The paging secret (unless set in the config) and every identity decision live in the store,
so they come back with it. What is not in the store is the operator's to keep: the config
file, mapping profiles, and each node's audit spool, which holds the last seconds of
AuditEvents until they are stored.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import IO

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, make_url


class BackupError(Exception):
    """A backup or restore that could not be made; the message says why and what to do."""


def backup(store_url: str, destination: Path) -> None:
    """Write a consistent copy of the store at `store_url` to `destination` (a new file)."""
    url = make_url(store_url)
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise BackupError(f"no backup for a {url.get_backend_name()} store")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:  # patient data: made readable by the service's user only, before anything is written
        descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{destination} exists; a backup never overwrites a file") from None
    try:
        if url.get_backend_name() == "sqlite":
            os.close(descriptor)
            _backup_sqlite(_sqlite_path(url), destination)
        else:
            with os.fdopen(descriptor, "wb") as out:
                _run(["pg_dump", "--format=custom", "--no-owner", _libpq(url)], url, "cannot back up the store", out)
    except BaseException:
        destination.unlink(missing_ok=True)  # never a half-written backup that looks whole
        raise


def restore(backup_file: Path, store_url: str) -> None:
    """Fill the empty store at `store_url` from a backup made by `backup`."""
    if not backup_file.is_file():
        raise BackupError(f"{backup_file} is not a file")
    url = make_url(store_url)
    _refuse_unless_empty(store_url)
    if url.get_backend_name() == "sqlite":
        source = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
        try:
            if source.execute("PRAGMA quick_check").fetchone() != ("ok",):
                raise BackupError(f"{backup_file} is not a sound SQLite database")
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{backup_file} is not an SQLite backup: {exc}") from exc
        finally:
            source.close()
        target = _sqlite_path(url)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not target.exists():
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # the store is private
        _backup_sqlite(backup_file, target)
    elif url.get_backend_name() == "postgresql":
        _run(["pg_restore", "--no-owner", "--exit-on-error", "--single-transaction", f"--dbname={_libpq(url)}",
              str(backup_file)], url, f"cannot restore {backup_file}")  # fmt: skip
    else:
        raise BackupError(f"no restore for a {url.get_backend_name()} store")


def _backup_sqlite(source_path: Path, destination: Path) -> None:
    """Copy with SQLite's online backup API (https://sqlite.org/backup.html): consistent while
    other connections write, and the copy is a plain database file (no WAL beside it)."""
    if not source_path.is_file():
        raise BackupError(f"there is no store at {source_path}")
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(destination)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {source_path}: {exc}") from exc
    finally:
        source.close()
        target.close()


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory store has nothing to back up or restore into")
    return Path(url.database)


def _refuse_unless_empty(store_url: str) -> None:
    url = make_url(store_url)
    if url.get_backend_name() == "sqlite" and not _sqlite_path(url).exists():
        return
    engine = create_engine(store_url)
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise BackupError(f"the store at {url.render_as_string()} is not empty; restore into a new, empty store")


def _libpq(url: URL) -> str:
    """The store's address as libpq takes it, without its password (passed in the environment,
    so that it never shows in the process list)."""
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)


def _run(command: list[str], url: URL, failure: str, out: IO[bytes] | None = None) -> None:
    if shutil.which(command[0]) is None:
        raise BackupError(f"{command[0]} is not installed; install the PostgreSQL client (Debian: postgresql-client)")
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    done = subprocess.run(command, env=env, stdout=out or subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise BackupError(f"{failure}: {done.stderr.decode(errors='replace').strip()}")
