"""Bulk Data export jobs: the `export_job` table (app/store/tables.py ExportJob).

A store of an earlier revision has no exports; the table starts empty. Safe to run again: a
table or index that exists is left.

Revision ID: 0003
Revises: 0002
Created: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("export_job"):
        op.create_table(
            "export_job",
            sa.Column("id", _ID, primary_key=True),
            sa.Column("owner", sa.Text(), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("request", sa.Text(), nullable=False),
            sa.Column("params", sa.LargeBinary(), nullable=False),
            sa.Column("created", sa.BigInteger(), nullable=False),
            sa.Column("transaction_time", sa.BigInteger(), nullable=True),
            sa.Column("node", sa.Text(), nullable=True),
            sa.Column("lease_until", sa.BigInteger(), nullable=True),
            sa.Column("progress", sa.Text(), nullable=True),
            sa.Column("manifest", sa.LargeBinary(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("finished", sa.BigInteger(), nullable=True),
            sa.Column("expires", sa.BigInteger(), nullable=True),
        )
    op.create_index("ix_export_status", "export_job", ["status", "lease_until"], if_not_exists=True)
    op.create_index("ix_export_owner", "export_job", ["owner", "status"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_export_owner", "export_job")
    op.drop_index("ix_export_status", "export_job")
    op.drop_table("export_job")
