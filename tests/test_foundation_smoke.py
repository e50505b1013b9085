from hitl.v1 import access_pb2, auth_pb2

from hitl_grpc.domain.values import Role
from tests.harness import Harness, bearer


async def test_login_then_get_current_user_returns_the_caller(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    reply = await server.login(user.username)
    me = await server.auth.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=bearer(reply.tokens.access_token), timeout=5
    )
    assert me.user.username == user.username
    assert me.user.role == access_pb2.ROLE_ANALYST
