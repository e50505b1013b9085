"""event positions in commit order: drop the writers' txids

Appends now take a transaction-scoped advisory lock before their position is drawn, so
positions become visible in order and the (txid, position) read order is gone.

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


def downgrade() -> None:
    op.add_column(
        "decision_event_horizon",
        sa.Column("txid", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column("decision_events", sa.Column("txid", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_decision_events_txid_position", "decision_events", ["txid", "position"], unique=False
    )
