"""One place that maps every error to OpenAI's error shape."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backends.errors import EngineDeadError, InvalidRequestError

log = logging.getLogger("servebench.server")

# The request field that holds the input: chat's messages or the completions prompt.
InputField = Literal["messages", "prompt"]


class OpenAIError(Exception):
    """An error that becomes ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def model_not_found(model: str) -> OpenAIError:
    """404 for an unknown model, as OpenAI words it."""
    return OpenAIError(
        404, f"The model `{model}` does not exist or you do not have access to it.",
        param="model", code="model_not_found",
    )


def context_length_exceeded(limit: int, prompt: int, requested: int, field: InputField = "messages") -> OpenAIError:
    """400 for a prompt (plus requested output) over the context window.

    ``field`` is the request field holding the input: ``messages`` (chat) or ``prompt`` (completions);
    the message names it and ``param`` is set to it, as OpenAI does.
    """
    return OpenAIError(
        400,
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt + requested} tokens ({prompt} in the {field}, {requested} in the completion). "
        f"Please reduce the length of the {field} or completion.",
        param=field, code="context_length_exceeded",
    )


def engine_dead(exc: EngineDeadError) -> OpenAIError:
    """503 for a request the engine can no longer serve: its worker died (or the server is stopping).

    The code ``engine_dead`` tells clients that retrying will not help (``bench eval`` stops on it).
    """
    return OpenAIError(503, str(exc), type="server_error", code="engine_dead")


def as_openai_error(exc: Exception) -> OpenAIError:
    """The OpenAI-shaped form of any exception raised while serving."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, EngineDeadError):
        return engine_dead(exc)
    if isinstance(exc, InvalidRequestError):
        return OpenAIError(400, str(exc), param="prompt")
    return OpenAIError(500, f"internal server error: {type(exc).__name__}: {exc}", type="server_error")


def log_failure(err: OpenAIError, exc: Exception, where: str) -> None:
    """Log a failed request: the traceback for a server error, one line for a client's (no log flood)."""
    if err.status >= 500:
        log.error("%s failed", where, exc_info=exc)
    else:
        log.info("%s refused (%d): %s", where, err.status, err.message)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return (
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            None,
        )
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return f"{param or 'body'}: {first.get('msg', 'invalid request')}", param


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception through the OpenAI error shape."""

    @app.exception_handler(OpenAIError)
    async def _openai(_: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        # The death itself was logged once, with its traceback; here one line per refused request
        # (health probes, which repeat, are not logged).
        if request.url.path != "/health":
            log.warning("%s %s refused: %s", request.method, request.url.path, exc)
        err = engine_dead(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(OpenAIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 413 comes from servers.limits when a body without Content-Length passes the limit.
        code = "request_too_large" if exc.status_code == 413 else None
        err = OpenAIError(exc.status_code, str(exc.detail), code=code)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        err = as_openai_error(exc)
        log_failure(err, exc, f"{request.method} {request.url.path}")
        return JSONResponse(err.body(), status_code=err.status)
