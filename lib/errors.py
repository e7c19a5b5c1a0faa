"""Errors that reach the client as a 4xx with a clear message.

MONAI Label's endpoints call our tasks and datastore synchronously and register no
exception handlers, so an uncaught error becomes a bare "500 Internal Server Error".
Raising FastAPI's HTTPException (which FastAPI turns into a JSON `detail`) from our code
is the one way to choose the status and the message without patching monailabel.
"""

from fastapi import HTTPException


class InvalidInput(HTTPException):
    """The request's data is unusable (corrupt file, wrong shape, bad values): 422."""

    def __init__(self, detail: str):
        super().__init__(status_code=422, detail=detail)


class NotFound(HTTPException):
    """An image, label or companion modality that the request names does not exist: 404."""

    def __init__(self, detail: str):
        super().__init__(status_code=404, detail=detail)


class NotReady(HTTPException):
    """The server cannot answer yet, e.g. no trained model has been published: 409."""

    def __init__(self, detail: str):
        super().__init__(status_code=409, detail=detail)


class Conflict(HTTPException):
    """The request would overwrite or orphan stored annotations: 409."""

    def __init__(self, detail: str):
        super().__init__(status_code=409, detail=detail)


class Busy(HTTPException):
    """The model workers' queue is full: 503 with Retry-After (seconds)."""

    def __init__(self, detail: str, retry_after: int):
        super().__init__(status_code=503, detail=detail, headers={"Retry-After": str(retry_after)})
