"""The baseline: the schema of the first release, which made its stores with `create_all`.

A store made by the first release has this schema and no version; `imaging-facade db upgrade`
stamps it with this revision before it runs the later ones. The types are spelled out here, not
imported from app/store/tables.py: a migration is frozen as written, whatever the models become.

Revision ID: 0001
Revises:
Created: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: the tables this revision makes: a store without a version that has all of them is a first-release store
TABLES = (
    "audit_event",
    "audit_index",
    "idx_date",
    "idx_reference",
    "idx_string",
    "idx_token",
    "patient_block",
    "patient_contribution",
    "patient_fetch",
    "patient_link",
    "patient_match",
    "quarantine",
    "resource",
    "resource_version",
    "setting",
    "source_state",
    "study_copy",
    "sync_run",
    "tombstone",
)

# ids compare by code point on PostgreSQL whatever the database's collation; normalized strings
# compare without case on SQLite
ID_TEXT = sa.String(length=64).with_variant(sa.String(length=64, collation="C"), "postgresql")
REF_TEXT = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
NORM_TEXT = REF_TEXT.with_variant(sa.Text(collation="NOCASE"), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("id", ID_TEXT, nullable=False),
        sa.Column("recorded", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=2), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_recorded", "audit_event", ["recorded", "id"])

    op.create_table(
        "audit_index",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("event_id", ID_TEXT, nullable=False),
        sa.Column("param", sa.String(length=32), nullable=False),
        sa.Column("value", REF_TEXT, nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_audit_lookup", "audit_index", ["param", "value", "event_id"])

    op.create_table(
        "idx_date",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("rtype", sa.String(length=32), nullable=False),
        sa.Column("rid", ID_TEXT, nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("low", sa.BigInteger(), nullable=False),
        sa.Column("high", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_date_high", "idx_date", ["rtype", "param", "high", "low", "rid"])
    op.create_index("ix_date_lookup", "idx_date", ["rtype", "param", "low", "high", "rid"])
    op.create_index("ix_date_owner", "idx_date", ["rtype", "rid", "param"])

    op.create_table(
        "idx_reference",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("rtype", sa.String(length=32), nullable=False),
        sa.Column("rid", ID_TEXT, nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", REF_TEXT, nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_reference_lookup", "idx_reference", ["rtype", "param", "target_id", "target_type", "rid"])
    op.create_index("ix_reference_owner", "idx_reference", ["rtype", "rid", "param"])

    op.create_table(
        "idx_string",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("rtype", sa.String(length=32), nullable=False),
        sa.Column("rid", ID_TEXT, nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("norm", NORM_TEXT, nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_string_lookup", "idx_string", ["rtype", "param", "norm", "rid"])
    op.create_index("ix_string_owner", "idx_string", ["rtype", "rid", "param"])

    op.create_table(
        "idx_token",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("rtype", sa.String(length=32), nullable=False),
        sa.Column("rid", ID_TEXT, nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("code", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_token_lookup", "idx_token", ["rtype", "param", "code", "system", "rid"])
    op.create_index("ix_token_owner", "idx_token", ["rtype", "rid", "param", "code"])

    op.create_table(
        "patient_block",
        sa.Column("key", REF_TEXT, nullable=False),
        sa.Column("patient_id", ID_TEXT, nullable=False),
        sa.PrimaryKeyConstraint("key", "patient_id"),
    )
    op.create_index("ix_block_patient", "patient_block", ["patient_id"])

    op.create_table(
        "patient_contribution",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("rank", sa.Text(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("source", "study_uid"),
    )
    op.create_index("ix_contribution_patient", "patient_contribution", ["patient_id"])

    op.create_table(
        "patient_fetch",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=512), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("fetched", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", "system", "value"),
    )
    op.create_table(
        "patient_link",
        sa.Column("a", ID_TEXT, nullable=False),
        sa.Column("b", ID_TEXT, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("points", sa.Float(), nullable=False),
        sa.Column("explanation", sa.LargeBinary(), nullable=False),
        sa.Column("decided", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("a", "b"),
    )
    op.create_index("ix_link_b", "patient_link", ["b"])
    op.create_index("ix_link_status", "patient_link", ["status", "points"])

    op.create_table(
        "patient_match",
        sa.Column("patient_id", ID_TEXT, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id"),
    )
    op.create_table(
        "quarantine",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("first_seen", sa.BigInteger(), nullable=False),
        sa.Column("last_seen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", "key"),
    )
    op.create_table(
        "resource",
        sa.Column("rtype", sa.String(length=32), nullable=False),
        sa.Column("id", ID_TEXT, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.BigInteger(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("rtype", "id"),
    )
    op.create_index("ix_resource_last_updated", "resource", ["last_updated"])

    op.create_table(
        "resource_version",
        sa.Column("rtype", sa.String(length=32), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("rtype", "id", "version"),
    )
    op.create_table(
        "setting",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "source_state",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=False),
        sa.Column("last_full", sa.BigInteger(), nullable=True),
        sa.Column("last_success", sa.BigInteger(), nullable=True),
        sa.Column("last_attempt", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("source"),
    )
    op.create_table(
        "study_copy",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("archive_key", sa.String(length=128), nullable=True),
        sa.Column("last_seen", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("source", "study_uid"),
    )
    op.create_index("ix_copy_archive_key", "study_copy", ["source", "archive_key"])
    op.create_index("ix_copy_study", "study_copy", ["study_uid"])

    op.create_table(
        "sync_run",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("started", sa.BigInteger(), nullable=False),
        sa.Column("finished", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_sync_run_source", "sync_run", ["source"])

    op.create_table(
        "tombstone",
        sa.Column("rtype", sa.String(length=32), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("deleted", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("rtype", "id"),
    )

    if op.get_bind().dialect.name == "postgresql":
        # the planner's statistics on a parameter and its value together (app/store/tables.py)
        op.execute("CREATE STATISTICS st_idx_token_values (mcv, dependencies) ON param, code FROM idx_token")
        op.execute("CREATE STATISTICS st_idx_string_values (mcv, dependencies) ON param, norm FROM idx_string")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
