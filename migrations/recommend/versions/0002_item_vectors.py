"""Items carry their content vector, computed once when they are registered (so no replica refits over the whole
catalogue), as little-endian float16 bytes; older rows keep NULL and are vectorised from their text when read.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("vector", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("vector")
