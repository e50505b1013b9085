"""The signed-in caller's own account: its profile and its password."""

from __future__ import annotations

from hitl_grpc.accounts.throttle import LoginThrottle, user_subject
from hitl_grpc.accounts.trail import AuditTrail
from hitl_grpc.auth.passwords import Passwords, check_new_password
from hitl_grpc.domain import errors
from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.ports import UnitOfWork, UnitOfWorkFactory, UserChanges
from hitl_grpc.domain.values import Account, AuditOutcome, Principal, User


class Profile:
    """GetCurrentUser and ChangePassword."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        passwords: Passwords,
        clock: Clock,
        throttle: LoginThrottle,
        trail: AuditTrail,
    ) -> None:
        self._uow = uow
        self._passwords = passwords
        self._clock = clock
        self._throttle = throttle
        self._trail = trail

    async def current_user(self, principal: Principal) -> User:
        """The caller's profile."""
        async with self._uow(readonly=True) as uow:
            account = await uow.users.get(principal.user_id)
        if account is None:
            raise errors.NotFound("user not found")
        return account.user

    async def change_password(self, principal: Principal, current: str, new: str) -> None:
        """Sets a new password given the current one; ends the caller's other sessions.

        The guess at the current password goes through the throttle like a login, so a
        stolen access token can't be used to brute-force the password.
        """
        check_new_password(new, principal.username, "new_password")
        name, peer = principal.username, principal.peer

        async def read(uow: UnitOfWork) -> Account | None:
            return await uow.users.get(principal.user_id)

        async with self._throttle.attempt(
            user_subject(name),
            name,
            peer,
            self._trail.locked_out("auth.password.change", name, peer),
            read,
        ) as (attempt, account):
            if account is None:
                raise errors.Unauthenticated("invalid token")
            ok = await self._passwords.verify(account.password_hash, current)
            new_hash = await self._passwords.hash(new) if ok else None
            now = self._clock.now()
            async with self._uow() as uow:
                if new_hash is None:
                    await attempt.failed(uow)
                    await uow.audit.append(
                        self._trail.own("auth.password.change", name, peer, AuditOutcome.FAILURE)
                    )
                    await uow.commit()
                    raise errors.InvalidField.one("current_password", "is not the current password")
                await attempt.succeeded(uow)
                await uow.users.update(account.user.id, UserChanges(password_hash=new_hash), now)
                await uow.refresh_tokens.revoke_user_sessions(
                    account.user.id, now, keep_family=principal.session_id
                )
                await uow.audit.append(self._trail.own("auth.password.change", name, peer))
                await uow.commit()
