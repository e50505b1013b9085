"""Settings are read once from HITL_* variables; a bad one names itself."""

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from hitl_grpc.config import VARIABLES, ConfigError, Settings
from hitl_grpc.domain.values import Priority


def test_defaults_serve_sqlite_on_loopback() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///hitl.db"
    assert settings.listen == "127.0.0.1:50051"
    assert settings.is_sqlite
    assert settings.sqlite_path == Path("hitl.db")
    assert settings.access_token_ttl == timedelta(minutes=15)
    assert settings.sla[Priority.CRITICAL] == timedelta(minutes=15)
    assert settings.sla[Priority.LOW] == timedelta(hours=24)


def test_every_setting_is_read() -> None:
    settings = Settings.from_env(
        {
            "HITL_DATABASE_URL": "postgresql://u@db:5432/hitl",
            "HITL_LISTEN": "[::1]:6000",
            "HITL_JWT_SECRET": "s" * 40,
            "HITL_JWT_PREVIOUS_SECRETS": "p" * 40 + ", " + "q" * 40,
            "HITL_ACCESS_TOKEN_TTL_S": "60",
            "HITL_SLA_CRITICAL_S": "120",
            "HITL_CLAIM_LEASE_S": "30",
            "HITL_METRICS_LISTEN": "off",
            "HITL_LOG_LEVEL": "debug",
            "HITL_ACCESS_LOG_SAMPLE": "0.25",
            "HITL_LOGIN_MAX_FAILURES": "3",
            "HITL_MFA_ISSUER": " hitl-grpc staging ",
        }
    )
    assert not settings.is_sqlite
    assert settings.sqlite_path is None
    assert settings.listen == "[::1]:6000"
    assert settings.jwt_previous_secrets == ("p" * 40, "q" * 40)
    assert settings.access_token_ttl == timedelta(seconds=60)
    assert settings.sla[Priority.CRITICAL] == timedelta(seconds=120)
    assert settings.sla[Priority.HIGH] == timedelta(hours=1)
    assert settings.claim_lease == timedelta(seconds=30)
    assert settings.metrics_listen is None
    assert settings.log_level == "DEBUG"
    assert settings.access_log_sample == 0.25
    assert settings.login_max_failures == 3
    assert settings.mfa_issuer == "hitl-grpc staging"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"HITL_LISTEN": "localhost"}, "HITL_LISTEN"),
        ({"HITL_LISTEN": "host:-1"}, "HITL_LISTEN"),
        ({"HITL_LISTEN": "bad host!:80"}, "HITL_LISTEN"),
        ({"HITL_DATABASE_URL": "redis://x"}, "HITL_DATABASE_URL"),
        ({"HITL_DATABASE_URL": "sqlite://"}, "HITL_DATABASE_URL"),
        ({"HITL_JWT_SECRET": "too-short"}, "HITL_JWT_SECRET"),
        ({"HITL_JWT_SECRET_FILE": "/no/such/file"}, "HITL_JWT_SECRET_FILE"),
        ({"HITL_TLS_CERT_FILE": "/no/such/cert"}, "HITL_TLS_CERT_FILE"),
        ({"HITL_SLA_LOW_S": "0"}, "HITL_SLA_LOW_S"),
        ({"HITL_DB_TIMEOUT_S": "NaN-ish"}, "HITL_DB_TIMEOUT_S"),
        ({"HITL_LOG_LEVEL": "LOUD"}, "HITL_LOG_LEVEL"),
        ({"HITL_ACCESS_LOG_SAMPLE": "1.5"}, "HITL_ACCESS_LOG_SAMPLE"),
        ({"HITL_ACCESS_LOG_SAMPLE": "-0.1"}, "HITL_ACCESS_LOG_SAMPLE"),
        ({"HITL_ACCESS_LOG_SAMPLE": "half"}, "HITL_ACCESS_LOG_SAMPLE"),
        ({"HITL_MFA_ISSUER": "   "}, "HITL_MFA_ISSUER"),
        ({"HITL_DATABASE_URL": "postgresql://u@h/db"}, "HITL_JWT_SECRET"),
    ],
)
def test_bad_value_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable + ": ")


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HITL_TLS_CERT_FILE": str(cert)})
    assert "HITL_TLS_KEY_FILE" in str(caught.value)


def test_secret_and_secret_file_are_exclusive(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k" * 40)
    with pytest.raises(ConfigError):
        Settings.from_env({"HITL_JWT_SECRET": "s" * 40, "HITL_JWT_SECRET_FILE": str(key)})
    assert Settings.from_env({"HITL_JWT_SECRET_FILE": str(key)}).jwt_secret_file == key


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("HITL_LOGIN_MAX_FAILURES", "5.9"),
        ("HITL_MAX_CONCURRENT_STREAMS", "1e3"),
        ("HITL_WATCH_QUEUE_SIZE", "\u0665\u0660"),  # Arabic-Indic digits: int() takes them
        ("HITL_PASSWORD_TIME_COST", "2_0"),
        ("HITL_PUBLIC_STREAMS_MAX", "ten"),
        ("HITL_DB_TIMEOUT_S", "\u0665"),
        ("HITL_HEARTBEAT_S", "nan"),
        ("HITL_CLAIM_LEASE_S", "inf"),
    ],
)
def test_a_number_that_is_not_plainly_one_of_its_type_names_the_variable(
    variable: str, raw: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: raw})
    assert caught.value.variable == variable
    assert repr(raw) in str(caught.value)


def test_integers_stay_integers_and_fractions_stay_fractions() -> None:
    settings = Settings.from_env(
        {
            "HITL_LOGIN_MAX_FAILURES": " 7 ",
            "HITL_MAX_MESSAGE_BYTES": "+2097152",
            "HITL_DB_TIMEOUT_S": "2.5",
            "HITL_HEARTBEAT_S": "1e1",
            "HITL_CLAIM_LEASE_S": "0.5e1",
        }
    )
    assert settings.login_max_failures == 7
    assert type(settings.login_max_failures) is int
    assert type(settings.max_message_bytes) is int
    assert settings.db_timeout_s == 2.5
    assert settings.heartbeat_s == 10.0
    assert settings.claim_lease == timedelta(seconds=5)


def test_an_integer_out_of_range_says_its_bounds() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HITL_PASSWORD_PARALLELISM": "65"})
    assert str(caught.value) == "HITL_PASSWORD_PARALLELISM: must be between 1 and 64, got 65"


def test_every_setting_has_exactly_one_variable_of_its_type() -> None:
    defaults = Settings()
    fields = {f.name for f in dataclasses.fields(Settings)} - {"sla"}
    assert sorted(v.field for v in VARIABLES) == sorted(fields)
    assert len({v.name for v in VARIABLES}) == len(VARIABLES)
    for variable in VARIABLES:
        default = getattr(defaults, variable.field)
        if type(default) is int:
            # An integer setting must refuse a fraction rather than truncate it.
            with pytest.raises(ConfigError):
                Settings.from_env({variable.name: f"{default}.5"})


def test_empty_variables_keep_the_defaults() -> None:
    assert Settings.from_env({v.name: "" for v in VARIABLES}) == Settings()


PRODUCTION: dict[str, str] = {"HITL_ENV": "production", "HITL_JWT_SECRET": "s" * 40}


@pytest.mark.parametrize("listen", ["127.0.0.1:50051", "[::1]:50051", "localhost:50051"])
def test_production_serves_plaintext_on_loopback(listen: str) -> None:
    settings = Settings.from_env({**PRODUCTION, "HITL_LISTEN": listen})
    assert settings.production


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", "10.0.0.5:50051", "hitl:50051"])
def test_production_refuses_plaintext_off_loopback(listen: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**PRODUCTION, "HITL_LISTEN": listen})
    assert caught.value.variable == "HITL_LISTEN"
    assert f"production refuses plaintext gRPC on {listen}" in str(caught.value)
    # Outside production the same address is allowed.
    assert not Settings.from_env({"HITL_LISTEN": listen}).production


def test_production_serves_tls_on_any_address(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    env = {**PRODUCTION, "HITL_LISTEN": "0.0.0.0:50051"}
    settings = Settings.from_env(
        {**env, "HITL_TLS_CERT_FILE": str(cert), "HITL_TLS_KEY_FILE": str(key)}
    )
    assert settings.tls_cert_file == cert


def test_production_needs_a_configured_signing_key() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HITL_ENV": "production"})
    assert caught.value.variable == "HITL_JWT_SECRET"
    assert "production needs a configured signing key" in str(caught.value)


def test_an_unknown_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HITL_ENV": "prod"})
    assert caught.value.variable == "HITL_ENV"
    assert Settings.from_env({"HITL_ENV": "Production", "HITL_JWT_SECRET": "s" * 40}).production


def test_several_workers_need_postgresql() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HITL_WORKERS": "2"})
    assert caught.value.variable == "HITL_WORKERS"
    assert "several workers need PostgreSQL" in str(caught.value)
    # One worker is the single server, on either store.
    assert Settings.from_env({"HITL_WORKERS": "1"}).workers == 1


@pytest.mark.parametrize("raw", ["0", "65", "two", "1.5"])
def test_a_worker_count_outside_one_to_64_is_refused(raw: str) -> None:
    pg = {"HITL_DATABASE_URL": "postgresql://db/hitl", "HITL_JWT_SECRET": "s" * 40}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**pg, "HITL_WORKERS": raw})
    assert str(caught.value).startswith("HITL_WORKERS: ")
