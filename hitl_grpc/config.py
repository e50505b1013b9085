"""Settings from HITL_* environment variables, validated once at start."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from hitl_grpc.domain.values import Priority

T = TypeVar("T")

DEFAULT_DATABASE_URL: Final = "sqlite:///hitl.db"
DEFAULT_LISTEN: Final = "127.0.0.1:50051"
MIN_SECRET_BYTES: Final = 32
# A page must hold one decision at every documented field limit (~1,000,000 bytes in
# 4-byte UTF-8), besides its token and framing (tests/test_decisions_paging.py).
MIN_MESSAGE_BYTES: Final = 1024 * 1024


class ConfigError(Exception):
    """A bad setting: names the variable and what is wrong with it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def _default_sla() -> dict[Priority, timedelta]:
    return {
        Priority.CRITICAL: timedelta(minutes=15),
        Priority.HIGH: timedelta(hours=1),
        Priority.MEDIUM: timedelta(hours=4),
        Priority.LOW: timedelta(hours=24),
    }


@dataclass(frozen=True)
class Settings:
    """Everything the server is built from; tests build their own."""

    database_url: str = DEFAULT_DATABASE_URL
    listen: str = DEFAULT_LISTEN
    jwt_secret: str | None = None
    jwt_secret_file: Path | None = None
    jwt_previous_secrets: tuple[str, ...] = ()
    jwt_issuer: str = "hitl-grpc"
    jwt_audience: str = "hitl-grpc"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    access_token_ttl: timedelta = timedelta(minutes=15)
    refresh_token_ttl: timedelta = timedelta(days=7)
    mfa_challenge_ttl: timedelta = timedelta(minutes=5)
    claim_lease: timedelta = timedelta(minutes=10)
    sla: Mapping[Priority, timedelta] = field(default_factory=_default_sla)
    bootstrap_admin_password: str | None = None
    metrics_listen: str | None = "127.0.0.1:9464"
    db_timeout_s: float = 5.0
    shutdown_grace_s: float = 10.0
    max_message_bytes: int = 2 * 1024 * 1024
    max_concurrent_streams: int = 2048
    heartbeat_s: float = 15.0
    event_retention: timedelta = timedelta(days=7)
    sweep_interval_s: float = 5.0
    # How often health re-checks the database (NOT_SERVING while it is down).
    db_check_interval_s: float = 2.0
    login_max_failures: int = 5
    login_window: timedelta = timedelta(minutes=15)
    # Per client address: higher, since many people may share one NAT or proxy address.
    login_max_failures_per_peer: int = 20
    # The first lockout; each further one doubles, up to a day.
    login_lockout: timedelta = timedelta(minutes=1)
    # A locked client address still lets in usernames that fully signed in from it this
    # recently; zero makes a peer lock refuse everyone behind that address.
    login_peer_trust: timedelta = timedelta(days=30)
    # How often an open stream re-checks its caller's access (at most heartbeat_s apart).
    stream_reauth_s: float = 5.0
    # Unauthenticated streams (health Watch, reflection) per client address and per process.
    public_streams_per_peer: int = 256
    public_streams_max: int = 2048
    # Invalid refresh tokens per client address (within login_window) before a lockout.
    refresh_max_failures_per_peer: int = 20
    refresh_lockout: timedelta = timedelta(minutes=1)
    password_memory_kib: int = 19_456
    password_time_cost: int = 2
    password_parallelism: int = 1
    watch_queue_size: int = 1024
    # The same bound in bytes of the events queued (a decision is up to ~250 KiB).
    watch_queue_bytes: int = 4 * 1024 * 1024
    # How much of the open set or the log one watcher reads and holds at a time.
    watch_page_bytes: int = 512 * 1024
    # How often the event reader reads the log without a wake-up (a lost NOTIFY).
    watch_catchup_s: float = 1.0
    log_level: str = "INFO"

    @property
    def is_sqlite(self) -> bool:
        """Whether the store is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, if that is the store."""
        if not self.is_sqlite:
            return None
        _, _, rest = self.database_url.partition(":///")
        return Path(rest.split("?", 1)[0]) if rest else None

    @property
    def stream_reauth_interval_s(self) -> float:
        """The re-check interval of open streams: never longer than the heartbeat."""
        return min(self.stream_reauth_s, self.heartbeat_s)

    @classmethod
    def for_tests(cls, database_url: str, **overrides: Any) -> Settings:
        """Settings for an in-process test server: ephemeral port, cheap hashes, no metrics."""
        base: dict[str, Any] = {
            "database_url": database_url,
            "listen": "127.0.0.1:0",
            "jwt_secret": "test-signing-key-" + "x" * 32,
            "metrics_listen": None,
            "bootstrap_admin_password": "bootstrap-password-for-tests",
            # Same algorithm, lower cost: tests create many users; bench/ uses the real cost.
            "password_memory_kib": 1024,
            "password_time_cost": 1,
            "shutdown_grace_s": 2.0,
            "db_timeout_s": 5.0,
        }
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from the environment; the first bad value raises ConfigError."""
        reader = _Reader(env)
        defaults = cls()
        sla = {
            p: reader.seconds(f"HITL_SLA_{p.name}_S", defaults.sla[p], minimum=1) for p in Priority
        }
        settings = cls(
            database_url=reader.get("HITL_DATABASE_URL", defaults.database_url, _database_url),
            listen=reader.get("HITL_LISTEN", defaults.listen, _listen),
            jwt_secret=reader.get("HITL_JWT_SECRET", None, _secret),
            jwt_secret_file=reader.get("HITL_JWT_SECRET_FILE", None, _existing_file),
            jwt_previous_secrets=reader.get("HITL_JWT_PREVIOUS_SECRETS", (), _secret_list),
            jwt_issuer=reader.get("HITL_JWT_ISSUER", defaults.jwt_issuer, _non_empty),
            jwt_audience=reader.get("HITL_JWT_AUDIENCE", defaults.jwt_audience, _non_empty),
            tls_cert_file=reader.get("HITL_TLS_CERT_FILE", None, _existing_file),
            tls_key_file=reader.get("HITL_TLS_KEY_FILE", None, _existing_file),
            access_token_ttl=reader.seconds(
                "HITL_ACCESS_TOKEN_TTL_S", defaults.access_token_ttl, minimum=30
            ),
            refresh_token_ttl=reader.seconds(
                "HITL_REFRESH_TOKEN_TTL_S", defaults.refresh_token_ttl, minimum=60
            ),
            mfa_challenge_ttl=reader.seconds(
                "HITL_MFA_CHALLENGE_TTL_S", defaults.mfa_challenge_ttl, minimum=30
            ),
            claim_lease=reader.seconds("HITL_CLAIM_LEASE_S", defaults.claim_lease, minimum=1),
            sla=sla,
            bootstrap_admin_password=env.get("HITL_BOOTSTRAP_ADMIN_PASSWORD") or None,
            metrics_listen=reader.get("HITL_METRICS_LISTEN", defaults.metrics_listen, _metrics),
            db_timeout_s=reader.number("HITL_DB_TIMEOUT_S", defaults.db_timeout_s, 0.1, 300),
            shutdown_grace_s=reader.number(
                "HITL_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s, 0, 3600
            ),
            max_message_bytes=int(
                reader.number(
                    "HITL_MAX_MESSAGE_BYTES", defaults.max_message_bytes, MIN_MESSAGE_BYTES, 2**30
                )
            ),
            max_concurrent_streams=int(
                reader.number(
                    "HITL_MAX_CONCURRENT_STREAMS", defaults.max_concurrent_streams, 1, 2**20
                )
            ),
            heartbeat_s=reader.number("HITL_HEARTBEAT_S", defaults.heartbeat_s, 0.05, 3600),
            event_retention=reader.seconds(
                "HITL_EVENT_RETENTION_S", defaults.event_retention, minimum=60
            ),
            sweep_interval_s=reader.number(
                "HITL_SWEEP_INTERVAL_S", defaults.sweep_interval_s, 0.05, 3600
            ),
            db_check_interval_s=reader.number(
                "HITL_DB_CHECK_INTERVAL_S", defaults.db_check_interval_s, 0.05, 3600
            ),
            login_max_failures=int(
                reader.number("HITL_LOGIN_MAX_FAILURES", defaults.login_max_failures, 1, 1000)
            ),
            login_window=reader.seconds("HITL_LOGIN_WINDOW_S", defaults.login_window, minimum=1),
            login_max_failures_per_peer=int(
                reader.number(
                    "HITL_LOGIN_MAX_FAILURES_PER_PEER",
                    defaults.login_max_failures_per_peer,
                    1,
                    100_000,
                )
            ),
            login_lockout=reader.seconds("HITL_LOGIN_LOCKOUT_S", defaults.login_lockout, minimum=1),
            login_peer_trust=reader.seconds(
                "HITL_LOGIN_PEER_TRUST_S", defaults.login_peer_trust, minimum=0
            ),
            stream_reauth_s=reader.number(
                "HITL_STREAM_REAUTH_S", defaults.stream_reauth_s, 0.05, 3600
            ),
            public_streams_per_peer=int(
                reader.number(
                    "HITL_PUBLIC_STREAMS_PER_PEER", defaults.public_streams_per_peer, 1, 2**20
                )
            ),
            public_streams_max=int(
                reader.number("HITL_PUBLIC_STREAMS_MAX", defaults.public_streams_max, 1, 2**20)
            ),
            refresh_max_failures_per_peer=int(
                reader.number(
                    "HITL_REFRESH_MAX_FAILURES_PER_PEER",
                    defaults.refresh_max_failures_per_peer,
                    1,
                    100_000,
                )
            ),
            refresh_lockout=reader.seconds(
                "HITL_REFRESH_LOCKOUT_S", defaults.refresh_lockout, minimum=1
            ),
            password_memory_kib=int(
                reader.number("HITL_PASSWORD_MEMORY_KIB", defaults.password_memory_kib, 8, 2**22)
            ),
            password_time_cost=int(
                reader.number("HITL_PASSWORD_TIME_COST", defaults.password_time_cost, 1, 100)
            ),
            password_parallelism=int(
                reader.number("HITL_PASSWORD_PARALLELISM", defaults.password_parallelism, 1, 64)
            ),
            watch_queue_size=int(
                reader.number("HITL_WATCH_QUEUE_SIZE", defaults.watch_queue_size, 8, 1_000_000)
            ),
            watch_queue_bytes=int(
                reader.number("HITL_WATCH_QUEUE_BYTES", defaults.watch_queue_bytes, 65536, 2**34)
            ),
            watch_page_bytes=int(
                reader.number("HITL_WATCH_PAGE_BYTES", defaults.watch_page_bytes, 1024, 2**30)
            ),
            watch_catchup_s=reader.number(
                "HITL_WATCH_CATCHUP_S", defaults.watch_catchup_s, 0.05, 3600
            ),
            log_level=reader.get("HITL_LOG_LEVEL", defaults.log_level, _log_level),
        )
        if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
            raise ConfigError(
                "HITL_TLS_CERT_FILE",
                "set both HITL_TLS_CERT_FILE and HITL_TLS_KEY_FILE, or neither",
            )
        if settings.jwt_secret and settings.jwt_secret_file:
            raise ConfigError(
                "HITL_JWT_SECRET", "set HITL_JWT_SECRET or HITL_JWT_SECRET_FILE, not both"
            )
        if not settings.is_sqlite and not (settings.jwt_secret or settings.jwt_secret_file):
            raise ConfigError(
                "HITL_JWT_SECRET",
                "required with PostgreSQL (replicas must share the signing key)",
            )
        return settings

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None

    def number(self, name: str, default: float, low: float, high: float) -> float:
        def parse(raw: str) -> float:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"not a number: {raw!r}") from None
            if not low <= value <= high:
                raise ValueError(f"must be between {low:g} and {high:g}, got {raw}")
            return value

        return self.get(name, default, parse)

    def seconds(self, name: str, default: timedelta, *, minimum: float) -> timedelta:
        value = self.number(name, default.total_seconds(), minimum, 10 * 365 * 86400)
        return timedelta(seconds=value)


def _database_url(raw: str) -> str:
    scheme = raw.split(":", 1)[0].split("+", 1)[0]
    if "://" not in raw or scheme not in ("sqlite", "postgresql", "postgres"):
        raise ValueError(f"must be sqlite:///<file> or postgresql://..., got {raw!r}")
    if scheme == "sqlite" and (":///" not in raw or raw.split(":///", 1)[1] in ("", ":memory:")):
        raise ValueError("SQLite needs a file path: an in-memory database loses everything")
    return raw


def _listen(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be host:port, got {raw!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port!r}")
    bare = host.strip("[]")
    if bare not in ("localhost", ""):
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            if not all(part.isalnum() or "-" in part for part in bare.split(".")):
                raise ValueError(f"not an address or host name: {host!r}") from None
    return raw


def _metrics(raw: str) -> str | None:
    return None if raw.lower() in ("off", "none", "0") else _listen(raw)


def _secret(raw: str) -> str:
    if len(raw.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes")
    return raw


def _secret_list(raw: str) -> tuple[str, ...]:
    return tuple(_secret(part.strip()) for part in raw.split(",") if part.strip())


def _existing_file(raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise ValueError(f"no such file: {raw}")
    return path


def _non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return level
