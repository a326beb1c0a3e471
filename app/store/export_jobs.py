"""Bulk Data export jobs in the store (table `export_job`), shared by every API node.

A job is run by one node at a time: a node claims a queued job, or one whose claim ran out (its
node died), with one conditional UPDATE, and renews its claim while it writes; a claim it can no
longer renew (the job was cancelled, or another node took it after the lease ran out) tells it to
stop. The same statements work on SQLite and PostgreSQL, so no advisory lock is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
_COLUMNS = (
    "id, owner, status, request, params, created, transaction_time, node, lease_until, progress, manifest, "
    "error, finished, expires"
)


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    status: str
    request: str
    params: bytes
    created: int
    transaction_time: int | None
    node: str | None
    lease_until: int | None
    progress: str | None
    manifest: bytes | None
    error: str | None
    finished: int | None
    expires: int | None


def _job(row: tuple) -> Job:
    values = list(row)
    values[4] = bytes(values[4])
    values[10] = bytes(values[10]) if values[10] is not None else None
    return Job(*values)


def create(engine: Engine, job_id: str, owner: str, request: str, params: bytes, now: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO export_job (id, owner, status, request, params, created) "
                "VALUES (:id, :owner, :status, :request, :params, :now)"
            ),
            {"id": job_id, "owner": owner, "status": QUEUED, "request": request, "params": params, "now": now},
        )


def get(engine: Engine, job_id: str) -> Job | None:
    with engine.connect() as conn:
        row = conn.execute(text(f"SELECT {_COLUMNS} FROM export_job WHERE id = :id"), {"id": job_id}).first()
    return _job(tuple(row)) if row is not None else None


def active(engine: Engine, owner: str) -> int:
    """How many jobs of this client are queued or running."""
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT COUNT(*) FROM export_job WHERE owner = :owner AND status IN (:q, :r)"),
            {"owner": owner, "q": QUEUED, "r": RUNNING},
        ).scalar_one()


def any_jobs(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT 1 FROM export_job LIMIT 1")).first() is not None


def claim(engine: Engine, node: str, now: int, lease_micros: int) -> Job | None:
    """The oldest job nobody runs (queued, or running under a claim that ran out), claimed by
    `node` until `now + lease_micros`, its transaction time set to `now`; None if there is none."""
    with engine.connect() as conn:
        candidates = conn.execute(
            text(
                "SELECT id FROM export_job WHERE status = :q OR (status = :r AND lease_until < :now) "
                "ORDER BY created LIMIT 5"
            ),
            {"q": QUEUED, "r": RUNNING, "now": now},
        ).all()
    for (job_id,) in candidates:
        with engine.begin() as conn:
            taken = conn.execute(
                text(
                    "UPDATE export_job SET status = :r, node = :node, lease_until = :until, transaction_time = :now, "
                    "progress = NULL WHERE id = :id AND (status = :q OR (status = :r AND lease_until < :now))"
                ),
                {"r": RUNNING, "q": QUEUED, "node": node, "until": now + lease_micros, "now": now, "id": job_id},
            ).rowcount
        if taken == 1:
            return get(engine, job_id)
    return None


def renew(engine: Engine, job_id: str, node: str, until: int, progress: str) -> bool:
    """Extend `node`'s claim and note its progress; False when the claim is lost (cancelled, or
    taken by another node after it ran out): the node must stop."""
    with engine.begin() as conn:
        return (
            conn.execute(
                text(
                    "UPDATE export_job SET lease_until = :until, progress = :progress "
                    "WHERE id = :id AND node = :node AND status = :r"
                ),
                {"until": until, "progress": progress, "id": job_id, "node": node, "r": RUNNING},
            ).rowcount
            == 1
        )


def finish(
    engine: Engine,
    job_id: str,
    node: str,
    status: str,
    now: int,
    expires: int,
    manifest: bytes | None,
    error: str | None,
) -> bool:
    """Record the end of `node`'s run (DONE with its manifest, or FAILED with why); False when
    the claim was lost meanwhile (the job's files are then not its to keep)."""
    with engine.begin() as conn:
        return (
            conn.execute(
                text(
                    "UPDATE export_job SET status = :status, finished = :now, expires = :expires, "
                    "manifest = :manifest, error = :error, lease_until = NULL "
                    "WHERE id = :id AND node = :node AND status = :r"
                ),
                {
                    "status": status,
                    "now": now,
                    "expires": expires,
                    "manifest": manifest,
                    "error": error,
                    "id": job_id,
                    "node": node,
                    "r": RUNNING,
                },
            ).rowcount
            == 1
        )


def cancel(engine: Engine, job_id: str, now: int) -> bool:
    """Cancel a job (Bulk Data Delete Request): its node stops at its next renewal, its files go
    at once; False if it was cancelled already."""
    with engine.begin() as conn:
        return (
            conn.execute(
                text(
                    "UPDATE export_job SET status = :c, expires = :now, lease_until = NULL "
                    "WHERE id = :id AND status <> :c"
                ),
                {"c": CANCELLED, "now": now, "id": job_id},
            ).rowcount
            == 1
        )


def expired(engine: Engine, now: int) -> list[str]:
    """Jobs whose files are due to go: finished, failed or cancelled, past their expiry."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id FROM export_job WHERE expires IS NOT NULL AND expires <= :now AND status <> :r"),
            {"now": now, "r": RUNNING},
        ).all()
    return [row[0] for row in rows]


def remove(engine: Engine, job_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM export_job WHERE id = :id"), {"id": job_id})
