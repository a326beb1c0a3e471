"""History lists deletions, and type and system history read along indexes.

A deletion is now a version of its own in `resource_version` (empty content), so history shows
it and a vread of it answers 410 (FHIR R4 http 3.1.0.12). Stores of earlier revisions kept a
deletion only in `tombstone`: each tombstone without its version gets one, at the time of the
deletion. Type history reads `resource_version` newest first by (rtype, last_updated, id,
version), system history by (last_updated, rtype, id, version): one index each.

Both steps are safe to run again: an index that exists is left, a deletion with its version too.

Revision ID: 0002
Revises: 0001
Created: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_version_type_time", "resource_version", ["rtype", "last_updated", "id", "version"], if_not_exists=True
    )
    op.create_index(
        "ix_version_time", "resource_version", ["last_updated", "rtype", "id", "version"], if_not_exists=True
    )
    op.execute(
        sa.text(
            "INSERT INTO resource_version (rtype, id, version, last_updated, content) "
            "SELECT t.rtype, t.id, t.version, t.deleted, :deletion FROM tombstone t WHERE NOT EXISTS "
            "(SELECT 1 FROM resource_version v WHERE v.rtype = t.rtype AND v.id = t.id AND v.version = t.version)"
        ).bindparams(sa.bindparam("deletion", b"", type_=sa.LargeBinary()))
    )


def downgrade() -> None:
    op.execute(
        sa.text("DELETE FROM resource_version WHERE content = :deletion").bindparams(
            sa.bindparam("deletion", b"", type_=sa.LargeBinary())
        )
    )
    op.drop_index("ix_version_time", "resource_version")
    op.drop_index("ix_version_type_time", "resource_version")
