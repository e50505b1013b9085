"""Account use cases: sign-in, sessions, MFA, lockout, profile, user admin, audit trail.

Each use case is built once, by build(), for the server and the CLI alike.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hitl_grpc.accounts.mfa import MfaCodes, MfaEnrolment, StepUpCodes
from hitl_grpc.accounts.profile import Profile
from hitl_grpc.accounts.sessions import Sessions, TokenLifetimes
from hitl_grpc.accounts.sign_in import OnOutcome, SignIn
from hitl_grpc.accounts.throttle import LoginLimits, LoginThrottle
from hitl_grpc.accounts.trail import AuditTrail
from hitl_grpc.accounts.users import UserAdmin
from hitl_grpc.auth.keys import load_signing_keys
from hitl_grpc.auth.passwords import HashParams, Passwords
from hitl_grpc.auth.tokens import TokenIssuer
from hitl_grpc.config import Settings
from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.ports import HotStatements, UnitOfWorkFactory


@dataclass(frozen=True)
class AccountServices:
    """Every account use case, sharing one lockout, one audit trail and one set of keys."""

    sign_in: SignIn
    sessions: Sessions
    profile: Profile
    mfa: MfaEnrolment
    users: UserAdmin
    trail: AuditTrail
    step_up: StepUpCodes


def build(
    settings: Settings,
    uow: UnitOfWorkFactory,
    clock: Clock,
    cpu_pool: ThreadPoolExecutor,
    *,
    on_sign_in: OnOutcome | None = None,
    on_lockout: Callable[[str], None] | None = None,
    hot: HotStatements | None = None,
) -> AccountServices:
    """The account use cases over `uow`; password hashing runs on `cpu_pool`.

    `on_sign_in` hears each sign-in step's outcome, `on_lockout` each lock that starts;
    `hot` (PostgreSQL) makes each call's access check in one statement through the driver.

    Raises ConfigError if the signing key can't be loaded.
    """
    passwords = Passwords(
        HashParams(
            settings.password_memory_kib, settings.password_time_cost, settings.password_parallelism
        ),
        cpu_pool,
    )
    tokens = TokenIssuer(
        load_signing_keys(settings),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        clock=clock,
    )
    lifetimes = TokenLifetimes(
        settings.access_token_ttl, settings.refresh_token_ttl, settings.mfa_challenge_ttl
    )
    limits = LoginLimits(
        max_failures=settings.login_max_failures,
        max_failures_per_peer=settings.login_max_failures_per_peer,
        window=settings.login_window,
        lockout=settings.login_lockout,
        peer_trust=settings.login_peer_trust,
    )
    trail = AuditTrail(uow, clock)
    throttle = LoginThrottle(limits, clock, uow, on_lockout=on_lockout)
    sessions = Sessions(uow, tokens, clock, lifetimes, trail, hot)
    codes = MfaCodes(clock)
    return AccountServices(
        sign_in=SignIn(
            uow, passwords, tokens, throttle, sessions, codes, trail, on_outcome=on_sign_in
        ),
        sessions=sessions,
        profile=Profile(uow, passwords, clock, throttle, trail),
        mfa=MfaEnrolment(uow, clock, trail, throttle, codes, passwords, settings.mfa_issuer),
        users=UserAdmin(uow, passwords, clock, trail),
        trail=trail,
        step_up=StepUpCodes(uow, codes, trail, throttle, max_age=settings.step_up_max_age),
    )
