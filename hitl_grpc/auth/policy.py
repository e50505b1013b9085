"""The access policy, read from the contract's method options."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from google.protobuf.descriptor import FileDescriptor
from hitl.v1 import access_pb2

from hitl_grpc.domain.values import Role

# Ops endpoints answer without a token so probes and grpcurl discovery work.
OPS_SERVICES: Final = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


@dataclass(frozen=True)
class Policy:
    """Who may call one method."""

    public: bool
    roles: frozenset[Role]


PUBLIC: Final = Policy(public=True, roles=frozenset())


def load_policies(files: Iterable[FileDescriptor]) -> dict[str, Policy]:
    """Every method's policy by full method path; methods without one are left out."""
    table: dict[str, Policy] = {}
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(access_pb2.access):
                    continue
                access = options.Extensions[access_pb2.access]
                table[f"/{service.full_name}/{method.name}"] = Policy(
                    public=access.public, roles=frozenset(Role(r) for r in access.roles)
                )
    return table


def policy_for(method: str, table: Mapping[str, Policy]) -> Policy | None:
    """The method's policy; None means deny (fail closed)."""
    found = table.get(method)
    if found is not None:
        return found
    service = method.strip("/").split("/", 1)[0]
    return PUBLIC if service in OPS_SERVICES else None
