"""ASGI middleware that bounds request bodies: 413 in OpenAI's error shape, before a large body is read whole."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servers.errors import OpenAIError


def too_large(limit: int) -> OpenAIError:
    """413 for a body over ``limit`` bytes."""
    return OpenAIError(413, f"The request body is larger than this server accepts ({limit} bytes).",
                       code="request_too_large")


class BodySizeLimit:
    """Refuse a body whose ``Content-Length`` is over ``max_bytes`` at once, and a chunked one as soon as
    the bytes received pass it (the route then answers 413 through the app's error handlers)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            err = too_large(self.max_bytes)
            await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large(self.max_bytes).message)
            return message

        return counted
