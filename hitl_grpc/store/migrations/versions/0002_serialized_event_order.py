"""event positions in commit order, and each event's size

Appends now take a transaction-scoped advisory lock before their position is drawn, so
positions become visible in order and the (txid, position) read order is gone. Each
event records how many bytes its payload takes, so reads and watchers' queues can be
bounded in bytes without decoding payloads.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE (SQLite >= 3.35), not a batch copy: rebuilding decision_events
    # would reset its AUTOINCREMENT high-water mark, and positions must never repeat.
    op.drop_index("ix_decision_events_txid_position", table_name="decision_events")
    op.drop_column("decision_events", "txid")
    op.drop_column("decision_event_horizon", "txid")
    op.add_column(
        "decision_events",
        sa.Column("size", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    # Events written before: their stored JSON's length stands in for the estimate. The
    # default only filled them in (SQLite cannot drop a default without a table copy).
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE decision_events SET size = octet_length(payload::text)")
        op.alter_column("decision_events", "size", server_default=None)
    else:
        op.execute("UPDATE decision_events SET size = length(CAST(payload AS BLOB))")


def downgrade() -> None:
    op.drop_column("decision_events", "size")
    op.add_column(
        "decision_event_horizon",
        sa.Column("txid", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column("decision_events", sa.Column("txid", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_decision_events_txid_position", "decision_events", ["txid", "position"], unique=False
    )
