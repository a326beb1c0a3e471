"""The store's schema version, kept by Alembic (app/store/migrations).

A release may change tables; a store made by an earlier release must then be migrated before the
new code touches it, and a store made by a later release must not be touched at all. So every
command that opens a store checks its version first and refuses one that is behind or ahead,
naming what to run; only `imaging-facade db upgrade` moves it. A new, empty store is made at the
newest version at once (the models' `create_all`, then stamped, as Alembic's cookbook does it);
a test keeps the models and the migrations equal.

The first release made its stores with `create_all` and no version. Such a store has the
baseline's tables and no `alembic_version`; `db upgrade` stamps it with the baseline first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from app.store import tables  # noqa: F401 - registers every table with SQLModel.metadata

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"
#: the command that moves a store to this release's schema
UPGRADE = "imaging-facade db upgrade"
#: any fixed number: every process that creates or migrates a PostgreSQL store takes this lock first
_LOCK = 0x1F4A5E


class SchemaMismatch(Exception):
    """The store's schema is not the one this release reads and writes; `upgradable` when
    `imaging-facade db upgrade` is the way out."""

    def __init__(self, problem: str, upgradable: bool):
        self.problem = problem
        self.upgradable = upgradable
        super().__init__(self.advice())

    def advice(self, config_path: str | None = None) -> str:
        """The problem and what to run (with the config option when the command line knows it)."""
        if not self.upgradable:
            return self.problem
        option = f" --config {config_path}" if config_path else ""
        return f"{self.problem}; run `{UPGRADE}{option}` first"


@dataclass(frozen=True)
class Version:
    """Where a store stands: `revision` None with `tables` False is an empty database; None with
    `tables` True is a store of the first release (no version kept)."""

    revision: str | None
    tables: bool

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.tables


def alembic_config(conn: Connection | None = None) -> Config:
    """Alembic's configuration for these migrations, running on `conn`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


@cache
def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision this release knows."""
    revision = scripts().get_current_head()
    assert revision is not None  # the baseline at least
    return revision


def known(revision: str) -> bool:
    return revision in {script.revision for script in scripts().walk_revisions()}


def version_of(conn: Connection) -> Version:
    names = set(inspect(conn).get_table_names())
    revision = MigrationContext.configure(conn).get_current_revision() if "alembic_version" in names else None
    return Version(revision, bool(names - {"alembic_version"}))


def describe(version: Version) -> str:
    if version.empty:
        return "empty (no tables yet)"
    if version.revision is None:
        return "made by the first release (no schema version)"
    if version.revision == head():
        return f"revision {version.revision} (the newest this release knows)"
    if known(version.revision):
        return f"revision {version.revision}, behind this release's {head()}"
    return f"revision {version.revision}, unknown to this release (newest it knows: {head()}): made by a later release"


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A transaction that no other process creating or migrating this store runs beside, and in
    which tables and their version are written together (DDL is transactional on both databases)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK})")
        else:
            # pysqlite opens no transaction before DDL; an IMMEDIATE one takes the write lock now
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


def _create(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn)
    command.stamp(alembic_config(conn), head())


def check(engine: Engine) -> None:
    """Make an empty store at the newest revision; refuse one that is behind or ahead (SchemaMismatch)."""
    with engine.connect() as conn:
        version = version_of(conn)
    if version.empty:
        _create_if_empty(engine)
        with engine.connect() as conn:
            version = version_of(conn)
    if version.revision != head():
        raise _refusal(version)


def _create_if_empty(engine: Engine) -> None:
    with _locked(engine) as conn:
        if version_of(conn).empty:  # no other process made it while this one waited
            _create(conn)


def _refusal(version: Version) -> SchemaMismatch:
    if version.revision is not None and not known(version.revision):
        return SchemaMismatch(
            f"the store's schema is {describe(version)}; run the release that made it, "
            "or restore the backup taken before that upgrade",
            upgradable=False,
        )
    return SchemaMismatch(f"the store's schema is {describe(version)}", upgradable=True)


def upgrade(engine: Engine) -> tuple[Version, Version]:
    """Move the store to the newest revision (an empty one is made there); the versions before and after."""
    with _locked(engine) as conn:
        before = version_of(conn)
        if before.empty:
            _create(conn)
        elif before.revision is None:
            missing = set(_baseline_tables()) - set(inspect(conn).get_table_names())
            if missing:
                raise SchemaMismatch(
                    f"the database has tables but no schema version, and lacks {', '.join(sorted(missing))}: "
                    "it is not a store of this server",
                    upgradable=False,
                )
            command.stamp(alembic_config(conn), BASELINE)
        elif not known(before.revision):
            raise _refusal(before)
        command.upgrade(alembic_config(conn), "head")
        after = version_of(conn)
    return before, after


def migrate(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to `revision` on this database, from wherever it stands (tests: a
    store made by the migrations alone, or by an older revision)."""
    with _locked(engine) as conn:
        command.upgrade(alembic_config(conn), revision)


def history() -> list[tuple[str, str]]:
    """Every revision, oldest first, with the first line of its description."""
    revisions = list(scripts().walk_revisions())
    return [(r.revision, (r.doc or "").splitlines()[0] if r.doc else "") for r in reversed(revisions)]


def _baseline_tables() -> tuple[str, ...]:
    module = scripts().get_revision(BASELINE).module
    return tuple(module.TABLES)
