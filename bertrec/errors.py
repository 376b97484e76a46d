"""The one error hierarchy; each class names the gRPC status it maps to."""

from __future__ import annotations

import grpc


class BertrecError(Exception):
    """Base class; `code` is the gRPC status the server answers with."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(BertrecError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(BertrecError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(BertrecError):
    """The request is valid but the service's state refuses it (e.g. a worse model swap)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(BertrecError):
    """A bounded queue is full: the caller should back off."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(BertrecError):
    """The caller's deadline passed before the work ran; the work was skipped."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotReady(BertrecError):
    """Model or index still loading."""

    code = grpc.StatusCode.UNAVAILABLE


class WorkerLost(BertrecError):
    """An encoder replica or index shard died and the retry budget ran out."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(BertrecError):
    code = grpc.StatusCode.UNAUTHENTICATED


class InternalError(BertrecError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[BertrecError]] = {
    InvalidRequest.code: InvalidRequest,
    NotFound.code: NotFound,
    FailedPrecondition.code: FailedPrecondition,
    Overloaded.code: Overloaded,
    DeadlineExceeded.code: DeadlineExceeded,
    NotReady.code: NotReady,
    Unauthenticated.code: Unauthenticated,
    InternalError.code: InternalError,
}


def error_for_code(code: grpc.StatusCode, message: str) -> BertrecError:
    """The client-side exception for a status the server sent."""
    return _BY_CODE.get(code, BertrecError)(message)
