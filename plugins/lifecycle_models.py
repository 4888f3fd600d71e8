"""The "Models" page in the Airflow UI: champion, challengers, scoring, drift, performance and rollout decisions per pipeline, and rollback.

An Airflow 3 plugin: a FastAPI app mounted at /lifecycle on the api-server, and an external view that
puts it in the navigation (the UI frames it at /plugin/models). The data and the HTML come from
`lifecycle.ui.models_page` (its templates, and its static files served here under /lifecycle/static/); this file
only does HTTP, authorisation and caching.

Authorisation is Airflow's own: every route needs a signed-in user (the UI's session cookie or a Bearer
token from /auth/token). A pipeline is shown to users who may read its `<pipeline>__retrain` DAG, and its
champion may be rolled back by users who may edit that DAG (`requires_access_dag(method="PUT")`) and, when
the pipeline's YAML names `access` roles, hold one of its rollbackers or Admin (`lifecycle.ui.access`).

Importing this module stays light (Airflow imports plugins in every task process): FastAPI, MLflow and
the rest are imported when the api-server first serves the app, and a root middleware warms MLflow up in
the background when the api-server starts, so the first page view does not pay for it.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name classes
# imported inside create_app().
import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin

PREFIX = "/lifecycle"
log = logging.getLogger(__name__)

_state: dict[str, Any] = {}
_lock = threading.Lock()  # the shared resources below
_app_lock = threading.Lock()  # building the app (not held while the warm-up creates the MLflow client)


# ------------------------------------------------------------------------------------- shared resources


def _configs() -> list[Any]:
    """The pipelines, re-read when a YAML file changes (a bad file is a ConfigError, as in the DAG processor)."""
    from lifecycle.config.pipeline import PIPELINES_DIR, load_all

    directory = Path(os.environ.get("PIPELINES_DIR", PIPELINES_DIR))
    signature = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in directory.glob("*.y*ml")))
    cached = _state.get("configs")
    if cached is None or cached[0] != (directory, signature):
        cached = ((directory, signature), load_all(directory))
        _state["configs"] = cached
    return cached[1]


def _client() -> Any:
    from lifecycle.config.settings import get_settings
    from lifecycle.registry.tracking import mlflow_client

    uri = get_settings().mlflow_tracking_uri
    with _lock:
        if _state.get("client_uri") != uri:
            _state["client"], _state["client_uri"] = mlflow_client(), uri
        return _state["client"]


def _database_url(conn_id: str) -> str:
    """The Airflow connection as a URL, looked up at most once a minute."""
    cached = _state.get(f"conn:{conn_id}")
    if cached and time.monotonic() - cached[1] < 60:
        return cached[0]
    from airflow.models.connection import Connection

    url = Connection.get_connection_from_secrets(conn_id).get_uri()
    _state[f"conn:{conn_id}"] = (url, time.monotonic())
    return url


def _engine(conn_id: str) -> Any:
    from lifecycle.persistence.predictions_db import engine_for

    url = _database_url(conn_id)
    with _lock:
        engines = _state.setdefault("engines", {})
        if url not in engines:
            engines[url] = engine_for(url)
        return engines[url]


def _warm_up() -> None:
    try:
        started = time.monotonic()
        client = _client()
        for config in _configs():
            client.get_experiment_by_name(f"lifecycle/{config.name}")
        import fastapi.responses  # noqa: F401  (what create_app() imports, so the heap below has it)

        import lifecycle.ui.models_page

        lifecycle.ui.models_page.preload_templates()

        # Move what the imports left (Airflow's, FastAPI's, MLflow's long-lived objects) out of the garbage
        # collector's way, as Airflow's DAG processor does: a page view builds thousands of objects, and
        # full collections over this heap otherwise cost it more than the queries do.
        gc.collect()
        gc.freeze()
        log.info("lifecycle models page: MLflow ready in %.1fs", time.monotonic() - started)
    except Exception:  # the page reports what is wrong when it is opened
        log.warning("lifecycle models page: warm-up failed", exc_info=True)


class WarmUpMiddleware:
    """A pass-through ASGI middleware; created only by the api-server, it warms MLflow up once per process."""

    def __init__(self, app: Any):
        self.app = app
        with _lock:
            if not _state.get("warming"):
                _state["warming"] = True
                threading.Thread(target=_warm_up, name="lifecycle-models-warm-up", daemon=True).start()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------------------- app


def create_app() -> Any:
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field

    from lifecycle.config.pipeline import ConfigError
    from lifecycle.persistence import storage
    from lifecycle.ui import access, models_page

    app = FastAPI(title="Lifecycle models", docs_url=None, redoc_url=None, openapi_url=None)
    # The page's CSS and script and the vendored Chart.js: the same for every user and holding no data, so
    # served without a sign-in (with ETag and Last-Modified, for the browser to revalidate its copy).
    app.mount("/static", StaticFiles(directory=models_page.STATIC, follow_symlink=False), name="static")

    def allowed(request: Request, user: Any, dag_id: str, method: str) -> bool:
        try:
            requires_access_dag(method=method, param_dag_id=dag_id)(request, user)
        except HTTPException as err:
            if err.status_code == 403:
                return False
            raise
        return True

    def links(request: Request) -> models_page.Links:
        root = request.scope.get("root_path", "").rstrip("/")
        airflow = root.removesuffix(PREFIX) if root.endswith(PREFIX) else ""
        return models_page.Links(app=root or PREFIX, airflow=airflow, mlflow_ui=os.environ.get("MLFLOW_UI_URL"))

    def readable(request: Request, user: Any) -> list[Any]:
        try:
            configs = _configs()
        except ConfigError as err:
            raise HTTPException(500, f"the pipeline configuration is invalid: {err}") from None
        return [c for c in configs if allowed(request, user, f"{c.name}__retrain", "GET")]

    def readable_pipeline(request: Request, user: Any, name: str) -> Any:
        found = next((c for c in readable(request, user) if c.name == name), None)
        if found is None:
            raise HTTPException(404, f"no pipeline {name!r} that you may read")
        return found

    def view_of(config: Any) -> Any:
        try:
            engine = _engine(config.prediction.conn_id)
        except Exception as err:  # no such connection: show MLflow's part and say so
            view = models_page.pipeline_view(config, _client(), None)
            view.errors.append(f"connection {config.prediction.conn_id!r} could not be used: {err}")
            return view
        return models_page.pipeline_view(config, _client(), engine)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, user: GetUserDep, pipeline: str | None = None) -> HTMLResponse:
        started = time.perf_counter()
        configs = readable(request, user)
        names = [c.name for c in configs]
        chosen = [c for c in configs if c.name == pipeline] if pipeline else configs[:1]
        if pipeline and not chosen:
            raise HTTPException(404, f"no pipeline {pipeline!r} that you may read")
        views = [view_of(c) for c in chosen]
        can = {
            c.name: allowed(request, user, f"{c.name}__retrain", "PUT") and not access.rollback_refusal(c, user)
            for c in chosen
        }
        body = models_page.render_page(
            views, names, links(request), can_rollback=can, user=user.get_name(), seconds=time.perf_counter() - started
        )
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    @app.get("/api/pipelines/{name}")
    def data(name: str, request: Request, user: GetUserDep) -> JSONResponse:
        return JSONResponse(view_of(readable_pipeline(request, user, name)).to_dict())

    def report(name: str, kind: str, run_id: str, request: Request, user: Any) -> Response:
        config = readable_pipeline(request, user, name)
        uri = storage.artifact_uri(config.name, run_id, kind, "report.html")
        try:
            page = storage.read_bytes(uri)
        except storage.ArtifactStoreError:
            if not storage.exists(uri):
                raise HTTPException(404, f"no {kind} report for run {run_id!r}") from None
            raise
        return Response(
            models_page.with_back_link(page, links(request).page(config.name)),
            media_type="text/html",
            headers={"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'"},
        )

    @app.get("/pipelines/{name}/runs/{run_id:path}/evaluation")
    def evaluation(name: str, run_id: str, request: Request, user: GetUserDep) -> Response:
        return report(name, "evaluation", run_id, request, user)

    @app.get("/pipelines/{name}/runs/{run_id:path}/drift")
    def drift(name: str, run_id: str, request: Request, user: GetUserDep) -> Response:
        return report(name, "drift", run_id, request, user)

    @app.get("/pipelines/{name}/mlflow/{mlflow_run_id}", response_class=HTMLResponse)
    def mlflow_run(name: str, mlflow_run_id: str, request: Request, user: GetUserDep) -> HTMLResponse:
        config = readable_pipeline(request, user, name)
        details = models_page.run_details(_client(), f"lifecycle/{config.name}", mlflow_run_id)
        if details is None:
            raise HTTPException(404, f"no MLflow run {mlflow_run_id!r} in pipeline {name!r}")
        return HTMLResponse(models_page.render_run(details, config.name, links(request)))

    class Rollback(BaseModel):
        version: int | str
        expected_current: int | str | None = None
        reason: str = Field("", max_length=500)

    def may_edit(name: str, request: Request, user: GetUserDep) -> Any:
        config = readable_pipeline(request, user, name)  # 404 for a pipeline the user may not read
        requires_access_dag(method="PUT", param_dag_id=f"{config.name}__retrain")(request, user)  # else 403
        # Edit on the DAG is not enough once the YAML names roles (FAB's User role edits every DAG, and
        # approvers edit this one to answer): one of its rollbackers, or Admin.
        refusal = access.rollback_refusal(config, user)
        if refusal:
            raise HTTPException(403, refusal)
        return config

    @app.post("/pipelines/{name}/rollback")
    def rollback(
        name: str, body: Rollback, request: Request, user: GetUserDep, config: Annotated[Any, Depends(may_edit)]
    ) -> dict:
        # A cross-site form cannot set this header: with the session cookie, only this page's script can.
        if request.headers.get("x-lifecycle-action") != "rollback":
            raise HTTPException(403, "send the header X-Lifecycle-Action: rollback")
        try:
            done = models_page.rollback(
                _client(),
                config.registered_model_name,
                body.version,
                user=user.get_name(),
                reason=body.reason,
                expected_current=body.expected_current,
                engine=_engine(config.prediction.conn_id),  # the registry history and the alias's lock
            )
        except models_page.RollbackError as err:
            raise HTTPException(err.status, str(err)) from None
        log.warning("lifecycle: %s rolled %s back to version %s", user.get_name(), config.name, done["champion"])
        return done

    return app


class LazyApp:
    """The ASGI app Airflow mounts: the FastAPI app is built on the first request, in the api-server only."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            with _app_lock:
                if self._app is None:
                    self._app = create_app()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return "lifecycle_models.LazyApp"


class LifecycleModelsPlugin(AirflowPlugin):
    name = "lifecycle_models"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": PREFIX, "name": "Lifecycle models"}]
    fastapi_root_middlewares = [{"middleware": WarmUpMiddleware, "args": [], "kwargs": {}, "name": "Lifecycle warm-up"}]
    external_views = [
        {
            "name": "Models",
            "href": "lifecycle/",
            "url_route": "models",
            "destination": "nav",
            "nav_top_level": True,
            "icon": "data:image/svg+xml;utf8,"
            "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' fill='none' stroke='%2364748b' "
            "stroke-width='2'><path d='M12 2 3 7l9 5 9-5-9-5Z'/><path d='m3 17 9 5 9-5'/><path d='m3 12 9 5 9-5'/></svg>",
        }
    ]
