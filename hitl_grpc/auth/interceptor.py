"""The auth interceptor: authenticate the bearer token, authorize from the contract's policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import grpc

from hitl_grpc.auth import principal as principal_ctx
from hitl_grpc.auth.policy import Policy, policy_for
from hitl_grpc.domain.errors import PermissionDenied, Unauthenticated
from hitl_grpc.domain.values import Principal
from hitl_grpc.handlers import Around, WrappingInterceptor

Authenticate = Callable[[str, str], Awaitable[Principal]]


def bearer_token(metadata: Any) -> str:
    """The token from `authorization: Bearer <token>`; anything else is Unauthenticated."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return token.strip()
    raise Unauthenticated("authentication required: send 'authorization: Bearer <token>'")


class AuthInterceptor(WrappingInterceptor):
    """Denies any method without a policy; binds the caller for the servicer."""

    def __init__(self, policies: Mapping[str, Policy], authenticate: Authenticate) -> None:
        self._policies = policies
        self._authenticate = authenticate

    def around_for(self, method: str) -> Around:
        """Authenticates and authorizes each call of `method` by its policy."""
        policy = policy_for(method, self._policies)

        @asynccontextmanager
        async def guard(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            peer = context.peer() or ""
            if policy is None:
                raise PermissionDenied("method has no access policy")
            if policy.public:
                principal_ctx.bind(None, peer)
            else:
                token = bearer_token(context.invocation_metadata())
                principal = await self._authenticate(token, peer)
                if principal.role not in policy.roles:
                    raise PermissionDenied(f"role {principal.role.name} may not call {method}")
                principal_ctx.bind(principal, peer)
            yield

        return guard
