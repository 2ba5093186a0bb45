"""Alembic environment of Urza's migrations (run through ``esper urza migrate``)."""

from alembic import context
from sqlalchemy import Connection, create_engine

from esper.urza.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("alembic needs sqlalchemy.url or a connection")
    with create_engine(url).connect() as fresh_connection:
        _run(fresh_connection)
        fresh_connection.commit()
