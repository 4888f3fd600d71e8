"""The models plugin inside Airflow's own api-server app (in process): who may see it, who may roll back.

Airflow's FastAPI app is built as `airflow api-server` builds it, with SimpleAuthManager and two users: an
admin, and a viewer (may read DAGs, may not edit them). Tokens are the ones POST /auth/token would issue.
"""

from __future__ import annotations

import json
import secrets

import pytest

pytestmark = pytest.mark.airflow

PIPELINE = "demo_churn"
RUN_1, RUN_2 = "scheduled__2026-03-01T02:00:00+00:00", "manual__2026-03-02T09:00:00+00:00"


def _seed(client, root):
    """Two retrain runs, both promoted: versions 1 and 2 of the demo model, 2 the champion; one report."""
    from mlflow.entities import Metric

    from lifecycle.persistence import storage

    experiment = client.create_experiment(f"lifecycle/{PIPELINE}", artifact_location=(root / "mlartifacts").as_uri())
    client.create_registered_model(PIPELINE)
    for day, (airflow_run_id, auc) in enumerate([(RUN_1, 0.8), (RUN_2, 0.82)], start=1):
        run = client.create_run(
            experiment,
            run_name=airflow_run_id,
            tags={
                "airflow.dag_id": f"{PIPELINE}__retrain",
                "airflow.run_id": airflow_run_id,
                "trigger.reason": f"reason {day}",
                "trigger.params": json.dumps({"as_of_date": f"2026-03-0{day}", "reason": f"reason {day}"}),
                "gate.verdict": "promote",
                "gate.reason": "better",
            },
        )
        client.log_batch(run.info.run_id, metrics=[Metric("holdout_challenger_roc_auc", auc, 0, 0)])
        version = client.create_model_version(PIPELINE, f"{run.info.artifact_uri}/model", run.info.run_id)
        client.set_registered_model_alias(PIPELINE, "champion", version.version)
        client.set_terminated(run.info.run_id)
    storage.write_bytes(
        storage.artifact_uri(PIPELINE, RUN_2, "evaluation", "report.html"),
        b"<!doctype html><html><body><h1>evaluation of run 2</h1></body></html>",
    )


@pytest.fixture(scope="module")
def airflow_app(airflow_db, tmp_path_factory):
    import mlflow
    from fastapi.testclient import TestClient

    root = tmp_path_factory.mktemp("plugin")
    patch = pytest.MonkeyPatch()
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "ARTIFACT_ROOT": f"file://{root / 'artifacts'}",
        "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{root / 'predictions.db'}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
    }
    for key, value in env.items():
        patch.setenv(key, value)
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    _seed(client, root)

    from airflow.api_fastapi.app import create_app, get_auth_manager, purge_cached_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    purge_cached_app()
    app = create_app("core")
    manager = get_auth_manager()
    tokens = {
        role: manager.generate_jwt(SimpleAuthManagerUser(username=f"{role}-user", role=role))
        for role in ("admin", "viewer")
    }
    with TestClient(app) as http:
        yield {"http": http, "tokens": tokens, "mlflow": client}
    purge_cached_app()
    patch.undo()


def _auth(app, role):
    return {"Authorization": f"Bearer {app['tokens'][role]}"}


def _champion(app) -> str:
    return str(app["mlflow"].get_model_version_by_alias(PIPELINE, "champion").version)


ROLLBACK = f"/lifecycle/pipelines/{PIPELINE}/rollback"
HEADER = {"X-Lifecycle-Action": "rollback"}


def test_the_plugin_is_registered_with_its_navigation_entry(airflow_app):
    answer = airflow_app["http"].get("/api/v2/plugins", headers=_auth(airflow_app, "admin"))
    assert answer.status_code == 200, answer.text
    plugin = next(p for p in answer.json()["plugins"] if p["name"] == "lifecycle_models")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/lifecycle"
    view = plugin["external_views"][0]
    assert (view["name"], view["href"], view["url_route"], view["destination"]) == (
        "Models",
        "lifecycle/",
        "models",
        "nav",
    )


def test_nothing_is_served_to_an_unauthenticated_request(airflow_app):
    http = airflow_app["http"]
    for path in (
        "/lifecycle/",
        f"/lifecycle/api/pipelines/{PIPELINE}",
        f"/lifecycle/pipelines/{PIPELINE}/runs/{RUN_2}/evaluation",
    ):
        assert http.get(path).status_code == 401, path
    refused = http.post(ROLLBACK, json={"version": 1}, headers=HEADER)
    assert refused.status_code == 401
    assert http.post(
        ROLLBACK, json={"version": 1}, headers={**HEADER, "Authorization": "Bearer nonsense"}
    ).status_code in (401, 403)
    assert _champion(airflow_app) == "2"


def test_a_viewer_sees_the_page_but_may_not_roll_back(airflow_app):
    http = airflow_app["http"]
    page = http.get("/lifecycle/", headers=_auth(airflow_app, "viewer"))
    assert page.status_code == 200
    assert '<span id="champion-version">2</span>' in page.text and "reason 2" in page.text
    assert 'id="rollback-form"' not in page.text and "needs permission" in page.text
    # No performance or rollout table in the predictions database yet: the sections say so, nothing breaks.
    assert "No performance has been recorded yet" in page.text and "No rollout decision yet" in page.text
    # Links point at Airflow's UI (the mount's parent) and at this app.
    assert 'href="/dags/demo_churn__retrain/runs/manual__2026-03-02T09%3A00%3A00%2B00%3A00"' in page.text
    assert (
        'href="/lifecycle/pipelines/demo_churn/runs/manual__2026-03-02T09%3A00%3A00%2B00%3A00/evaluation"' in page.text
    )

    refused = http.post(ROLLBACK, json={"version": 1}, headers={**HEADER, **_auth(airflow_app, "viewer")})
    assert refused.status_code == 403
    assert _champion(airflow_app) == "2"


def test_reports_and_runs_are_served_from_the_stores(airflow_app):
    http, headers = airflow_app["http"], _auth(airflow_app, "viewer")
    report = http.get(f"/lifecycle/pipelines/{PIPELINE}/runs/{RUN_2}/evaluation", headers=headers)
    assert report.status_code == 200 and "evaluation of run 2" in report.text
    assert report.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in report.headers["content-security-policy"]
    assert 'href="/lifecycle/?pipeline=demo_churn"' in report.text  # the way back
    assert http.get(f"/lifecycle/pipelines/{PIPELINE}/runs/{RUN_1}/evaluation", headers=headers).status_code == 404
    assert http.get(f"/lifecycle/pipelines/{PIPELINE}/runs/..%2F..%2Fx/drift", headers=headers).status_code == 404
    assert http.get("/lifecycle/pipelines/nope/runs/x/drift", headers=headers).status_code == 404

    data = http.get(f"/lifecycle/api/pipelines/{PIPELINE}", headers=headers).json()
    assert data["champion"]["version"] == 2 and [v["version"] for v in data["versions"]] == [2, 1]
    assert data["performance"]["metric"] == "roc_auc" and data["performance"]["points"] == []
    assert data["decisions"] == []
    run = data["runs"][0]["mlflow_run_id"]
    shown = http.get(f"/lifecycle/pipelines/{PIPELINE}/mlflow/{run}", headers=headers)
    assert shown.status_code == 200 and RUN_2 in shown.text
    assert http.get(f"/lifecycle/pipelines/{PIPELINE}/mlflow/{'0' * 32}", headers=headers).status_code == 404


def test_the_page_s_static_files_are_served_where_its_relative_links_point(airflow_app):
    """The page links static/...; served at /lifecycle/, those are /lifecycle/static/... on the api-server."""
    import re

    from lifecycle.ui import models_page

    http = airflow_app["http"]
    page = http.get("/lifecycle/", headers=_auth(airflow_app, "viewer")).text
    linked = re.findall(r'(?:src|href)="(static/[^"]+)"', page)
    assert len(linked) == 3, linked
    types = {".css": "text/css", ".js": "text/javascript"}
    for url in linked:
        # Holding no data, they need no sign-in (the page itself does).
        answer = http.get(f"/lifecycle/{url}")
        assert answer.status_code == 200, url
        assert answer.headers["content-type"].startswith(types[url[url.rindex(".") :]]), answer.headers
        assert answer.content == (models_page.STATIC / url.removeprefix("static/")).read_bytes()
        assert answer.headers.get("etag")
    assert b"Chart.js v4." in http.get("/lifecycle/static/vendor/chart.umd.min.js").content
    for outside in ("/lifecycle/static/../models_page.py", "/lifecycle/static/%2e%2e/models_page.py",
                    "/lifecycle/static/models_page/nope.js"):  # fmt: skip
        assert http.get(outside).status_code == 404, outside
    # The MLflow run page sits three levels down and links the same files.
    run = http.get(f"/lifecycle/api/pipelines/{PIPELINE}", headers=_auth(airflow_app, "viewer")).json()["runs"][0]
    shown = http.get(
        f"/lifecycle/pipelines/{PIPELINE}/mlflow/{run['mlflow_run_id']}", headers=_auth(airflow_app, "viewer")
    )
    assert 'href="../../../static/models_page/models.css"' in shown.text


def test_an_admin_rolls_back_and_the_version_records_who_and_when(airflow_app):
    http, headers = airflow_app["http"], _auth(airflow_app, "admin")
    page = http.get("/lifecycle/", headers=headers)
    assert 'id="rollback-form"' in page.text

    # Only this page's script sends the header: a plain cross-site form post is refused.
    assert http.post(ROLLBACK, json={"version": 1}, headers=headers).status_code == 403
    # A stale page (the champion moved since it was loaded) changes nothing.
    stale = http.post(ROLLBACK, json={"version": 1, "expected_current": 1}, headers={**HEADER, **headers})
    assert stale.status_code == 409 and _champion(airflow_app) == "2"

    done = http.post(
        ROLLBACK,
        json={"version": "1", "expected_current": "2", "reason": "v2 misbehaves"},
        headers={**HEADER, **headers},
    )
    assert done.status_code == 200, done.text
    assert done.json()["champion"] == 1 and done.json()["by"] == "admin-user"
    version = airflow_app["mlflow"].get_model_version_by_alias(PIPELINE, "champion")
    assert str(version.version) == "1"
    assert version.tags["rollback.by"] == "admin-user" and version.tags["rollback.from"] == "2"
    assert version.tags["rollback.reason"] == "v2 misbehaves" and version.tags["rollback.at"].endswith("+00:00")

    page = http.get("/lifecycle/", headers=headers).text
    assert '<span id="champion-version">1</span>' in page and "by admin-user" in page


def test_importing_the_plugin_stays_light():
    """Airflow imports plugins in every task process: the page's dependencies wait for the api-server."""
    import subprocess
    import sys
    from pathlib import Path

    plugin = Path(__file__).resolve().parents[2] / "plugins" / "lifecycle_models.py"
    code = f"""
import importlib.util, sys
import airflow.plugins_manager
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("lifecycle_models", {str(plugin)!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(" ".join(sorted(set(sys.modules) - before)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    imported = {name.split(".")[0] for name in done.stdout.split()}
    assert not imported & {"fastapi", "starlette", "mlflow", "sqlalchemy", "pandas", "lifecycle"}, imported
