"""The FastAPI app: the guard (API key, slots, metrics), errors, /health, /metrics, /v1/models, and the route
groups of the served models: each task's own (its Task.routes(), tasks/<name>/routes.py), and this floor's
chat/completions routes (routes_generation) for every run whose handle is a Generator."""

from __future__ import annotations

from types import ModuleType

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from tunesmith.errors import TunesmithError
from tunesmith.http.context import ApiError, Limits, Metrics, ServedModel, ServingContext, error_response
from tunesmith.serving import routes_generation
from tunesmith.serving.guard import Guard
from tunesmith.serving.registry import Registry

# Routes anyone may call without the API key; every other route answers 401 without it (tested on the table).
OPEN_PATHS = ("/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


def route_module(model: ServedModel) -> ModuleType | None:
    """The module whose routes answer for this model: its task's own, else the chat/completions routes for a
    Generator, else None (no HTTP route answers for it, e.g. images)."""
    if model.routes is not None:
        return model.routes
    return routes_generation if isinstance(model.handle, routes_generation.HANDLE) else None


def route_groups(registry: Registry) -> dict[str, ModuleType]:
    """Route group name -> its module, for the models served. Each model's handle must be what its routes ask
    (the module's HANDLE protocol), and two modules may not claim one group name."""
    groups: dict[str, ModuleType] = {}
    for model in registry.models.values():
        module = route_module(model)
        if module is None:
            continue
        if not isinstance(model.handle, module.HANDLE):
            raise TunesmithError(
                f"serve: {model.id} ({model.task}) loads as a {type(model.handle).__name__}, not the "
                f"{module.HANDLE.__name__} its routes ({module.__name__}) answer through"
            )
        claimed = groups.setdefault(module.GROUP, module)
        if claimed is not module:
            raise TunesmithError(
                f"serve: {model.id}'s routes ({module.__name__}) and {claimed.__name__} both name their route "
                f"group '{module.GROUP}'; give one of them another GROUP"
            )
    return groups


def create_app(
    registry: Registry,
    api_key: str | None = None,
    max_concurrency: int = 4,
    max_tokens_cap: int = 512,
    max_prompt_tokens: int = 2048,
    limits: Limits | None = None,
    reasoning: str = "separate",
) -> FastAPI:
    """The app serving `registry`'s models; `limits`, when given, replaces the three caps before it; `reasoning`:
    a chat answer's <think> block in reasoning_content (separate) or left in content (inline)."""
    limits = limits or Limits(max_concurrency, max_tokens_cap, max_prompt_tokens)
    app = FastAPI(
        title="tunesmith",
        version="1",
        description="OpenAI-compatible API over tunesmith runs",
    )
    groups = route_groups(registry)
    context = ServingContext(
        registry=registry,
        route_groups={
            model_id: module.GROUP if (module := route_module(model)) else None
            for model_id, model in registry.models.items()
        },
        group_paths={name: module.PATHS for name, module in groups.items()},
        limits=limits,
        metrics=Metrics(),
        reasoning=reasoning,
    )
    add_errors(app)
    add_common_routes(app, context)
    for module in groups.values():
        module.add_routes(app, context)
    model_work = [path for module in groups.values() for path in module.PATHS]
    app.add_middleware(
        Guard,
        router=app.router,
        api_key=api_key,
        open_paths=OPEN_PATHS,
        limited_paths=model_work,
        limits=limits,
        metrics=context.metrics,
    )
    return app


def add_errors(app: FastAPI) -> None:
    """Every error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(HTTPException)  # 404 for unknown paths, 405, 413 from the guard's body-size cap
    async def _http_error(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(
            400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")), where or None
        )


def add_common_routes(app: FastAPI, context: ServingContext) -> None:
    registry = context.registry

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "models": list(registry.models),
            "base_copies_in_memory": registry.count_base_copies(),
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(
            generate_latest(context.metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST
        )

    @app.get("/v1/models")
    async def models():
        data = [
            {
                "id": m.id,
                "object": "model",
                "created": int(m.run.summary.stat().st_mtime),
                "owned_by": "tunesmith",
                "task": m.task,
            }
            for m in registry.models.values()
        ]
        return {"object": "list", "data": data}
