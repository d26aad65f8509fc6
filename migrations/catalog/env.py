"""Alembic environment: migrations run on the connection the service hands over (deployments/sql.py:migrate),
or on ``sqlalchemy.url`` / ``$CONTENT_STUDIO_DATABASE_URL`` when run by hand."""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

config = context.config
version_table = config.get_main_option("version_table")


def run(connection: sa.engine.Connection) -> None:
    context.configure(connection=connection, target_metadata=None, version_table=version_table)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = config.get_main_option("sqlalchemy.url") or os.environ["CONTENT_STUDIO_DATABASE_URL"]
    with sa.create_engine(url).connect() as own:
        run(own)
        own.commit()
