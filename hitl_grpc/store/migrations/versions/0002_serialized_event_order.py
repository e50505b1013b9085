"""event positions in commit order, and each event's size

Events are staged in their transaction and published at COMMIT by a deferred trigger
that takes a transaction-scoped advisory lock before their positions are drawn, so
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


_PUBLISH_FUNCTION = """
CREATE FUNCTION hitl_publish_staged_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1751741548);
    INSERT INTO decision_events (analysis_id, kind, status, priority, version, time, payload, size)
    VALUES (NEW.analysis_id, NEW.kind, NEW.status, NEW.priority, NEW.version, NEW.time,
            NEW.payload, NEW.size);
    DELETE FROM decision_events_staged WHERE id = NEW.id;
    PERFORM pg_notify('hitl_decision_events', '');
    RETURN NULL;
END
$$
"""


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

    op.create_table(
        "decision_events_staged",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("analysis_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decision_events_staged")),
    )
    if op.get_bind().dialect.name == "postgresql":
        # At COMMIT (deferred), under the append lock: each staged event gets its position
        # and moves to the log. The lock is held only inside the server's commit.
        op.execute(_PUBLISH_FUNCTION)
        op.execute(
            "CREATE CONSTRAINT TRIGGER decision_events_publish_at_commit"
            " AFTER INSERT ON decision_events_staged"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
            " EXECUTE FUNCTION hitl_publish_staged_event()"
        )


def downgrade() -> None:
    op.drop_table("decision_events_staged")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION hitl_publish_staged_event()")
    op.drop_column("decision_events", "size")
    op.add_column(
        "decision_event_horizon",
        sa.Column("txid", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column("decision_events", sa.Column("txid", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_decision_events_txid_position", "decision_events", ["txid", "position"], unique=False
    )
