"""The one table from domain errors to gRPC status codes, with google.rpc details."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hitl_grpc.domain import errors
from hitl_grpc.interceptors import UnparseableRequest, abort

log = logging.getLogger("hitl_grpc.api")

# One row per row of the DESIGN.md error table.
STATUS_OF: Final[Mapping[type[errors.DomainError], grpc.StatusCode]] = {
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.InvalidField: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    errors.VersionConflict: grpc.StatusCode.ABORTED,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_of(err: errors.DomainError) -> grpc.Status:
    """The status (code, message, rich details) a domain error is sent as."""
    code = next(
        (STATUS_OF[cls] for cls in type(err).__mro__ if cls in STATUS_OF),
        grpc.StatusCode.INTERNAL,
    )
    details: list[any_pb2.Any] = []
    if isinstance(err, errors.InvalidField):
        details.append(
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in err.violations
                    ]
                )
            )
        )
    if isinstance(err, errors.RateLimited):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, int(err.retry_after_s * 1000)))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=err.message, details=details
    )
    return rpc_status.to_status(status)


def code_number(err: errors.DomainError) -> int:
    """The google.rpc.Code number a domain error is sent as (per item of a bulk reply)."""
    code = next(
        (STATUS_OF[cls] for cls in type(err).__mro__ if cls in STATUS_OF),
        grpc.StatusCode.INTERNAL,
    )
    number = code.value[0]
    assert isinstance(number, int)
    return number


async def answer_error(context: grpc.aio.ServicerContext[Any, Any], err: Exception) -> NoReturn:
    """Sends what escaped a servicer as a status: domain errors by the table, else INTERNAL."""
    if isinstance(err, errors.DomainError):
        status = status_of(err)
        await abort(context, status.code, status.details, status.trailing_metadata)
    if isinstance(err, UnparseableRequest):
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, err.message)
    if isinstance(err, NotImplementedError):
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "method not implemented yet")
    log.error("unhandled error in servicer", exc_info=err)
    await abort(context, grpc.StatusCode.INTERNAL, "internal error")
