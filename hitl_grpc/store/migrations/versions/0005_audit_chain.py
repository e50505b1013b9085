"""the tamper-evident audit chain, and the request id on each audit row

Each audit row gets the id of the request that caused it, the digest of its content, its
seq in the chain, the previous row's hash and its own; audit_chain_heads holds each
chain's last seq and hash. Rows written before are linked here in id order (their request
id is ''), so `hitl-grpc audit verify` passes on an upgraded database. On PostgreSQL a
deferred trigger links every new row at COMMIT (see hitl_grpc/store/audit_chain.py).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from hitl_grpc.store.audit_chain import CHAIN, GENESIS, content_digest, link_hash

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The event log's append lock (store/events.py APPEND_LOCK_KEY) first, so every
# committing writer takes its locks in one order; then the chain head, whose row lock is
# released only once this commit is visible. The hash is link_hash() in SQL.
_LINK_FUNCTION = """
CREATE FUNCTION hitl_link_audit_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    head_hash text;
    linked text;
BEGIN
    PERFORM pg_advisory_xact_lock(1751741548);
    SELECT seq, hash INTO head_seq, head_hash FROM audit_chain_heads
        WHERE chain = NEW.chain FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO audit_chain_heads (chain, seq, hash)
            VALUES (NEW.chain, 0, repeat('0', 64)) ON CONFLICT (chain) DO NOTHING;
        SELECT seq, hash INTO head_seq, head_hash FROM audit_chain_heads
            WHERE chain = NEW.chain FOR UPDATE;
    END IF;
    linked := encode(sha256(convert_to(
        NEW.chain || E'\\n' || (head_seq + 1)::text || E'\\n' || head_hash || E'\\n' || NEW.digest,
        'UTF8')), 'hex');
    UPDATE audit_events SET seq = head_seq + 1, prev_hash = head_hash, hash = linked
        WHERE id = NEW.id;
    UPDATE audit_chain_heads SET seq = head_seq + 1, hash = linked WHERE chain = NEW.chain;
    RETURN NULL;
END
$$
"""

_ROWS = sa.table(
    "audit_events",
    sa.column("id", sa.BigInteger()),
    sa.column("time", sa.DateTime(timezone=True)),
    sa.column("actor", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("target", sa.String()),
    sa.column("peer", sa.String()),
    sa.column("outcome", sa.SmallInteger()),
    sa.column("details", sa.JSON()),
    sa.column("request_id", sa.String()),
    sa.column("chain", sa.String()),
    sa.column("seq", sa.BigInteger()),
    sa.column("digest", sa.String()),
    sa.column("prev_hash", sa.String()),
    sa.column("hash", sa.String()),
)
_HEADS = sa.table(
    "audit_chain_heads",
    sa.column("chain", sa.String()),
    sa.column("seq", sa.BigInteger()),
    sa.column("hash", sa.String()),
)
_BATCH = 1000


def _backfill() -> tuple[int, str]:
    bind = op.get_bind()
    seq, prev, after = 0, GENESIS, 0
    while True:
        page = bind.execute(
            sa.select(_ROWS).where(_ROWS.c.id > after).order_by(_ROWS.c.id).limit(_BATCH)
        ).all()
        updates = []
        for row in page:
            digest = content_digest({str(k): v for k, v in row._mapping.items()})
            seq += 1
            linked = link_hash(CHAIN, seq, prev, digest)
            updates.append(
                {"b_id": row.id, "seq": seq, "digest": digest, "prev_hash": prev, "hash": linked}
            )
            prev = linked
        if updates:
            bind.execute(
                sa.update(_ROWS)
                .where(_ROWS.c.id == sa.bindparam("b_id"))
                .values(
                    chain=CHAIN,
                    seq=sa.bindparam("seq"),
                    digest=sa.bindparam("digest"),
                    prev_hash=sa.bindparam("prev_hash"),
                    hash=sa.bindparam("hash"),
                ),
                updates,
            )
        if len(page) < _BATCH:
            return seq, prev
        after = page[-1].id


def upgrade() -> None:
    # Plain ALTER TABLE (SQLite >= 3.35), not a batch copy: rebuilding audit_events would
    # reset its AUTOINCREMENT high-water mark.
    columns = (
        sa.Column("request_id", sa.String(length=128), nullable=False, server_default=""),
        sa.Column("chain", sa.String(length=32), nullable=False, server_default=CHAIN),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
    )
    for column in columns:
        op.add_column("audit_events", column)
    op.create_table(
        "audit_chain_heads",
        sa.Column("chain", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_chain_heads")),
    )
    seq, last = _backfill()
    op.get_bind().execute(sa.insert(_HEADS).values(chain=CHAIN, seq=seq, hash=last))
    op.create_index("ix_audit_events_chain_seq", "audit_events", ["chain", "seq"], unique=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_LINK_FUNCTION)
        op.execute(
            "CREATE CONSTRAINT TRIGGER audit_events_link_at_commit"
            " AFTER INSERT ON audit_events"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
            " EXECUTE FUNCTION hitl_link_audit_event()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_link_at_commit ON audit_events")
        op.execute("DROP FUNCTION hitl_link_audit_event()")
    op.drop_index("ix_audit_events_chain_seq", table_name="audit_events")
    op.drop_table("audit_chain_heads")
    for name in ("hash", "prev_hash", "digest", "seq", "chain", "request_id"):
        op.drop_column("audit_events", name)
