"""The review queue pages through any number of pairs along an index.

`identity list` and `/admin/identity/links` read pairs best first, (points, a, b) descending,
a page at a time from where the last page stopped (keyset paging, app/store/links.py). Every
pair is read along `ix_link_order` (points, a, b); the pairs of one status along
`ix_link_status`, which gains (a, b) after (status, points) so that ties are in index order
too. Without them each page sorted every pair of the listing.

Safe to run again: an index that exists is left.

Revision ID: 0005
Revises: 0004
Created: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_link_order", "patient_link", ["points", "a", "b"], if_not_exists=True)
    op.drop_index("ix_link_status", "patient_link")
    op.create_index("ix_link_status", "patient_link", ["status", "points", "a", "b"])


def downgrade() -> None:
    op.drop_index("ix_link_status", "patient_link")
    op.create_index("ix_link_status", "patient_link", ["status", "points"])
    op.drop_index("ix_link_order", "patient_link")
