"""Stored responses of the Responses API (``store: true``): the answer, and the conversation it continues.

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
    op.create_table(
        "responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("conversation", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("responses")
