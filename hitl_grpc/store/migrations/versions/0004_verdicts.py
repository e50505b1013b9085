"""fenced review leases and per-action verdicts

Each decision keeps the id of the lease under which it is reviewed and that lease's
fencing epoch (grows by one on every claim, never reset), and its per-action verdicts
(approvers, rejection, the action's hash) as JSON. Rows from before keep NULL verdicts,
which read as every recommended action still pending.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both backends: no table rebuild, so SQLite keeps every index and
    # the decisions table is never copied.
    op.add_column("decisions", sa.Column("lease_id", sa.String(36)))
    op.add_column(
        "decisions",
        sa.Column("lease_epoch", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )
    op.add_column("decisions", sa.Column("action_verdicts", sa.JSON))


def downgrade() -> None:
    op.drop_column("decisions", "action_verdicts")
    op.drop_column("decisions", "lease_epoch")
    op.drop_column("decisions", "lease_id")
