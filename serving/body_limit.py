"""Refuse a request body over ``serving.max_body_bytes`` with 413 before it is read or parsed.

A declared ``Content-Length`` over the limit is answered at once, without reading a byte; a
body without one (chunked) is counted as it arrives and refused at the first chunk that
crosses the limit, so at most the limit is ever held in memory. Before the limit, a 44 MB body
of 5M ids took 3.8 s and 360 MB of the server's memory to be refused.

Hand-written rather than FastAPI's ``max_body_size``: that one answers a declared oversize body
with a plain-text "Content Too Large" whatever the app's exception handlers say, and the
service's errors are JSON naming the setting to change.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised by the counting ``receive``; the app's HTTPException handler answers it."""

    def __init__(self) -> None:
        super().__init__(status_code=413)


class BodyLimit:
    """ASGI middleware: ``refusal(path)`` answers a declared body over ``max_bytes``; a longer
    undeclared body raises :class:`BodyTooLarge` inside the endpoint that reads it."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, refusal: Callable[[str], Response]
                 ) -> None:
        self.app, self.max_bytes, self.refusal = app, max_bytes, refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.refusal(scope["path"])(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            return message

        await self.app(scope, counted, send)
