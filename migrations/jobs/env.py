"""Alembic environment of this store: the one all stores share (deployments/sql.py)."""

from deployments.sql import run_alembic_environment

run_alembic_environment()
