"""User administration: create, list and update accounts (admins, and the CLI)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, replace

from hitl_grpc.accounts.throttle import (
    busy_subject,
    mfa_subject,
    peer_host,
    peer_subject,
    user_subject,
)
from hitl_grpc.accounts.trail import AuditTrail
from hitl_grpc.auth.passwords import Passwords, check_new_password
from hitl_grpc.domain import errors
from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.ports import UnitOfWork, UnitOfWorkFactory, UserChanges
from hitl_grpc.domain.values import Account, Role, User, UserId, parse_username, username_key

EMAIL_MAX = 320
FULL_NAME_MAX = 300
PAGE_DEFAULT = 50
PAGE_MAX = 500
LAST_ADMIN = "the last active admin can't be demoted or deactivated"
SUBJECT_MAX = 512
SERVICE_ONLY = "only SERVICE accounts can be bound to a client certificate"


@dataclass(frozen=True)
class NewUser:
    """What creating an account takes."""

    username: str
    password: str
    role: Role
    email: str = ""
    full_name: str = ""
    # A SERVICE account bound to a certificate subject needs no password ("" for none).
    certificate_subject: str = ""


@dataclass(frozen=True)
class UserUpdate:
    """Changes an admin makes to an account; None leaves a field as it is."""

    role: Role | None = None
    active: bool | None = None
    email: str | None = None
    full_name: str | None = None
    new_password: str | None = None
    # "" unbinds the account from its certificate.
    certificate_subject: str | None = None

    @property
    def fields(self) -> list[str]:
        """The names of the fields being changed."""
        return [name for name, value in vars(self).items() if value is not None]


def _profile(value: str, field: str, limit: int) -> str:
    value = value.strip()
    if len(value) > limit:
        raise errors.InvalidField.one(field, f"must be at most {limit} characters")
    if any(not ch.isprintable() for ch in value):
        raise errors.InvalidField.one(field, "must not contain control characters")
    return value


def certificate_subject(value: str) -> str:
    """A client-certificate subject as grpc reports it (RFC 2253: `CN=candi,O=SOC`)."""
    value = value.strip()
    if len(value) > SUBJECT_MAX:
        raise errors.InvalidField.one(
            "certificate_subject", f"must be at most {SUBJECT_MAX} characters"
        )
    if any(not ch.isprintable() for ch in value):
        raise errors.InvalidField.one("certificate_subject", "must not contain control characters")
    if value and "=" not in value:
        raise errors.InvalidField.one(
            "certificate_subject", "must be a distinguished name such as CN=candi,O=SOC"
        )
    return value


class UserAdmin:
    """Account administration over the unit of work; every change is audited with it."""

    def __init__(
        self, uow: UnitOfWorkFactory, passwords: Passwords, clock: Clock, trail: AuditTrail
    ) -> None:
        self._uow = uow
        self._passwords = passwords
        self._clock = clock
        self._trail = trail

    async def create(self, new: NewUser, *, actor: str, peer: str) -> User:
        """Creates an account; a name taken case-insensitively (NFKC) is AlreadyExists."""
        username = parse_username(new.username)
        email = _profile(new.email, "email", EMAIL_MAX)
        full_name = _profile(new.full_name, "full_name", FULL_NAME_MAX)
        subject = certificate_subject(new.certificate_subject)
        if subject and new.role is not Role.SERVICE:
            raise errors.InvalidField.one("certificate_subject", SERVICE_ONLY)
        password = new.password
        if subject and not password:
            # Nobody knows this one: the account signs in by its certificate only.
            password = secrets.token_urlsafe(32)
        check_new_password(password, username)
        password_hash = await self._passwords.hash(password)
        user = User(
            id=UserId(str(uuid.uuid4())),
            username=username,
            role=new.role,
            email=email,
            full_name=full_name,
            active=True,
            mfa_enabled=False,
            created_at=self._clock.now(),
            certificate_subject=subject,
        )
        async with self._uow() as uow:
            # The unique username_key decides a race: the second insert is AlreadyExists.
            await uow.users.add(Account(user=user, password_hash=password_hash))
            await uow.audit.append(
                self._trail.record(
                    "user.created",
                    actor=actor,
                    target=username,
                    peer=peer,
                    role=new.role.name,
                    certificate_subject=subject,
                )
            )
            await uow.commit()
        return user

    async def bootstrap_admin(
        self, password: str | None, *, may_generate: bool = True
    ) -> str | None:
        """On an empty database, creates `admin`; returns the password if it was generated.

        Without `may_generate`, an empty database and no password is InvalidField: the
        password would only exist in the log it is printed to.
        """
        async with self._uow(readonly=True) as uow:
            if await uow.users.count() > 0:
                return None
        if password is None and not may_generate:
            raise errors.InvalidField.one(
                "bootstrap_admin_password",
                "required in production while no account exists: a generated password "
                "would be printed to the log",
            )
        generated = password is None
        secret = password if password is not None else secrets.token_urlsafe(18)
        try:
            await self.create(
                NewUser(username="admin", password=secret, role=Role.ADMIN),
                actor="system",
                peer="local",
            )
        except errors.AlreadyExists:
            return None  # another replica bootstrapped it first
        return secret if generated else None

    async def list_page(self, page_size: int, after: str | None) -> tuple[list[User], str | None]:
        """A page of accounts in username order and the cursor of the next, if any."""
        if page_size < 0:
            raise errors.InvalidField.one("page_size", "must not be negative")
        limit = min(page_size or PAGE_DEFAULT, PAGE_MAX)
        async with self._uow(readonly=True) as uow:
            accounts = await uow.users.list_page(after, limit + 1)
        page = [a.user for a in accounts[:limit]]
        more = len(accounts) > limit
        return page, (username_key(page[-1].username) if more and page else None)

    async def find(self, username: str) -> User:
        """The account with this name (for the CLI)."""
        async with self._uow(readonly=True) as uow:
            account = await uow.users.by_username(username)
        if account is None:
            raise errors.NotFound(f"no user {username!r}")
        return account.user

    async def update(self, user_id: UserId, change: UserUpdate, *, actor: str, peer: str) -> User:
        """Applies an admin's change; deactivation and password resets cut live sessions.

        A password reset also lifts the account's lockout: it is how a locked-out user is
        let back in.
        """
        if not change.fields:
            raise errors.InvalidField.one("update_mask", "names no field to change")
        email = None if change.email is None else _profile(change.email, "email", EMAIL_MAX)
        full_name = (
            None
            if change.full_name is None
            else _profile(change.full_name, "full_name", FULL_NAME_MAX)
        )
        subject = (
            None
            if change.certificate_subject is None
            else certificate_subject(change.certificate_subject)
        )
        password_hash = None
        if change.new_password is not None:
            async with self._uow(readonly=True) as uow:
                current = await uow.users.get(user_id)
            if current is None:
                raise errors.NotFound("user not found")
            check_new_password(change.new_password, current.user.username, "new_password")
            password_hash = await self._passwords.hash(change.new_password)
        reduces_admins = (change.role is not None and change.role is not Role.ADMIN) or (
            change.active is False
        )
        cut_sessions = change.active is False or password_hash is not None
        now = self._clock.now()
        async with self._uow() as uow:
            # Lock the admin set before the target row: every writer takes them in one order.
            admins = await uow.users.lock_active_admins() if reduces_admins else []
            account = await uow.users.get_for_update(user_id)
            if account is None:
                raise errors.NotFound("user not found")
            if reduces_admins and admins == [account.user.id]:
                raise errors.WrongState(LAST_ADMIN)
            bound = account.user.certificate_subject if subject is None else subject
            if bound and (change.role or account.user.role) is not Role.SERVICE:
                raise errors.InvalidField.one("certificate_subject", SERVICE_ONLY)
            updated = await uow.users.update(
                user_id,
                UserChanges(
                    role=change.role,
                    active=change.active,
                    email=email,
                    full_name=full_name,
                    password_hash=password_hash,
                    certificate_subject=subject,
                    bump_generation=cut_sessions,
                ),
                now,
            )
            assert updated is not None
            if cut_sessions:
                await uow.refresh_tokens.revoke_user_sessions(user_id, now)
            if password_hash is not None:
                await _unlock(uow, updated.user.username)
            await uow.audit.append(
                self._trail.record(
                    "user.updated",
                    actor=actor,
                    target=updated.user.username,
                    peer=peer,
                    fields=",".join(sorted(change.fields)),
                    role=updated.user.role.name,
                    active=str(updated.user.active).lower(),
                )
            )
            await uow.commit()
        return updated.user

    async def unlock(
        self, user_id: UserId | None, username: str, client: str, *, actor: str, peer: str
    ) -> User:
        """Lifts an account's password and MFA lockout, and `client`'s peer lock if given."""
        async with self._uow() as uow:
            if user_id is not None:
                account = await uow.users.get(user_id)
            elif username:
                account = await uow.users.by_username(username)
            else:
                raise errors.InvalidField.one("user", "give user_id or username")
            if account is None:
                raise errors.NotFound("user not found")
            name = account.user.username
            await _unlock(uow, name)
            client = client.strip()
            if client:
                await uow.throttle.clear(peer_subject(client))
            await uow.audit.append(
                self._trail.record(
                    "user.unlocked",
                    actor=actor,
                    target=name,
                    peer=peer,
                    client=peer_host(client) if client else "",
                )
            )
            await uow.commit()
        return account.user

    async def reset_mfa(self, user_id: UserId, *, actor: str, peer: str) -> User:
        """Turns MFA off, drops the backup codes and ends every session of the account.

        For a lost authenticator, or a second factor someone else enrolled: sessions end too,
        since whoever enrolled it may be signed in.
        """
        now = self._clock.now()
        async with self._uow() as uow:
            account = await uow.users.get_for_update(user_id)
            if account is None:
                raise errors.NotFound("user not found")
            await uow.users.disable_mfa(user_id, now)
            await uow.backup_codes.replace(user_id, [])
            await uow.users.update(user_id, UserChanges(bump_generation=True), now)
            await uow.refresh_tokens.revoke_user_sessions(user_id, now)
            await uow.throttle.clear(mfa_subject(account.user.username))
            await uow.audit.append(
                self._trail.record(
                    "user.mfa_reset", actor=actor, target=account.user.username, peer=peer
                )
            )
            await uow.commit()
        return replace(account.user, mfa_enabled=False)


async def _unlock(uow: UnitOfWork, username: str) -> None:
    for subject in (user_subject(username), mfa_subject(username)):
        await uow.throttle.clear(subject)
        await uow.throttle.clear(busy_subject(subject))
