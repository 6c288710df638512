"""The FastAPI app: routes, API key, OpenAI-shaped errors, the engine loop's lifetime."""

from __future__ import annotations

import asyncio
import hmac
import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from bare_engine.serve import completions
from bare_engine.serve.engine_loop import EngineLoop, run_sinks
from bare_engine.serve.limits import HeaderSizeLimit, ServeLimits
from bare_engine.serve.models import ServedModel
from bare_engine.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest

logger = logging.getLogger(__name__)


class ServerState:
    def __init__(self, engine_loop: EngineLoop, models: dict[str, ServedModel], api_key: str | None,
                 limits: ServeLimits):
        self.engine_loop, self.models, self.api_key, self.limits = engine_loop, models, api_key, limits
        self.unknown_fields: set[str] = set()  # request fields already logged as ignored

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise APIError(404, f"The model {name!r} does not exist; served: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        return self.models[name]

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")


def create_app(engine, api_key: str | None = None, max_waiting: int = 256,
               generation_config: str | None = "auto", limits: ServeLimits | None = None) -> FastAPI:
    """The app serving every model of ``engine``; its lifespan starts and stops the engine loop.
    ``generation_config``: see ``ServedModel.from_engine``; ``limits``: see limits.py."""
    engine_loop = EngineLoop(engine, max_waiting=max_waiting)
    models = {name: ServedModel.from_engine(engine, name, generation_config) for name in engine.model_names}
    state = ServerState(engine_loop, models, api_key, limits or ServeLimits())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        engine_loop.deliver = lambda batch: loop.call_soon_threadsafe(run_sinks, batch)
        engine_loop.start()
        try:
            yield
        finally:
            engine_loop.stop()
            for model in models.values():
                model.close()

    app = FastAPI(title="bare-engine", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    app.add_middleware(HeaderSizeLimit, max_bytes=state.limits.max_header_bytes)
    _add_error_handlers(app)
    app.include_router(_v1_router(state))

    @app.get("/health")
    async def health() -> Response:
        alive = engine_loop.is_alive()
        return JSONResponse({"status": "ok" if alive else "engine loop stopped"}, status_code=200 if alive else 503)

    @app.get("/openapi.json", dependencies=[Depends(state.authorize)], include_in_schema=False)
    async def openapi() -> Response:  # behind the API key, as the routes it describes
        return JSONResponse(openapi_with_bodies(app))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine_loop.metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    return app


REQUEST_BODIES = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest}


def openapi_with_bodies(app: FastAPI) -> dict:
    """FastAPI's schema plus the request bodies, which the handlers parse themselves (protocol.parse_body),
    with ``model`` listing the models this server serves."""
    schema = app.openapi()  # cached by FastAPI: the bodies are added once
    if "requestBody" not in schema["paths"]["/v1/completions"]["post"]:
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in REQUEST_BODIES.items():
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            body["properties"]["model"] = {"type": "string", "enum": list(app.state.serve.models)}
            components[model.__name__] = body
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            }
    return schema


def _v1_router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(state.authorize)])

    @router.get("/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [m.card() for m in state.models.values()]}

    @router.post("/completions")
    async def create_completion(request: Request) -> Response:
        return await completions.completion(state, request)

    @router.post("/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        return await completions.chat_completion(state, request)

    return router


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        error = APIError(exc.status_code, str(exc.detail), code=None if exc.status_code != 404 else "not_found")
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return JSONResponse(APIError(400, str(exc)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error serving %s", request.url.path)
        error = APIError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return JSONResponse(error.body(), status_code=500)
