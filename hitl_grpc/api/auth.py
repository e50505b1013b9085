"""AuthService: translation to and from the account operations."""

from __future__ import annotations

from typing import Any

import grpc
from hitl.v1 import auth_pb2, auth_pb2_grpc

from hitl_grpc.api import convert
from hitl_grpc.auth.accounts import Accounts
from hitl_grpc.auth.principal import current_peer, current_principal

Context = grpc.aio.ServicerContext[Any, Any]


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Sign-in and the caller's identity."""

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    async def Login(
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        tokens = await self._accounts.login(request.username, request.password, peer=current_peer())
        return auth_pb2.LoginResponse(tokens=convert.tokens_to_proto(tokens))

    async def GetCurrentUser(
        self, request: auth_pb2.GetCurrentUserRequest, context: Context
    ) -> auth_pb2.GetCurrentUserResponse:
        user = await self._accounts.current_user(current_principal())
        return auth_pb2.GetCurrentUserResponse(user=convert.user_to_proto(user))
