"""Calls that end while the server's loop is busy never take the process down."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.blackbox.harness import ADMIN_PASSWORD, CALL_S, Served

THREADS = 50


def _reflect_then_login(served: Served) -> str:
    # What a generic tool does: learn the method from the server, then call it.
    with served.channel() as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName("hitl.v1.AuthService").methods_by_name["Login"]
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        login = channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        reply = login(request_class(username="admin", password=ADMIN_PASSWORD), timeout=CALL_S)
    return str(reply.tokens.access_token)  # type: ignore[attr-defined]  # a class built at run time


def test_fifty_threads_resolving_through_reflection_then_logging_in_all_succeed(
    served: Served,
) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        tokens = list(pool.map(lambda _: _reflect_then_login(served), range(THREADS)))
    served.assert_alive()
    assert all(tokens) and len(tokens) == THREADS
