"""The FastAPI app: its routes, the API key, and the lifecycle of the follower and the prediction logs.

`create_app()` is cheap (it reads the pipeline files); the lifespan opens each prediction database's log
writer and starts following the champions, and on shutdown (SIGTERM, Ctrl-C) stops following and writes
every queued log row before the process exits. Uvicorn finishes the requests in flight first, and with them
their shadow scoring (a background task of the response), so their rows are queued before the flush.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from lifecycle.config.pipeline import PipelineConfig, load_pipelines
from lifecycle.serving.follower import Follower, LoadedModel
from lifecycle.serving.log_writer import PredictionLog
from lifecycle.serving.predict import Predictor
from lifecycle.serving.rollout import sticky_column
from lifecycle.serving.schema import RequestError
from lifecycle.serving.settings import ServingSettings, serving_settings

log = logging.getLogger(__name__)
BYTES_PER_ROW = 4096  # a request's body may hold up to max_rows rows of this size on average


@dataclass
class _Runtime:
    """What the lifespan opens and the routes use."""

    follower: Follower | None = None
    predictor: Predictor | None = None
    logs: dict[str, PredictionLog | str] = field(default_factory=dict)


def create_app(
    configs: list[PipelineConfig] | None = None,
    connection_urls: dict[str, str] | None = None,
    settings: ServingSettings | None = None,
) -> FastAPI:
    """The service for `configs` (default: every valid pipeline file of PIPELINES_DIR).

    `connection_urls` maps `prediction.conn_id`s to SQLAlchemy URLs; by default they are resolved as
    Airflow resolves connections outside a task (AIRFLOW_CONN_<ID>, secrets backends, the metadata database).
    """
    settings = settings or serving_settings()
    if configs is None:
        configs, errors = load_pipelines()
        # Segment models are scored in batches only: online routing by segment is not built (docs/segments.md).
        configs = [c for c in configs if c.segments is None]
        for error in errors:
            log.error("not served: %s", error)
    runtime = _Runtime()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.logs = _open_logs(configs, connection_urls, settings)
        runtime.follower = Follower(configs, settings.poll_seconds)
        runtime.predictor = Predictor(configs, runtime.follower, runtime.logs, settings.max_rows)
        runtime.follower.start()
        log.info("serving %d pipelines: %s", len(configs), ", ".join(c.name for c in configs) or "none")
        try:
            yield
        finally:
            runtime.follower.stop()
            for prediction_log in {id(v): v for v in runtime.logs.values() if isinstance(v, PredictionLog)}.values():
                prediction_log.close(settings.shutdown_flush_seconds)
                prediction_log.engine.dispose()
            log.info("prediction logs flushed; stopped")

    keyed = settings.api_key is not None
    app = FastAPI(
        title="lifecycle serving",
        summary="Online predictions from each pipeline's champion (docs/serving.md)",
        lifespan=lifespan,
        # The generated docs would be the only routes without the key: off when a key is set.
        docs_url=None if keyed else "/docs",
        redoc_url=None,
        openapi_url=None if keyed else "/openapi.json",
    )
    guarded = APIRouter(dependencies=[Depends(_bearer(settings.api_key))] if keyed else [])

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is up (no key needed)."""
        return {"status": "ok"}

    @guarded.get("/ready")
    async def ready() -> JSONResponse:
        """200 when every pipeline with a champion has a model loaded and can log its predictions."""
        assert runtime.follower is not None
        ok, waiting = runtime.follower.readiness()
        for name, prediction_log in runtime.logs.items():
            if isinstance(prediction_log, str):
                waiting[name] = prediction_log
            elif prediction_log.full:
                waiting[name] = f"the prediction log is full ({prediction_log.last_error or 'database slow'})"
        pipelines = {}
        for config in configs:
            served = runtime.follower.served(config.name)
            pipelines[config.name] = {
                "champion_version": _version(served.champion),
                "challenger_version": _version(served.challenger),
                **({"waiting_for": waiting[config.name]} if config.name in waiting else {}),
            }
        return JSONResponse({"ready": not waiting, "pipelines": pipelines}, status_code=200 if not waiting else 503)

    @guarded.get("/pipelines")
    async def pipelines() -> list[dict[str, Any]]:
        """What is served: per pipeline its models, its rollout, what the registry says and its log."""
        assert runtime.follower is not None and runtime.predictor is not None
        return [_describe(c, runtime) for c in configs]

    @guarded.post("/pipelines/{name}/predict")
    async def predict(name: str, request: Request) -> JSONResponse:
        """One row as a JSON object, or {"rows": [...]}: a prediction per row (docs/serving.md)."""
        assert runtime.predictor is not None
        try:
            body = await _body(request, settings.max_rows * BYTES_PER_ROW)
            answer = await run_in_threadpool(runtime.predictor.predict, name, body)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=err.status)
        background = BackgroundTask(answer.shadow) if answer.shadow else None
        return Response(answer.body, media_type="application/json", headers={"X-Request-ID": answer.request_id},
                        background=background)  # fmt: skip

    app.include_router(guarded)
    return app


def _bearer(key: str | None) -> Any:
    expected = f"Bearer {key}".encode()

    async def require_key(request: Request) -> None:
        given = request.headers.get("authorization", "").encode("latin-1")
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                401, "missing or wrong API key: send Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
            )

    return require_key


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _open_logs(
    configs: list[PipelineConfig], urls: dict[str, str] | None, settings: ServingSettings
) -> dict[str, PredictionLog | str]:
    """One started log writer per prediction database, by pipeline (or why a pipeline has none)."""
    import sqlalchemy as sa

    from lifecycle.persistence.predictions_db import engine_for

    if urls is None:
        from lifecycle.devtools.cli import connection_urls

        urls = connection_urls(c.prediction.conn_id for c in configs) if configs else {}
    opened: dict[str, PredictionLog] = {}
    logs: dict[str, PredictionLog | str] = {}
    for config in configs:
        conn_id = config.prediction.conn_id
        url = urls.get(conn_id)
        if url is None:
            logs[config.name] = f"connection {conn_id!r} (prediction.conn_id) is not defined"
            log.error("%s: %s: its predictions are refused", config.name, logs[config.name])
            continue
        if url not in opened:
            database = sa.make_url(url).database
            if url.startswith("sqlite") and database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)  # SQLite makes files, not folders
            opened[url] = PredictionLog(
                engine_for(url),
                capacity=settings.log_queue_rows,
                batch_rows=settings.log_batch_rows,
                flush_seconds=settings.log_flush_seconds,
                name=conn_id,
            )
            opened[url].start()
        logs[config.name] = opened[url]
    return logs


def _version(model: LoadedModel | None) -> str | None:
    return model.version if model is not None else None


def _describe(config: PipelineConfig, runtime: _Runtime) -> dict[str, Any]:
    assert runtime.follower is not None and runtime.predictor is not None
    served, seen = runtime.follower.served(config.name), runtime.follower.seen(config.name)
    rollout = config.serving.rollout
    prediction_log = runtime.logs.get(config.name)
    return {
        "name": config.name,
        "model_name": config.registered_model_name,
        "task": config.task,
        "id_column": config.id_column,
        "rollout": {
            "mode": rollout.mode,
            "challenger": rollout.challenger,
            "share": rollout.challenger_share,
            "sticky_by": sticky_column(config),
        },
        "champion": served.champion.describe() if served.champion else None,
        "challenger": served.challenger.describe() if served.challenger else None,
        "registry": {
            "champion_version": seen.champion,
            "challenger_version": seen.challenger,
            "polled_at": seen.polled_at.isoformat(timespec="seconds") if seen.polled_at else None,
            "problems": list(seen.errors),
        },
        "prediction_log": prediction_log.stats()
        if isinstance(prediction_log, PredictionLog)
        else {"error": prediction_log},
        "shadow_rows_dropped": runtime.predictor.shadow_dropped[config.name],
    }
