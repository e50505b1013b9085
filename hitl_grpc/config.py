"""Settings from HITL_* environment variables, validated once at start."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from hitl_grpc.domain.values import ActionType, Priority

T = TypeVar("T")

DEFAULT_DATABASE_URL: Final = "sqlite:///hitl.db"
DEFAULT_LISTEN: Final = "127.0.0.1:50051"
MIN_SECRET_BYTES: Final = 32
# A page must hold one decision at every documented field limit (~1,000,000 bytes in
# 4-byte UTF-8), besides its token and framing (tests/test_decisions_paging.py).
MIN_MESSAGE_BYTES: Final = 1024 * 1024
# The event reader's rest between reads: under a stream of commits it reads the log at
# most 1/WAKE_LINGER_S times a second (with N workers, each of N readers), instead of
# once per commit; a commit after a quiet spell is still read at once.
WAKE_LINGER_S: Final = 0.005
MAX_WORKERS: Final = 64


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


# The two-person rule's defaults: the actions that can take a network or a plant down.
HIGH_IMPACT_ACTIONS: Final = frozenset(
    {ActionType.ACTIVATE_KILLSWITCH, ActionType.DEPLOY_COUNTERMEASURE}
)


def _default_approvals() -> dict[ActionType, int]:
    return {action: 2 for action in HIGH_IMPACT_ACTIONS}


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
    # The name an authenticator app shows beside the account (e.g. "hitl-grpc staging").
    mfa_issuer: str = "hitl-grpc"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Client certificates signed by this CA are verified (and required) on the listener
    # that asks for them: mtls_listen if set, otherwise listen itself.
    tls_client_ca_file: Path | None = None
    mtls_listen: str = ""
    access_token_ttl: timedelta = timedelta(minutes=15)
    refresh_token_ttl: timedelta = timedelta(days=7)
    mfa_challenge_ttl: timedelta = timedelta(minutes=5)
    claim_lease: timedelta = timedelta(minutes=10)
    # Distinct approvers per action type (unlisted types need one).
    approvals_required: Mapping[ActionType, int] = field(default_factory=_default_approvals)
    # Action types whose approval needs a fresh TOTP code in the call.
    step_up_actions: frozenset[ActionType] = HIGH_IMPACT_ACTIONS
    # A step-up code's 30-second time step must have ended at most this long ago.
    step_up_max_age: timedelta = timedelta(seconds=30)
    sla: Mapping[Priority, timedelta] = field(default_factory=_default_sla)
    bootstrap_admin_password: str | None = None
    metrics_listen: str | None = "127.0.0.1:9464"
    # An OTLP/HTTP collector (http://collector:4318): spans go to <it>/v1/traces. None: off.
    otlp_endpoint: str | None = None
    db_timeout_s: float = 5.0
    # Concurrent writes share one transaction and commit: auto (SQLite only), on or off.
    group_commit: str = "auto"
    # Writes one shared transaction carries at most.
    group_commit_max: int = 64
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
    # Serving processes on the one port (PostgreSQL only beyond one).
    workers: int = 1
    # After each read of the log, the event reader rests this long, so that the wake-ups
    # of commits in the meantime are served by one read.
    wake_linger: float = WAKE_LINGER_S
    log_level: str = "INFO"
    # The fraction of OK calls that get an access-log line; a failed call always gets one.
    access_log_sample: float = 1.0
    # Outgoing webhooks: off while no URL is set. Signed with webhook_secret (HMAC-SHA256).
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_timeout_s: float = 5.0
    # Attempts per delivery before it is dead (visible to admins); the wait before attempt
    # n+1 is backoff * 2^(n-1), capped, with jitter.
    webhook_max_attempts: int = 10
    webhook_backoff_s: float = 1.0
    webhook_backoff_max_s: float = 300.0
    webhook_poll_s: float = 1.0
    # "production" refuses what is fine on a laptop: see _check_production.
    env: str = "development"

    @property
    def production(self) -> bool:
        """Whether HITL_ENV=production: no plaintext off loopback, no generated secrets."""
        return self.env == "production"

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
    def wake_linger_s(self) -> float:
        """How long the event reader rests after each read (see `wake_linger`)."""
        return self.wake_linger

    @property
    def group_commit_on(self) -> bool:
        """Whether writes go through the group-commit writer (auto: on SQLite only)."""
        if self.group_commit == "auto":
            return self.is_sqlite
        return self.group_commit == "on"

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
        defaults = cls()
        values: dict[str, Any] = {}
        for variable in VARIABLES:
            raw = env.get(variable.name)
            if raw:
                values[variable.field] = _parsed(variable.name, raw, variable.parse)
        sla = dict(defaults.sla)
        for priority in Priority:
            name = f"HITL_SLA_{priority.name}_S"
            raw = env.get(name)
            if raw:
                sla[priority] = _parsed(name, raw, _seconds(minimum=1))
        settings = cls(**values, sla=sla)
        if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
            raise ConfigError(
                "HITL_TLS_CERT_FILE",
                "set both HITL_TLS_CERT_FILE and HITL_TLS_KEY_FILE, or neither",
            )
        if settings.tls_client_ca_file and settings.tls_cert_file is None:
            raise ConfigError(
                "HITL_TLS_CLIENT_CA_FILE",
                "client certificates need TLS: set HITL_TLS_CERT_FILE and HITL_TLS_KEY_FILE",
            )
        if settings.mtls_listen and settings.tls_client_ca_file is None:
            raise ConfigError(
                "HITL_MTLS_LISTEN",
                "a client-certificate listener needs HITL_TLS_CLIENT_CA_FILE",
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
        if settings.workers > 1 and settings.is_sqlite:
            raise ConfigError(
                "HITL_WORKERS",
                "several workers need PostgreSQL: SQLite has one writer and no NOTIFY "
                "to wake the other workers' readers",
            )
        if settings.webhook_urls and not settings.webhook_secret:
            raise ConfigError(
                "HITL_WEBHOOK_SECRET", "required with webhook URLs: every delivery is signed"
            )
        if settings.production:
            _check_production(settings)
        return settings


def _check_production(settings: Settings) -> None:
    """What HITL_ENV=production refuses; a bootstrap password that would be generated and
    printed is refused at start, once the server sees the database has no account."""
    host = settings.listen.rpartition(":")[0].strip("[]")
    if settings.tls_cert_file is None and not _is_loopback(host):
        raise ConfigError(
            "HITL_LISTEN",
            f"production refuses plaintext gRPC on {settings.listen}: set HITL_TLS_CERT_FILE "
            "and HITL_TLS_KEY_FILE, or listen on loopback behind a TLS-terminating proxy",
        )
    if not (settings.jwt_secret or settings.jwt_secret_file):
        raise ConfigError(
            "HITL_JWT_SECRET",
            "production needs a configured signing key (HITL_JWT_SECRET or "
            "HITL_JWT_SECRET_FILE), not one generated next to the database",
        )
    for url in settings.webhook_urls:
        host = url.partition("://")[2].split("/", 1)[0].rpartition("@")[2]
        if url.startswith("http://") and not _is_loopback(host.rsplit(":", 1)[0].strip("[]")):
            raise ConfigError(
                "HITL_WEBHOOK_URLS",
                f"production refuses plaintext webhooks to {url}: use https://",
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" (every address)


def _switch(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("auto", "on", "off"):
        raise ValueError(f"must be auto, on or off, got {raw!r}")
    return value


def _environment(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("development", "production"):
        raise ValueError(f"must be development or production, got {raw!r}")
    return value


@dataclass(frozen=True)
class Variable:
    """One HITL_* variable: the setting it fills and how its text is parsed and checked."""

    name: str
    field: str
    parse: Callable[[str], Any]


def _parsed(name: str, raw: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None


# Only ASCII: int() and float() also take other scripts' digits and "1_000".
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_NUMBER: Final = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not _INTEGER.fullmatch(raw.strip()):
            raise ValueError(f"not a whole number: {raw!r}")
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {raw}")
        return value

    return parse


def _number(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        if not _NUMBER.fullmatch(raw.strip()):
            raise ValueError(f"not a number: {raw!r}")
        value = float(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {raw}")
        return value

    return parse


def _seconds(*, minimum: float) -> Callable[[str], timedelta]:
    number = _number(minimum, 10 * 365 * 86400)

    def parse(raw: str) -> timedelta:
        return timedelta(seconds=number(raw))

    return parse


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


def _otlp_endpoint(raw: str) -> str:
    parts = urllib.parse.urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL of an OTLP collector, got {raw!r}")
    return raw.strip().rstrip("/")


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


def _text(raw: str) -> str:
    return raw


def _action_type(raw: str) -> ActionType:
    name = raw.strip().upper().removeprefix("ACTION_TYPE_")
    try:
        return ActionType[name]
    except KeyError:
        known = ", ".join(a.name for a in ActionType)
        raise ValueError(f"unknown action type {raw.strip()!r}: one of {known}") from None


def _approvals(raw: str) -> dict[ActionType, int]:
    """TYPE=N,TYPE=N: every type named gets N (1-10) approvers; 'none' turns the rule off."""
    if raw.strip().lower() == "none":
        return {}
    count = _integer(1, 10)
    result: dict[ActionType, int] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, number = part.partition("=")
        if not sep:
            raise ValueError(f"must be TYPE=COUNT pairs, got {part.strip()!r}")
        result[_action_type(name)] = count(number)
    return result


def _action_types(raw: str) -> frozenset[ActionType]:
    """TYPE,TYPE,...; 'none' for no step-up."""
    if raw.strip().lower() == "none":
        return frozenset()
    return frozenset(_action_type(part) for part in raw.split(",") if part.strip())


def _webhook_url(raw: str) -> str:
    url = raw.strip()
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if scheme not in ("http", "https") or not sep or not host or any(c.isspace() for c in url):
        raise ValueError(f"must be an http:// or https:// URL, got {raw!r}")
    if len(url) > 2048:
        raise ValueError("must be at most 2048 characters")
    return url


def _webhook_urls(raw: str) -> tuple[str, ...]:
    urls = tuple(_webhook_url(part) for part in raw.split(",") if part.strip())
    if len(set(urls)) != len(urls):
        raise ValueError("lists a URL twice")
    return urls


# Every setting but the SLA per priority (HITL_SLA_<PRIORITY>_S, read beside it); one row
# each, in the README's order.
VARIABLES: Final = (
    Variable("HITL_DATABASE_URL", "database_url", _database_url),
    Variable("HITL_ENV", "env", _environment),
    Variable("HITL_LISTEN", "listen", _listen),
    Variable("HITL_JWT_SECRET", "jwt_secret", _secret),
    Variable("HITL_JWT_SECRET_FILE", "jwt_secret_file", _existing_file),
    Variable("HITL_JWT_PREVIOUS_SECRETS", "jwt_previous_secrets", _secret_list),
    Variable("HITL_JWT_ISSUER", "jwt_issuer", _non_empty),
    Variable("HITL_JWT_AUDIENCE", "jwt_audience", _non_empty),
    Variable("HITL_TLS_CERT_FILE", "tls_cert_file", _existing_file),
    Variable("HITL_TLS_KEY_FILE", "tls_key_file", _existing_file),
    Variable("HITL_TLS_CLIENT_CA_FILE", "tls_client_ca_file", _existing_file),
    Variable("HITL_MTLS_LISTEN", "mtls_listen", _listen),
    Variable("HITL_ACCESS_TOKEN_TTL_S", "access_token_ttl", _seconds(minimum=30)),
    Variable("HITL_REFRESH_TOKEN_TTL_S", "refresh_token_ttl", _seconds(minimum=60)),
    Variable("HITL_MFA_CHALLENGE_TTL_S", "mfa_challenge_ttl", _seconds(minimum=30)),
    Variable("HITL_MFA_ISSUER", "mfa_issuer", _non_empty),
    Variable("HITL_CLAIM_LEASE_S", "claim_lease", _seconds(minimum=1)),
    Variable("HITL_APPROVALS_REQUIRED", "approvals_required", _approvals),
    Variable("HITL_STEP_UP_ACTIONS", "step_up_actions", _action_types),
    Variable("HITL_STEP_UP_MAX_AGE_S", "step_up_max_age", _seconds(minimum=0)),
    Variable("HITL_BOOTSTRAP_ADMIN_PASSWORD", "bootstrap_admin_password", _text),
    Variable("HITL_METRICS_LISTEN", "metrics_listen", _metrics),
    Variable("HITL_OTLP_ENDPOINT", "otlp_endpoint", _otlp_endpoint),
    Variable("HITL_DB_TIMEOUT_S", "db_timeout_s", _number(0.1, 300)),
    Variable("HITL_GROUP_COMMIT", "group_commit", _switch),
    Variable("HITL_GROUP_COMMIT_MAX", "group_commit_max", _integer(1, 10_000)),
    Variable("HITL_SHUTDOWN_GRACE_S", "shutdown_grace_s", _number(0, 3600)),
    Variable("HITL_MAX_MESSAGE_BYTES", "max_message_bytes", _integer(MIN_MESSAGE_BYTES, 2**30)),
    Variable("HITL_MAX_CONCURRENT_STREAMS", "max_concurrent_streams", _integer(1, 2**20)),
    Variable("HITL_HEARTBEAT_S", "heartbeat_s", _number(0.05, 3600)),
    Variable("HITL_EVENT_RETENTION_S", "event_retention", _seconds(minimum=60)),
    Variable("HITL_SWEEP_INTERVAL_S", "sweep_interval_s", _number(0.05, 3600)),
    Variable("HITL_WATCH_QUEUE_SIZE", "watch_queue_size", _integer(8, 1_000_000)),
    Variable("HITL_WATCH_QUEUE_BYTES", "watch_queue_bytes", _integer(65536, 2**34)),
    Variable("HITL_WATCH_PAGE_BYTES", "watch_page_bytes", _integer(1024, 2**30)),
    Variable("HITL_WATCH_CATCHUP_S", "watch_catchup_s", _number(0.05, 3600)),
    Variable("HITL_WORKERS", "workers", _integer(1, MAX_WORKERS)),
    Variable("HITL_WAKE_LINGER_S", "wake_linger", _number(0, 1)),
    Variable("HITL_DB_CHECK_INTERVAL_S", "db_check_interval_s", _number(0.05, 3600)),
    Variable("HITL_LOGIN_MAX_FAILURES", "login_max_failures", _integer(1, 1000)),
    Variable("HITL_LOGIN_WINDOW_S", "login_window", _seconds(minimum=1)),
    Variable(
        "HITL_LOGIN_MAX_FAILURES_PER_PEER", "login_max_failures_per_peer", _integer(1, 100_000)
    ),
    Variable("HITL_LOGIN_LOCKOUT_S", "login_lockout", _seconds(minimum=1)),
    Variable("HITL_LOGIN_PEER_TRUST_S", "login_peer_trust", _seconds(minimum=0)),
    Variable("HITL_STREAM_REAUTH_S", "stream_reauth_s", _number(0.05, 3600)),
    Variable("HITL_PUBLIC_STREAMS_PER_PEER", "public_streams_per_peer", _integer(1, 2**20)),
    Variable("HITL_PUBLIC_STREAMS_MAX", "public_streams_max", _integer(1, 2**20)),
    Variable(
        "HITL_REFRESH_MAX_FAILURES_PER_PEER", "refresh_max_failures_per_peer", _integer(1, 100_000)
    ),
    Variable("HITL_REFRESH_LOCKOUT_S", "refresh_lockout", _seconds(minimum=1)),
    Variable("HITL_PASSWORD_MEMORY_KIB", "password_memory_kib", _integer(8, 2**22)),
    Variable("HITL_PASSWORD_TIME_COST", "password_time_cost", _integer(1, 100)),
    Variable("HITL_PASSWORD_PARALLELISM", "password_parallelism", _integer(1, 64)),
    Variable("HITL_LOG_LEVEL", "log_level", _log_level),
    Variable("HITL_ACCESS_LOG_SAMPLE", "access_log_sample", _number(0, 1)),
    Variable("HITL_WEBHOOK_URLS", "webhook_urls", _webhook_urls),
    Variable("HITL_WEBHOOK_SECRET", "webhook_secret", _secret),
    Variable("HITL_WEBHOOK_TIMEOUT_S", "webhook_timeout_s", _number(0.1, 300)),
    Variable("HITL_WEBHOOK_MAX_ATTEMPTS", "webhook_max_attempts", _integer(1, 1000)),
    Variable("HITL_WEBHOOK_BACKOFF_S", "webhook_backoff_s", _number(0.01, 3600)),
    Variable("HITL_WEBHOOK_BACKOFF_MAX_S", "webhook_backoff_max_s", _number(0.01, 86400)),
    Variable("HITL_WEBHOOK_POLL_S", "webhook_poll_s", _number(0.05, 3600)),
)
