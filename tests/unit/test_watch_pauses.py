"""How long a watcher waits after failed polls, and the lock keys that elect one watcher per source."""

from __future__ import annotations

import pytest

from app.store.leases import EveryLease, lock_key, open_leases
from app.sync.watch import FAILURE_PAUSE_MAX, failure_pause


@pytest.mark.parametrize("interval", [0.5, 1.0, 2.0])
def test_failure_pause_stays_short_however_long_the_archive_is_down(interval):
    pauses = [failure_pause(interval, n, rand=lambda: 1.0) for n in range(1, 50)]
    assert pauses[0] == interval  # the first retry comes after one interval
    assert pauses == sorted(pauses)  # then longer...
    assert max(pauses) == FAILURE_PAUSE_MAX  # ...up to a few seconds, not minutes
    assert failure_pause(interval, 100_000, rand=lambda: 1.0) == FAILURE_PAUSE_MAX  # down for days


def test_failure_pause_is_jittered_but_never_below_half():
    assert failure_pause(1.0, 10, rand=lambda: 0.0) == FAILURE_PAUSE_MAX / 2
    assert failure_pause(1.0, 10, rand=lambda: 0.5) == FAILURE_PAUSE_MAX * 0.75


def test_a_long_poll_interval_is_kept_after_a_failure():
    """A source polled every 10 minutes is not asked more often because it failed."""
    assert failure_pause(600.0, 5, rand=lambda: 1.0) == 600.0


def test_lock_keys_are_stable_distinct_bigints():
    keys = {lock_key(f"source-{i}") for i in range(10_000)}
    assert len(keys) == 10_000
    assert all(-(2**63) <= k < 2**63 for k in keys)
    assert lock_key("pacs") == lock_key("pacs") != lock_key("pacs2")


def test_an_sqlite_store_polls_every_source_in_its_one_process(tmp_path):
    leases = open_leases(f"sqlite:///{tmp_path / 'facade.db'}", ["pacs", "cd"])
    assert isinstance(leases, EveryLease) and leases.holds("pacs") and leases.holds("cd")
