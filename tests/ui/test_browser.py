"""The Airflow UI in a real browser: trigger a retrain from the form, see it on the models page, roll back.

A real local Airflow (api-server, scheduler, dag-processor, triggerer) runs the project's DAGs and plugin
on a free loopback port, with its own AIRFLOW_HOME, MLflow store, artifact root and predictions database
under the test's temporary folder. Debian's Chromium, driven by playwright-core from `tests/ui/browser.js`,
logs in through the login form, triggers `demo_churn__retrain` with non-default values (as-of date, a
30-day window, a one-candidate grid to keep the run short, a unique reason), and, once the run has
succeeded, opens "Models" from the navigation and checks the run and those values there, the performance
chart (rows the performance DAG would write, put in the predictions database by the test) as Chart.js drew it,
with a value in its tooltip when pointing at a point, the rollout decisions, the evaluation report, the link back to the run, and a rollback
through the page's confirm() dialog.

Set-up it does itself: `apt-get install chromium` when /usr/bin/chromium is missing (as root), and
`npm ci` when node_modules/playwright-core is missing. Screenshots go to test-artifacts/ui/ and the two the
README shows are copied to docs/img/ with UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from lifecycle.devtools.local_airflow import running_airflow, tail, unpause, wait_for_dag, wait_for_run

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
DOCS_IMG = REPO / "docs" / "img"
CHROMIUM = Path("/usr/bin/chromium")
DAG_ID = "demo_churn__retrain"
ONE_CANDIDATE = {"num_leaves": [15], "learning_rate": [0.1], "n_estimators": [100], "min_child_samples": [20]}


def _run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when it is missing and we are root."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0:
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            done = _run(command, timeout=1200, env=env)
            assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    version = _run([str(CHROMIUM), "--version"], timeout=60)
    assert version.returncode == 0, version.stderr
    return CHROMIUM


@pytest.fixture(scope="module")
def playwright() -> Path:
    """playwright-core from package-lock.json (npm ci), when node_modules does not have it yet."""
    module = REPO / "node_modules" / "playwright-core"
    if not module.exists():
        assert shutil.which("npm"), "npm is missing: install Node.js 20 or later with npm"
        done = _run(["npm", "ci", "--no-audit", "--no-fund"], timeout=600, cwd=REPO)
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return module


def _environment(tmp: Path, data_root: Path) -> dict[str, str]:
    """The services' environment: this session's, minus its Airflow settings, on stores of their own."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AIRFLOW__") and key not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")
    }
    (tmp / "airflow").mkdir(parents=True, exist_ok=True)
    env |= {
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # Only the run triggered from the form: unpausing must not start the cron's latest run too.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp / "mlartifacts"),
        "ARTIFACT_ROOT": f"file://{tmp / 'artifacts'}",
        "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{tmp / 'predictions.db'}",
        "DATA_ROOT": str(data_root),
        "LIFECYCLE_TASK_RETRIES": "0",
        "LIFECYCLE_RETRY_DELAY_SECONDS": "1",
    }
    return env


def _browser(phase: str, settings: dict, timeout: float = 240) -> dict:
    """Run one phase of tests/ui/browser.js; its JSON result (the test fails with its error otherwise)."""
    done = _run(
        ["node", str(REPO / "tests" / "ui" / "browser.js"), phase],
        timeout=timeout,
        cwd=REPO,
        env=dict(os.environ, UI_TEST=json.dumps(settings)),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    assert done.returncode == 0 and "error" not in result, (
        f"browser phase {phase!r} failed (screenshots in {ARTIFACTS}):\n{result.get('error') or done.stdout[-3000:]}"
        f"\n{done.stderr[-3000:]}"
    )
    return result


def _seed_performance(database_url: str) -> str:
    """A week of realised and estimated roc_auc for versions 1 and 2, and a rollout decision, as the performance
    and rollout DAGs write them; the hover text the page must show for one realised point."""
    import datetime as dt

    from lifecycle.persistence import performance_store, rollout_store
    from lifecycle.persistence.predictions_db import engine_for

    engine = engine_for(database_url)
    for i in range(7):
        day = dt.date(2026, 2, 14) + dt.timedelta(days=i)
        version, reference = ("1", 0.80) if i < 4 else ("2", 0.82)
        value = 0.79 - 0.01 * i
        rows = [{"metric": "roc_auc", "kind": "estimated", "value": value + 0.005, "rows": 400, "batch_rows": 400,
                 "reference": reference}]  # fmt: skip
        if i < 5:  # the last two days' labels have not arrived
            rows += [
                {"metric": "roc_auc", "kind": "realised", "value": value, "ci_low": value - 0.03,
                 "ci_high": value + 0.03, "rows": 300, "batch_rows": 400, "reference": reference},
                {"metric": "roc_auc", "kind": "estimate_error", "value": 0.005, "rows": 300, "batch_rows": 400,
                 "reference": reference},
            ]  # fmt: skip
        performance_store.replace_batch(engine, "performance_metrics", "demo_churn", day, version, rows, "ui-test")
    rollout_store.replace_decision(engine, {
        "pipeline": "demo_churn", "decided_on": dt.date(2026, 2, 20), "mode": "canary", "metric": "roc_auc",
        "champion_version": "1", "challenger_version": "2", "champion_rows": 900, "challenger_rows": 120,
        "champion_value": 0.78, "champion_ci_low": 0.75, "champion_ci_high": 0.81, "challenger_value": 0.79,
        "challenger_ci_low": 0.72, "challenger_ci_high": 0.85, "difference": 0.01, "difference_ci_low": -0.06,
        "difference_ci_high": 0.07, "paired": False, "decision": "extend", "reason": "ui-test: too few labelled rows",
        "airflow_run_id": "scheduled__2026-02-20T08:00:00+00:00",
    })  # fmt: skip
    engine.dispose()
    return "2026-02-16 · v1 · realised roc_auc 0.7700 [0.7400, 0.8000] on 300 of 400 rows labelled"


def _task_logs(airflow_home: Path, run_id: str) -> str:
    logs = sorted(airflow_home.glob(f"logs/dag_id={DAG_ID}/run_id={run_id}/task_id=*/attempt=*.log"))
    return "\n".join(f"--- {path.parent.name}:\n{tail(path, 15)}" for path in logs)


def test_a_retrain_triggered_from_the_form_shows_on_the_models_page(tmp_path, demo_data, chromium, playwright):
    import mlflow

    started = time.monotonic()
    env = _environment(tmp_path, demo_data.parent)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    reason = f"ui-test {uuid.uuid4().hex[:10]}"
    settings = {
        "chromium": str(chromium),
        "artifacts": str(ARTIFACTS),
        "dag_id": DAG_ID,
        "as_of": "2026-02-20",
        "window_days": 30,
        "grid": ONE_CANDIDATE,
        "reason": reason,
        "timeout_ms": 120_000,
    }
    timings = {}
    with running_airflow(env, log_dir=tmp_path / "logs", startup_timeout=300, grace=15) as airflow:
        timings["airflow_up"] = airflow.startup_seconds
        wait_for_dag(airflow, DAG_ID, timeout=240, poll=2)
        unpause(airflow, DAG_ID)
        settings |= {"base_url": airflow.base_url, "username": airflow.username, "password": airflow.password}

        triggered = _browser("trigger", settings)
        run_id = triggered["run_id"]
        timings["triggered"] = time.monotonic() - started
        run = wait_for_run(airflow, DAG_ID, run_id, timeout=480, poll=3)
        timings["run_finished"] = time.monotonic() - started
        assert run["state"] == "success", f"{run_id} ended {run['state']}:\n{_task_logs(tmp_path / 'airflow', run_id)}"
        # What the form sent is what the run got.
        conf = run["conf"]
        assert (conf["reason"], conf["window_days"], conf["as_of_date"], conf["grid"]) == (
            reason, 30, "2026-02-20", ONE_CANDIDATE,
        )  # fmt: skip

        # A second version of the same model, made champion, so that the page has one to roll back from.
        client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
        first = client.get_model_version_by_alias("demo_churn", "champion")
        assert str(first.version) == "1"
        source = first.source  # models:/m-<id>: resolved by hand, MLflow would ask its global tracking URI
        if source.startswith("models:/m-"):
            source = client.get_logged_model(source.removeprefix("models:/")).artifact_location
        second = client.create_model_version(
            "demo_churn", source, first.run_id, tags={"gate.reason": "registered by the browser test"}
        )
        client.set_registered_model_alias("demo_churn", "champion", second.version)
        hover = _seed_performance(env["AIRFLOW_CONN_PREDICTIONS_DB"])

        checked = _browser(
            "models",
            settings
            | {
                "run_id": run_id, "champion_before": 2, "rollback_to": 1, "rollback_reason": reason,
                "hover_point": {"batch": "2026-02-16", "version": "1"}, "hover_text": hover,
                "decision_reason": "ui-test: too few labelled rows",
            },
        )  # fmt: skip
        timings["models_checked"] = time.monotonic() - started

    assert reason in checked["row"] and "window 30 d" in checked["row"]
    assert checked["champion"] == "2" and checked["champion_after"] == "1"
    assert checked["page_errors"] == []
    # The performance chart, drawn by the vendored Chart.js: both kinds of marks, and pointing at a realised
    # point shows its value in the library's tooltip and in the readout under the chart.
    assert checked["performance"]["library"].startswith("4.")
    assert checked["performance"]["tooltip"] == hover and checked["performance"]["tooltip_opacity"] == 1
    assert checked["performance"]["readout"] == hover
    assert checked["performance"]["realised"] == 5 and checked["performance"]["estimated"] == 7
    assert checked["performance"]["width"] > 400
    # The rollback is in the registry, with who, when, from what and why.
    champion = client.get_model_version_by_alias("demo_churn", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["rollback.by"] == airflow.username and champion.tags["rollback.from"] == "2"
    assert champion.tags["rollback.reason"] == reason and champion.tags["rollback.at"]

    for name in ("trigger-form.png", "models-page.png"):
        assert (ARTIFACTS / name).read_bytes().startswith(b"\x89PNG")
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":  # refresh the README's pictures on purpose only
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ARTIFACTS / name, DOCS_IMG / name)
    print(f"\nUI test timings (s since start): {json.dumps({k: round(v) for k, v in timings.items()})}")
