"""Server reflection under both names clients ask for: grpc.reflection.v1 and v1alpha.

grpcio-reflection serves only v1alpha, while current grpcurl, Postman and grpc-js tools
ask for v1 first. The two are the same protocol message for message under another
package name, so v1 is the v1alpha servicer behind the v1 method path, and the v1 file
is the installed v1alpha descriptor renamed, so that v1 itself can be described too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

ALPHA_PACKAGE: Final = reflection_pb2.DESCRIPTOR.package
V1_PACKAGE: Final = "grpc.reflection.v1"
V1_FILE: Final = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME: Final = f"{V1_PACKAGE}.ServerReflection"
SERVICE_NAMES: Final = (V1_SERVICE_NAME, reflection.SERVICE_NAME)


def _renamed(type_name: str) -> str:
    alpha = f".{ALPHA_PACKAGE}."
    return f".{V1_PACKAGE}." + type_name[len(alpha) :] if type_name.startswith(alpha) else type_name


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, derived from the installed v1alpha file."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = _renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = _renamed(method.input_type)
            method.output_type = _renamed(method.output_type)
    return proto


def _register_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.AddSerializedFile(v1_file().SerializeToString())


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection for `service_names` (and for reflection itself) under v1 and v1alpha."""
    _register_v1_file(descriptor_pool.Default())
    names = (*service_names, *SERVICE_NAMES)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
