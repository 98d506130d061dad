"""The FastAPI app: the guard (API key, slots, metrics), errors, /health, /metrics, /v1/models, and the route
groups of the served models (routes_generation: chat/completions; routes_classification: classify;
routes_transcription: audio/transcriptions; routes_entities: entities)."""

from __future__ import annotations

from types import ModuleType

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from tunesmith.errors import TunesmithError
from tunesmith.serving import routes_classification, routes_entities, routes_generation, routes_transcription
from tunesmith.serving.context import ApiError, Limits, Metrics, ServingContext, error_response
from tunesmith.serving.guard import Guard
from tunesmith.serving.registry import Registry, ServedModel

# Routes anyone may call without the API key; every other route answers 401 without it (tested on the table).
OPEN_PATHS = ("/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")

# Route group name -> the module whose add_routes(app, context) adds its routes. Each run's Task names its group
# (Task.route_group, carried as ServedModel.route_group); "" means no HTTP route answers for it (e.g. images).
ROUTE_GROUPS: dict[str, ModuleType] = {
    routes_generation.GROUP: routes_generation,
    routes_classification.GROUP: routes_classification,
    routes_transcription.GROUP: routes_transcription,
    routes_entities.GROUP: routes_entities,
}


def route_group(model: ServedModel) -> str | None:
    """The route group that answers for this model, or None."""
    if model.route_group and model.route_group not in ROUTE_GROUPS:
        raise TunesmithError(
            f"serve: {model.id}'s task declares route group '{model.route_group}', which "
            f"tunesmith.serving.app.ROUTE_GROUPS lacks (known: {', '.join(ROUTE_GROUPS)})"
        )
    return model.route_group or None


def create_app(
    registry: Registry,
    api_key: str | None = None,
    max_concurrency: int = 4,
    max_tokens_cap: int = 512,
    max_prompt_tokens: int = 2048,
    limits: Limits | None = None,
) -> FastAPI:
    """The app serving `registry`'s models; `limits`, when given, replaces the three caps before it."""
    limits = limits or Limits(max_concurrency, max_tokens_cap, max_prompt_tokens)
    app = FastAPI(
        title="tunesmith",
        version="1",
        description="OpenAI-compatible API over tunesmith runs",
    )
    groups = {model_id: route_group(model) for model_id, model in registry.models.items()}
    served_groups = [name for name in ROUTE_GROUPS if name in groups.values()]
    context = ServingContext(
        registry=registry,
        route_groups=groups,
        group_paths={name: ROUTE_GROUPS[name].PATHS for name in served_groups},
        limits=limits,
        metrics=Metrics(),
    )
    add_errors(app)
    add_common_routes(app, context)
    for name in served_groups:
        ROUTE_GROUPS[name].add_routes(app, context)
    model_work = [path for name in served_groups for path in ROUTE_GROUPS[name].PATHS]
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
