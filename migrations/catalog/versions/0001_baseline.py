"""Baseline: the catalog as the first releases made it (content records and the variants that made them).

Databases made before migrations existed already hold these tables (created by ``create_all``): they are kept as
they are, rows included, and only stamped.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "content" not in existing:
        op.create_table(
            "content",
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("created_at", sa.Float, nullable=False, index=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("user_id", sa.String(128), nullable=True, index=True),
            sa.Column("record", sa.JSON, nullable=False),
        )
    if "content_variants" not in existing:
        op.create_table(
            "content_variants",
            sa.Column("content_id", sa.String(40), primary_key=True),
            sa.Column("stage", sa.String(32), primary_key=True),
            sa.Column("experiment", sa.String(128), nullable=False, index=True),
            sa.Column("variant", sa.String(128), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("content_variants")
    op.drop_table("content")
