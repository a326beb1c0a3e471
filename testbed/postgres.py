"""PostgreSQL databases of their own for a test or a benchmark, created and dropped on the
server the suite uses (`FACADE_TEST_POSTGRES`, else the machine's `test` database)."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import create_engine, text

from testbed import services

ADMIN_URL = os.environ.get("FACADE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def create_database(prefix: str, admin_url: str = ADMIN_URL) -> str:
    """The URL of a new empty database named `prefix` and a random suffix."""
    services.require("PostgreSQL")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    """Drop the database at `url`, ending its sessions (PostgreSQL 13+: WITH (FORCE))."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


class PrivatePostgres:
    """A throw-away PostgreSQL server of its own (the machine's binaries, run as the `postgres`
    user), listening on `host` as well as loopback: for a client in another network namespace,
    which the machine's server does not accept. Needs root. Data in a temporary directory,
    removed on exit; `url` is its `postgres` database over `host`.

        with PrivatePostgres("10.213.1.1") as pg:
            Store(pg.url)
    """

    def __init__(self, host: str, user: str = "postgres"):
        self.host = host
        self.user = user
        self.port = 0
        self.datadir: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        import glob
        import shutil

        found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[::-1]), None)
        if found is None:
            raise RuntimeError(f"PostgreSQL's `{name}` is not installed (Debian package postgresql)")
        return found

    def _as_user(self, *argv: str) -> None:
        import subprocess

        subprocess.run(["runuser", "-u", self.user, "--", *argv], check=True, capture_output=True, timeout=120)

    def __enter__(self) -> PrivatePostgres:
        import shutil
        import socket
        import tempfile

        services.require("PostgreSQL")
        self.datadir = tempfile.mkdtemp(prefix="facade-pg-")
        shutil.chown(self.datadir, self.user, self.user)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        data = f"{self.datadir}/data"
        self._as_user(self._bin("initdb"), "-N", "-A", "trust", "-U", "postgres", "-D", data)
        with open(f"{data}/pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.host}/24 trust\n")
        options = (
            f"-c listen_addresses=127.0.0.1,{self.host} -p {self.port} -c unix_socket_directories={self.datadir} "
            "-c fsync=off -c full_page_writes=off"
        )
        self._as_user(self._bin("pg_ctl"), "-D", data, "-o", options, "-l", f"{self.datadir}/log", "-w", "start")
        return self

    def __exit__(self, *exc) -> None:
        import shutil

        if self.datadir is None:
            return
        try:
            self._as_user(self._bin("pg_ctl"), "-D", f"{self.datadir}/data", "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.datadir, ignore_errors=True)
            self.datadir = None
