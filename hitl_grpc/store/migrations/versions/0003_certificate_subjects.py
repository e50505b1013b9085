"""service accounts bound to client-certificate subjects

A SERVICE account may name the subject of the client certificate it signs in with; the
unique index keeps one account per subject. NULL (no binding) is allowed many times.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("certificate_subject", sa.String(length=512), nullable=True))
    op.create_index("ix_users_certificate_subject", "users", ["certificate_subject"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_users_certificate_subject", table_name="users")
    op.drop_column("users", "certificate_subject")
