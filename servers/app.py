"""``create_app(engine, settings)``: the FastAPI factory. Routes are thin; no globals."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from backends.base import Engine
from servers.chat import create_chat_completion
from servers.completions import create_completion
from servers.errors import OpenAIError, install_error_handlers
from servers.limits import BodySizeLimit
from servers.metrics import ServerMetrics
from servers.protocol import ERROR_DESCRIPTIONS, ChatCompletionRequest, CompletionRequest, ErrorResponse
from servers.settings import ServerSettings
from servers.state import Admission, AppState, get_state

log = logging.getLogger("servebench.server")


async def _drain(state: AppState) -> None:
    """Wait for admitted requests to finish, up to the drain timeout."""
    deadline = time.monotonic() + state.settings.drain_timeout_s
    while state.admission.inflight and time.monotonic() < deadline:  # noqa: ASYNC110 - polled, short
        await asyncio.sleep(0.05)
    if state.admission.inflight:
        log.warning("shutting down with %d requests still running", state.admission.inflight)


def _lifespan(engine: Engine) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await _drain(app.state.sb)
            await engine.stop()

    return lifespan


def require_api_key(request: Request) -> None:
    """401 unless the request carries the configured bearer key."""
    expected = get_state(request).settings.api_key
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not secrets.compare_digest(given.encode(), expected.encode()):
        # Nothing of the key is echoed: a masked prefix would help whoever is guessing it.
        raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")


def require_live_engine(request: Request) -> None:
    """503 (``engine_dead``) before any work if the engine died, so a streamed request is refused too.

    Without it a streamed request would get 200 and then an error event in place of its first chunk.
    """
    get_state(request).engine.stats()  # raises EngineDeadError once the engine's worker is gone


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error responses a route really gives, all in OpenAI's error shape."""
    return {status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def _add_routes(app: FastAPI) -> None:
    v1 = [Depends(require_api_key)]
    generation = [*v1, Depends(require_live_engine)]
    generation_errors = _errors(400, 401, 404, 413, 429, 503)

    @app.get("/health", dependencies=[Depends(require_live_engine)], responses=_errors(503))
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body = get_state(request).metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=v1, responses=_errors(401))
    async def models(request: Request) -> dict[str, object]:
        state = get_state(request)
        card = {"id": state.settings.served_model_name, "object": "model", "created": 0,
                "owned_by": "servebench", "max_model_len": state.engine.max_model_len}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", dependencies=generation, response_model=None, responses=generation_errors)
    async def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        return await create_completion(get_state(request), body, request)

    @app.post("/v1/chat/completions", dependencies=generation, response_model=None, responses=generation_errors)
    async def chat(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        return await create_chat_completion(get_state(request), body, request)


def _openapi_without_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` less FastAPI's automatic 422: validation errors are answered 400 here, as OpenAI does."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
        return app.openapi_schema or {}

    return openapi


def create_app(engine: Engine, settings: ServerSettings) -> FastAPI:
    """An OpenAI-compatible app serving ``engine``; the engine starts and stops with the app."""
    app = FastAPI(title="servebench", lifespan=_lifespan(engine))
    admission = Admission(limit=settings.max_concurrency + settings.max_queue)
    metrics = ServerMetrics(settings.served_model_name, engine.stats, lambda: admission.inflight,
                            lambda: admission.rejected)
    app.state.sb = AppState(engine=engine, settings=settings, metrics=metrics, admission=admission)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    _add_routes(app)
    app.openapi = _openapi_without_422(app)  # type: ignore[method-assign]
    return app
