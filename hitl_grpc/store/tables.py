"""The schema, as SQLAlchemy Core tables; alembic migrations create it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)

# SQLite only gives AUTOINCREMENT (no rowid reuse) to an INTEGER PRIMARY KEY.
BIGID = BigInteger().with_variant(Integer(), "sqlite")
TIME = DateTime(timezone=True)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("username", String(150), nullable=False),
    # NFKC + casefold: the unique key that makes "Admin" and its full-width form one user.
    Column("username_key", String(150), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", SmallInteger, nullable=False),
    Column("email", String(320), nullable=False, server_default=""),
    Column("full_name", String(300), nullable=False, server_default=""),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("mfa_enabled", Boolean, nullable=False, server_default=text("false")),
    Column("mfa_secret", String(64)),
    Column("mfa_pending_secret", String(64)),
    # The last TOTP time step accepted: a code can't be replayed within its window.
    Column("mfa_last_step", BigInteger),
    # Bumped on every change that must cut live sessions (deactivation, role, password).
    Column("generation", Integer, nullable=False, server_default=text("0")),
    Column("created_at", TIME, nullable=False),
    Column("updated_at", TIME, nullable=False),
    # A SERVICE account bound to a client certificate's subject signs in by presenting it.
    Column("certificate_subject", String(512)),
    Index("ix_users_certificate_subject", "certificate_subject", unique=True),
)

mfa_backup_codes = Table(
    "mfa_backup_codes",
    metadata,
    Column("id", BIGID, primary_key=True, autoincrement=True),
    Column("user_id", String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("code_hash", String(255), nullable=False),
    Column("used_at", TIME),
    Index("ix_mfa_backup_codes_user_id", "user_id"),
    sqlite_autoincrement=True,
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # Every token rotated from one login shares a family; reuse revokes the family.
    Column("family_id", String(36), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("issued_at", TIME, nullable=False),
    Column("expires_at", TIME, nullable=False),
    Column("rotated_at", TIME),
    Column("revoked_at", TIME),
    Index("ix_refresh_tokens_family_id", "family_id"),
    Index("ix_refresh_tokens_user_id", "user_id"),
)

login_throttle = Table(
    "login_throttle",
    metadata,
    # "user:<username_key>" or "peer:<address>": counters hold across replicas and restarts.
    Column("subject", String(400), primary_key=True),
    Column("failures", Integer, nullable=False, server_default=text("0")),
    Column("window_started_at", TIME, nullable=False),
    Column("locked_until", TIME),
    Column("lockouts", Integer, nullable=False, server_default=text("0")),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BIGID, primary_key=True, autoincrement=True),
    Column("time", TIME, nullable=False),
    Column("actor", String(150), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    Column("peer", String(128), nullable=False),
    Column("outcome", SmallInteger, nullable=False),
    Column("details", JSON, nullable=False),
    # The x-request-id of the call that caused the row ('' for none; "sweep-..." for a sweep).
    Column("request_id", String(128), nullable=False, server_default=""),
    # The tamper-evident chain (store/audit_chain.py): the row's place, its content's
    # digest, the previous row's hash and its own. seq and the hashes are given at COMMIT.
    Column("chain", String(32), nullable=False, server_default="audit"),
    Column("seq", BigInteger),
    Column("digest", String(64), nullable=False, server_default=""),
    Column("prev_hash", String(64)),
    Column("hash", String(64)),
    Index("ix_audit_events_time", "time"),
    Index("ix_audit_events_actor_id", "actor", "id"),
    Index("ix_audit_events_kind_id", "kind", "id"),
    Index("ix_audit_events_target_id", "target", "id"),
    Index("ix_audit_events_chain_seq", "chain", "seq", unique=True),
    sqlite_autoincrement=True,
)

# One row per chain: its last seq and hash, so rows cut from the end are noticed too.
audit_chain_heads = Table(
    "audit_chain_heads",
    metadata,
    Column("chain", String(32), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

decisions = Table(
    "decisions",
    metadata,
    Column("analysis_id", String(128), primary_key=True),
    Column("incident_id", String(128), nullable=False),
    Column("threat_level", String(64), nullable=False),
    Column("source_ip", String(64), nullable=False),
    Column("attributed_actor", Text, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("iocs", JSON, nullable=False),
    Column("ttps", JSON, nullable=False),
    Column("recommended_actions", JSON, nullable=False),
    Column("forensic_summary", Text, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("detected_at", TIME, nullable=False),
    Column("expires_at", TIME),
    # SHA-256 of the canonical payload: resubmits compare in one column.
    Column("payload_hash", String(64), nullable=False),
    Column("submitted_by", String(150), nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("updated_at", TIME, nullable=False),
    Column("sla_deadline", TIME, nullable=False),
    Column("sla_breached", Boolean, nullable=False, server_default=text("false")),
    Column("claimed_by", String(150)),
    Column("claim_expires_at", TIME),
    Column("resolution_status", SmallInteger),
    Column("approved_actions", JSON),
    Column("notes", Text),
    Column("escalation_reason", Text),
    Column("decided_by", String(150)),
    Column("decided_at", TIME),
    # The review lease's id while held, and its fencing epoch (grows on every claim).
    Column("lease_id", String(36)),
    Column("lease_epoch", BigInteger, nullable=False, server_default=text("0")),
    # The per-action verdicts (values.ActionVerdict) as JSON; NULL on rows from before them.
    Column("action_verdicts", JSON),
    # The queue order, open items only (statuses PENDING, IN_REVIEW, ESCALATED).
    Index(
        "ix_decisions_queue",
        "priority",
        "created_at",
        "analysis_id",
        postgresql_where=text("status IN (1, 2, 5)"),
        sqlite_where=text("status IN (1, 2, 5)"),
    ),
    # The sweeper's work lists.
    Index(
        "ix_decisions_open_sla",
        "sla_deadline",
        postgresql_where=text("status IN (1, 2)"),
        sqlite_where=text("status IN (1, 2)"),
    ),
    Index(
        "ix_decisions_open_expiry",
        "expires_at",
        postgresql_where=text("status IN (1, 2, 5) AND expires_at IS NOT NULL"),
        sqlite_where=text("status IN (1, 2, 5) AND expires_at IS NOT NULL"),
    ),
    Index("ix_decisions_created_at", "created_at"),
    Index("ix_decisions_decided_at", "decided_at"),
)


def _event_columns() -> list[Column[Any]]:
    """What an event records; the log and the staging table share it."""
    return [
        Column("analysis_id", String(128), nullable=False),
        # "added", "updated" or "removed" relative to the open set.
        Column("kind", String(16), nullable=False),
        Column("status", SmallInteger, nullable=False),
        Column("priority", SmallInteger, nullable=False),
        Column("version", BigInteger, nullable=False),
        Column("time", TIME, nullable=False),
        # The decision as it was after the change, so watchers need no second read.
        Column("payload", JSON, nullable=False),
        # About how many bytes the payload takes (store/events.py), written once with it:
        # what a watcher's queue and a byte-bounded read count without decoding it.
        Column("size", Integer, nullable=False),
    ]


# The transactional outbox: one row per decision change, written in the change's transaction.
decision_events = Table(
    "decision_events",
    metadata,
    # Handed out under the append lock (store/events.py), so positions become visible in
    # order: a reader resumes after the last position it saw.
    Column("position", BIGID, primary_key=True, autoincrement=True),
    *_event_columns(),
    Index("ix_decision_events_time", "time"),
    Index("ix_decision_events_analysis_id", "analysis_id", "position"),
    sqlite_autoincrement=True,
)

# PostgreSQL only: a transaction's events wait here until its COMMIT, when a deferred
# trigger takes the append lock and moves them into decision_events (store/events.py).
decision_events_staged = Table(
    "decision_events_staged",
    metadata,
    Column("id", BIGID, primary_key=True, autoincrement=True),
    *_event_columns(),
)

# One row (id 1): the last position pruned from decision_events. A resume cursor below it
# may have lost events in between, so it is answered with OUT_OF_RANGE.
decision_event_horizon = Table(
    "decision_event_horizon",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("position", BigInteger, nullable=False),
)


# Outgoing webhooks (store/webhooks.py): one row per notification and receiver URL.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BIGID, primary_key=True, autoincrement=True),
    # Sent as Idempotency-Key: the same on every attempt, so a receiver can drop repeats.
    Column("idempotency_key", String(64), nullable=False),
    Column("url", String(2048), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("body", Text, nullable=False),
    # DeliveryState: pending, delivered, dead (gave up after the last attempt).
    Column("state", SmallInteger, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", TIME, nullable=False),
    # A replica sending it holds it until then; past it another may take it over.
    Column("lease_until", TIME),
    Column("claim_token", String(36)),
    Column("last_error", String(500), nullable=False, server_default=""),
    Column("created_at", TIME, nullable=False),
    Column("delivered_at", TIME),
    Index("ix_webhook_deliveries_idempotency_key_url", "idempotency_key", "url", unique=True),
    Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    sqlite_autoincrement=True,
)
