"""Topic-based Subscriptions: the `subscription` table (app/store/tables.py SubscriptionRow).

A store of an earlier revision has no subscriptions; the table starts empty. Safe to run again:
a table or index that exists is left.

Revision ID: 0006
Revises: 0005
Created: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("subscription"):
        op.create_table(
            "subscription",
            sa.Column("id", _ID, primary_key=True),
            sa.Column("owner", sa.Text(), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("topic", sa.Text(), nullable=False),
            sa.Column("endpoint", sa.Text(), nullable=False),
            sa.Column("resource", sa.LargeBinary(), nullable=False),
            sa.Column("created", sa.BigInteger(), nullable=False),
            sa.Column("events", sa.BigInteger(), nullable=False),
            sa.Column("error", sa.Text(), nullable=True),
        )
    op.create_index("ix_subscription_owner", "subscription", ["owner", "id"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_subscription_owner", "subscription")
    op.drop_table("subscription")
