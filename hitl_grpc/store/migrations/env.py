"""Alembic environment: runs on the connection handed in by hitl_grpc.store.schema."""

from alembic import context

from hitl_grpc.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
