"""Topic-based Subscriptions: the tables `subscription`, `study_change` and `subscription_event`
(app/store/tables.py SubscriptionRow, StudyChange, SubscriptionEvent).

A store of an earlier revision has no subscriptions; the tables start empty. Safe to run again:
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
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


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
            sa.Column("content", sa.String(16), nullable=False),
            sa.Column("filters", sa.LargeBinary(), nullable=False),
            sa.Column("delivered", sa.BigInteger(), nullable=False),
            sa.Column("node", sa.Text(), nullable=True),
            sa.Column("lease_until", sa.BigInteger(), nullable=True),
            sa.Column("failures", sa.BigInteger(), nullable=False),
            sa.Column("next_try", sa.BigInteger(), nullable=False),
            sa.Column("last_sent", sa.BigInteger(), nullable=False),
            sa.Column("heartbeat", sa.BigInteger(), nullable=True),
            sa.Column("may_read", sa.BigInteger(), nullable=False),
        )
    op.create_index("ix_subscription_owner", "subscription", ["owner", "id"], if_not_exists=True)
    if not sa.inspect(op.get_bind()).has_table("study_change"):
        op.create_table(
            "study_change",
            sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
            sa.Column("recorded", sa.BigInteger(), nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("study", _ID, nullable=False),
            sa.Column("keys", sa.LargeBinary(), nullable=False),
        )
    if not sa.inspect(op.get_bind()).has_table("subscription_event"):
        op.create_table(
            "subscription_event",
            sa.Column("subscription", _ID, primary_key=True),
            sa.Column("number", sa.BigInteger(), primary_key=True, autoincrement=False),
            sa.Column("recorded", sa.BigInteger(), nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("study", _ID, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("subscription_event")
    op.drop_table("study_change")
    op.drop_index("ix_subscription_owner", "subscription")
    op.drop_table("subscription")
