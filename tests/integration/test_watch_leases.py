"""The source locks of watchers on one PostgreSQL store (app/store/leases.py), on a real server:
one holder at a time, handed on when the holder's session ends, however it ends."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text

from app.store.leases import AdvisoryLeases, holders, lock_key

pytestmark = pytest.mark.postgres


def _wait_for(check, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def engine(postgres_url):
    engine = create_engine(postgres_url)
    yield engine
    engine.dispose()


def test_one_holder_per_source_and_the_next_takes_over_when_it_closes(postgres_url, engine):
    first = AdvisoryLeases(postgres_url, ["pacs", "cd"])
    first.ready(5)
    second = AdvisoryLeases(postgres_url, ["pacs", "other"])
    second.ready(5)
    try:
        assert first.holds("pacs") and first.holds("cd") and not first.holds("other")
        assert not second.holds("pacs") and second.holds("other")
        named = holders(engine, ["pacs", "cd", "other", "unwatched"])
        assert named["pacs"] == named["cd"] and named["pacs"].startswith("imaging-facade watch ")
        assert named["other"] is not None and named["unwatched"] is None
        first.close()
        _wait_for(lambda: second.holds("pacs"), 3)  # the next round takes it
    finally:
        first.close()
        second.close()
    # a closed session's locks go when its server process has ended, a moment after the client left
    _wait_for(lambda: holders(engine, ["pacs", "other"]) == {"pacs": None, "other": None}, 10)


def test_a_holder_whose_session_is_ended_stops_trusting_its_lock(postgres_url, engine):
    """The server ended the lock session (a restart, an administrator, a timeout): the holder
    stops polling within its trust window, and another process gets the lock."""
    holder = AdvisoryLeases(postgres_url, ["pacs"])
    holder.ready(5)
    try:
        assert holder.holds("pacs")
        hi, lo = (lock_key("pacs") & 0xFFFF_FFFF_FFFF_FFFF) >> 32, lock_key("pacs") & 0xFFFF_FFFF
        with engine.connect() as conn:
            pid = conn.execute(
                text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = :hi AND objid = :lo"),
                {"hi": hi, "lo": lo},
            ).scalar_one()
        with engine.connect() as conn:
            with conn.begin():
                # a stranger takes the freed lock before the holder's next round
                assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
                _wait_for(
                    lambda: conn.execute(
                        text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key("pacs")}
                    ).scalar(),
                    5,
                )
                _wait_for(lambda: not holder.holds("pacs"), 5)  # its next ping fails: it stops trusting the lock
                time.sleep(2.5)  # rounds go on: the lock is the stranger's
                assert not holder.holds("pacs")
            _wait_for(lambda: holder.holds("pacs"), 5)  # the stranger let go: it is the holder's again
    finally:
        holder.close()
