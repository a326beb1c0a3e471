"""What mapping needs of a source, with the deployment's Patient id key in force.

Mapping makes Patient ids with the key (app/identity/keys.py) but may not reach the store that
keeps it; every path that maps studies into a store (a sync, a watch's polls, on-demand fetches,
the Celery workers of a distributed sync) asks here, so they all use the store's one key.
"""

from __future__ import annotations

from dataclasses import replace

from app.mapping.context import MappingContext
from app.sources.settings import SourceSettings
from app.store.repository import Store


def keyed_context(store: Store, src: SourceSettings) -> MappingContext:
    """`src.mapping_context()` with the Patient id key of `store` (KeyMismatch when the config's
    `identity.secret` is not the store's)."""
    ctx = src.mapping_context()
    return replace(ctx, identity=ctx.identity.with_key(store.patient_id_key(ctx.identity.secret)))
