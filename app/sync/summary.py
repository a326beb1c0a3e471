"""What a sync or poll did, and what the source's state says of it afterwards (/health reads it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from app.clock import instant_now_ms
from app.store.repository import Store
from app.telemetry import count_run


@dataclass
class SyncSummary:
    source: str
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    repaired: int = 0
    released: int = 0  # quarantined by an earlier run, fine now
    deleted: int = 0  # studies gone from the archive
    incomplete: bool = False  # the archive capped its listing: deletions were not looked for
    seconds: float = 0.0
    error: str | None = None
    source_stats: dict = field(default_factory=dict)
    #: studies mapped and waiting for their batch to be stored; done, outcome not known yet
    pending: int = field(default=0, repr=False)

    def count(self, outcome: str) -> None:
        """Add one study with its store outcome (new, updated or unchanged)."""
        setattr(self, outcome, getattr(self, outcome) + 1)

    @property
    def done(self) -> int:
        return self.new + self.updated + self.unchanged + self.failed + self.pending

    @property
    def changed(self) -> int:
        return self.new + self.updated + self.deleted

    def as_dict(self) -> dict:
        out = asdict(self)
        del out["pending"]
        return out


def record_outcome(
    store: Store,
    source_name: str,
    summary: SyncSummary,
    full: bool = False,
    started: int | None = None,
    **state: Any,
) -> None:
    """Note in the source's state how a run went (what the health endpoint reports), and count
    it for the metrics."""
    count_run(source_name, summary.as_dict(), failed=bool(summary.error))
    now, _ = instant_now_ms()
    if summary.error:
        state.update(last_error=summary.error, last_error_at=now)
    else:
        state.update(last_success=now)
        if full:
            state.update(last_full=started)
    store.sync_state.update(source_name, **state)
