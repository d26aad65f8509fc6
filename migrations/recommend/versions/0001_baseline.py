"""Baseline: the recommender's store as the first releases made it (events, items with their texts, leases).

Databases made before migrations existed already hold these tables (created by ``create_all``): they are kept as
they are, rows included; the oldest ones lack the items' ``text`` column, which is added.

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
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    if "interactions" not in existing:
        op.create_table(
            "interactions",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("user_id", sa.String(128), nullable=False, index=True),
            sa.Column("item_id", sa.String(128), nullable=False, index=True),
            sa.Column("event", sa.String(16), nullable=False),
            sa.Column("weight", sa.Float, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
        )
    if "items" not in existing:
        op.create_table(
            "items",
            sa.Column("item_id", sa.String(128), primary_key=True),
            sa.Column("title", sa.String(500), nullable=False, server_default=""),
            sa.Column("text", sa.Text, nullable=False, server_default=""),
            sa.Column("created_at", sa.Float, nullable=False, index=True),
        )
    elif "text" not in {c["name"] for c in inspector.get_columns("items")}:
        op.add_column("items", sa.Column("text", sa.Text, nullable=False, server_default=""))
    if "leases" not in existing:
        op.create_table(
            "leases",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("holder", sa.String(64), nullable=False),
            sa.Column("until", sa.Float, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("items")
    op.drop_table("interactions")
