"""AuthService: translation to and from the account operations."""

from __future__ import annotations

from typing import Any

import grpc
from hitl.v1 import auth_pb2, auth_pb2_grpc

from hitl_grpc.accounts.mfa import MfaEnrolment
from hitl_grpc.accounts.profile import Profile
from hitl_grpc.accounts.sessions import Sessions
from hitl_grpc.accounts.sign_in import SignIn
from hitl_grpc.accounts.users import NewUser, UserAdmin
from hitl_grpc.api import convert
from hitl_grpc.auth.principal import checked_user, current_peer, current_principal
from hitl_grpc.domain.values import UserId

Context = grpc.aio.ServicerContext[Any, Any]


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Sign-in, sessions, MFA, the caller's identity and user administration."""

    def __init__(
        self,
        sign_in: SignIn,
        sessions: Sessions,
        profile: Profile,
        mfa: MfaEnrolment,
        users: UserAdmin,
    ) -> None:
        self._sign_in = sign_in
        self._sessions = sessions
        self._profile = profile
        self._mfa = mfa
        self._users = users

    async def Login(
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        result = await self._sign_in.login(request.username, request.password, peer=current_peer())
        return convert.login_to_proto(result)

    async def VerifyMfa(
        self, request: auth_pb2.VerifyMfaRequest, context: Context
    ) -> auth_pb2.VerifyMfaResponse:
        tokens = await self._sign_in.verify_mfa(
            request.challenge_token, request.code, peer=current_peer()
        )
        return auth_pb2.VerifyMfaResponse(tokens=convert.tokens_to_proto(tokens))

    async def RefreshToken(
        self, request: auth_pb2.RefreshTokenRequest, context: Context
    ) -> auth_pb2.RefreshTokenResponse:
        tokens = await self._sessions.refresh(request.refresh_token, peer=current_peer())
        return auth_pb2.RefreshTokenResponse(tokens=convert.tokens_to_proto(tokens))

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: Context
    ) -> auth_pb2.LogoutResponse:
        await self._sessions.logout(current_principal(), request.refresh_token)
        return auth_pb2.LogoutResponse()

    async def GetCurrentUser(
        self, request: auth_pb2.GetCurrentUserRequest, context: Context
    ) -> auth_pb2.GetCurrentUserResponse:
        # The access check read the account a moment ago, in this call: no second read.
        user = checked_user() or await self._profile.current_user(current_principal())
        return auth_pb2.GetCurrentUserResponse(user=convert.user_to_proto(user))

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Context
    ) -> auth_pb2.ChangePasswordResponse:
        await self._profile.change_password(
            current_principal(), request.current_password, request.new_password
        )
        return auth_pb2.ChangePasswordResponse()

    async def SetupMfa(
        self, request: auth_pb2.SetupMfaRequest, context: Context
    ) -> auth_pb2.SetupMfaResponse:
        secret, uri, codes = await self._mfa.setup(current_principal(), request.password)
        return auth_pb2.SetupMfaResponse(secret=secret, otpauth_uri=uri, backup_codes=codes)

    async def ConfirmMfa(
        self, request: auth_pb2.ConfirmMfaRequest, context: Context
    ) -> auth_pb2.ConfirmMfaResponse:
        user = await self._mfa.confirm(current_principal(), request.code)
        return auth_pb2.ConfirmMfaResponse(user=convert.user_to_proto(user))

    async def DisableMfa(
        self, request: auth_pb2.DisableMfaRequest, context: Context
    ) -> auth_pb2.DisableMfaResponse:
        user = await self._mfa.disable(current_principal(), request.code)
        return auth_pb2.DisableMfaResponse(user=convert.user_to_proto(user))

    async def CreateUser(
        self, request: auth_pb2.CreateUserRequest, context: Context
    ) -> auth_pb2.CreateUserResponse:
        admin = current_principal()
        user = await self._users.create(
            NewUser(
                username=request.username,
                password=request.password,
                role=convert.role_from_proto(request.role),
                email=request.email,
                full_name=request.full_name,
                certificate_subject=request.certificate_subject,
            ),
            actor=admin.username,
            peer=admin.peer,
        )
        return auth_pb2.CreateUserResponse(user=convert.user_to_proto(user))

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: Context
    ) -> auth_pb2.ListUsersResponse:
        after = convert.from_page_token(request.page_token, "u")
        users, next_key = await self._users.list_page(request.page_size, after)
        return auth_pb2.ListUsersResponse(
            users=[convert.user_to_proto(u) for u in users],
            next_page_token=convert.page_token("u", next_key or ""),
        )

    async def UpdateUser(
        self, request: auth_pb2.UpdateUserRequest, context: Context
    ) -> auth_pb2.UpdateUserResponse:
        admin = current_principal()
        user = await self._users.update(
            UserId(request.user_id),
            convert.user_update_from_proto(request),
            actor=admin.username,
            peer=admin.peer,
        )
        return auth_pb2.UpdateUserResponse(user=convert.user_to_proto(user))

    async def UnlockUser(
        self, request: auth_pb2.UnlockUserRequest, context: Context
    ) -> auth_pb2.UnlockUserResponse:
        admin = current_principal()
        by_id = request.WhichOneof("user") == "user_id"
        user = await self._users.unlock(
            UserId(request.user_id) if by_id else None,
            request.username,
            request.peer,
            actor=admin.username,
            peer=admin.peer,
        )
        return auth_pb2.UnlockUserResponse(user=convert.user_to_proto(user))

    async def ResetUserMfa(
        self, request: auth_pb2.ResetUserMfaRequest, context: Context
    ) -> auth_pb2.ResetUserMfaResponse:
        admin = current_principal()
        user = await self._users.reset_mfa(
            UserId(request.user_id), actor=admin.username, peer=admin.peer
        )
        return auth_pb2.ResetUserMfaResponse(user=convert.user_to_proto(user))
