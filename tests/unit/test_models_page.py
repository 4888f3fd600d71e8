"""The models page's data layer and rendering, on a small temporary MLflow store and SQLite predictions DB."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lifecycle.persistence import drift_store, performance_store, rollout_store
from lifecycle.persistence.predictions_db import COLUMNS, engine_for, write_batch
from lifecycle.ui import models_page

DAY_MS = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class CountingClient:
    """An MlflowClient that counts the calls made through it."""

    def __init__(self, client: Any):
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attribute(*args, **kwargs)

        return call


def seed_retrain(
    client: Any,
    experiment_id: str,
    model: str,
    *,
    dag_id: str,
    airflow_run_id: str,
    day: int,
    as_of: str,
    reason: str,
    verdict: str,
    auc: float,
    register: bool,
    window_days: int = 35,
    grid: dict | None = None,
) -> tuple[str, int | None]:
    """One retrain run as lifecycle.tasks.retraining logs it; registered (and made champion) when `register`."""
    from mlflow.entities import Metric

    params = {"as_of_date": as_of, "reason": reason, "search": "halving", "window_days": window_days}
    if grid is not None:
        params["grid"] = grid
    run = client.create_run(
        experiment_id,
        run_name=airflow_run_id,
        start_time=T0 + day * DAY_MS,
        tags={
            "airflow.dag_id": dag_id,
            "airflow.run_id": airflow_run_id,
            "trigger.reason": reason,
            "trigger.params": json.dumps(params, sort_keys=True),
            "gate.verdict": verdict,
            "gate.reason": f"{verdict}: challenger roc_auc {auc}",
        },
    )
    run_id = run.info.run_id
    metrics = {"roc_auc": auc, "pr_auc": auc / 2, "log_loss": 0.3}
    client.log_batch(
        run_id,
        metrics=[Metric(f"holdout_challenger_{k}", v, T0, 0) for k, v in metrics.items()]
        + [Metric("holdout_baseline_roc_auc", auc - 0.05, T0, 0)],
    )
    version = None
    if register:
        created = client.create_model_version(
            model,
            source=f"{run.info.artifact_uri}/model",
            run_id=run_id,
            tags={"gate.verdict": verdict, "gate.reason": f"{verdict}: challenger roc_auc {auc}"},
        )
        version = int(created.version)
        client.set_registered_model_alias(model, "champion", version)
        client.set_tag(run_id, "registered_version", str(version))
    client.set_terminated(run_id)
    return run_id, version


def drift_result(values: dict[str, float], psi: float = 0.2, js: float = 0.1) -> dict[str, Any]:
    features = {}
    for name, value in values.items():
        categorical = name.startswith("cat_")
        threshold = js if categorical else psi
        features[name] = {
            "kind": "categorical" if categorical else "numeric",
            "metric": "jensen_shannon" if categorical else "psi",
            "value": value,
            "threshold": threshold,
            "drifted": value > threshold,
            "test": "chi2" if categorical else "ks",
            "statistic": 0.1,
            "p_value": 0.5,
        }
    prediction = dict(features[next(iter(values))], kind="prediction", value=0.05, drifted=False)
    drifted = sum(f["drifted"] for f in features.values())
    return {
        "features": features,
        "prediction": prediction,
        "performance": None,
        "drifted_share": drifted / len(features),
        "dataset_drift": drifted >= 1,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow SQLite store for the module: the demo pipeline with three retrain runs and two versions."""
    import mlflow

    root = tmp_path_factory.mktemp("models_page")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {"root": root, "client": client}


@pytest.fixture(scope="module")
def demo(store, make_config):
    config = make_config()
    client = store["client"]
    experiment = client.create_experiment("lifecycle/demo_churn", artifact_location=(store["root"] / "art").as_uri())
    client.create_registered_model(config.registered_model_name)
    dag_id = "demo_churn__retrain"
    runs = [
        seed_retrain(client, experiment, "demo_churn", dag_id=dag_id, airflow_run_id="scheduled__2026-03-01T02:00:00+00:00",
                     day=1, as_of="2026-03-01", reason="scheduled", verdict="promote", auc=0.80, register=True),
        seed_retrain(client, experiment, "demo_churn", dag_id=dag_id, airflow_run_id="manual__2026-03-02T09:00:00+00:00",
                     day=2, as_of="2026-03-02", reason="try a wider window", verdict="reject", auc=0.79,
                     register=False, window_days=60, grid={"num_leaves": [63]}),
        seed_retrain(client, experiment, "demo_churn", dag_id=dag_id, airflow_run_id="manual__2026-03-03T09:00:00+00:00",
                     day=3, as_of="2026-03-03", reason="<script>alert(1)</script>", verdict="promote", auc=0.83,
                     register=True),
    ]  # fmt: skip
    # A candidate (nested) run and a drift run in the same experiment: not retrain runs.
    client.create_run(experiment, tags={"mlflow.parentRunId": runs[0][0]})
    client.create_run(experiment, tags={"lifecycle.kind": "drift", "airflow.run_id": "drift__1"})

    database = engine_for(f"sqlite:///{store['root'] / 'predictions.db'}")
    for i, (rows, version) in enumerate([(300, "1"), (250, "2"), (400, "2")]):
        key = dt.date(2026, 3, 6 + i)
        scored = [
            ("demo_churn", key, str(n), 0.5, "0", "demo_churn", version, f"predict__{i}", dt.datetime.now(dt.UTC))
            for n in range(rows)
        ]
        assert len(scored[0]) == len(COLUMNS)
        write_batch(database, "predictions", "demo_churn", key, [scored])
    drift = [{"sessions_30d": 0.05, "monthly_spend": 0.1, "cat_device": 0.02},
             {"sessions_30d": 0.15, "monthly_spend": 0.35, "cat_device": 0.04},
             {"sessions_30d": 0.3, "monthly_spend": 0.5, "cat_device": 0.2}]  # fmt: skip
    for i, values in enumerate(drift):
        key = dt.date(2026, 3, 6 + i)
        drift_store.record(database, "drift_metrics", "demo_churn", key, drift_result(values), "2", f"drift__{i}")
    # Another pipeline's rows in the same tables are not this pipeline's.
    write_batch(database, "predictions", "other", dt.date(2026, 3, 6), [[("other", dt.date(2026, 3, 6), "1", 0.1,
                "0", "other", "1", "x", dt.datetime.now(dt.UTC))]])  # fmt: skip
    seed_performance(database)
    seed_decisions(database)
    return {"config": config, "client": client, "engine": database, "experiment": experiment, "runs": runs}


def perf(kind: str, value: float, rows: int, batch_rows: int, reference: float, ci: tuple | None = None,
         metric: str = "roc_auc") -> dict[str, Any]:  # fmt: skip
    low, high = ci or (None, None)
    return {"metric": metric, "kind": kind, "value": value, "ci_low": low, "ci_high": high, "rows": rows,
            "batch_rows": batch_rows, "reference": reference}  # fmt: skip


def seed_performance(engine: sa.Engine) -> None:
    """What the performance DAG writes: realised where labels arrived, the estimate for every batch, its error."""
    write = performance_store.replace_batch
    table = "performance_metrics"
    write(engine, table, "demo_churn", dt.date(2026, 3, 6), "1", [
        perf("realised", 0.78, 280, 300, 0.80, (0.74, 0.82)), perf("estimated", 0.79, 300, 300, 0.80),
        perf("estimate_error", 0.01, 280, 300, 0.80), perf("realised", 0.5, 280, 300, 0.4, metric="pr_auc"),
    ], "perf__1")  # fmt: skip
    write(engine, table, "demo_churn", dt.date(2026, 3, 7), "2", [
        perf("realised", 0.76, 120, 250, 0.83, (0.71, 0.80)), perf("estimated", 0.80, 250, 250, 0.83, (0.77, 0.83)),
        perf("estimate_error", 0.04, 120, 250, 0.83),
    ], "perf__2")  # fmt: skip
    # The same day re-scored by version 1 (a backfill): two versions in one batch.
    write(engine, table, "demo_churn", dt.date(2026, 3, 7), "1", [perf("estimated", 0.81, 250, 250, 0.80)], "perf__2")
    # The newest batch: no labels yet, only the estimate (below version 2's trigger of 0.83 - 0.05).
    write(engine, table, "demo_churn", dt.date(2026, 3, 8), "2", [perf("estimated", 0.77, 400, 400, 0.83)], "perf__3")
    write(engine, table, "other", dt.date(2026, 3, 8), "<b>9</b>", [perf("estimated", 0.1, 1, 1, 0.2)], "perf__x")


def decision(day: dt.date, decision: str, reason: str, pipeline: str = "demo_churn", **values: Any) -> dict:
    return {
        "pipeline": pipeline, "decided_on": day, "mode": "canary", "metric": "roc_auc", "champion_version": "2",
        "challenger_version": "3", "champion_rows": 1500, "challenger_rows": 160, "champion_value": 0.81,
        "champion_ci_low": 0.79, "champion_ci_high": 0.83, "challenger_value": 0.83, "challenger_ci_low": 0.77,
        "challenger_ci_high": 0.88, "difference": 0.02, "difference_ci_low": -0.04, "difference_ci_high": 0.07,
        "paired": False, "decision": decision, "reason": reason, "airflow_run_id": f"scheduled__{day}", **values,
    }  # fmt: skip


def seed_decisions(engine: sa.Engine) -> None:
    rollout_store.replace_decision(engine, decision(dt.date(2026, 3, 8), "extend", "fewer than 200 labelled rows"))
    rollout_store.replace_decision(
        engine,
        decision(dt.date(2026, 3, 9), "abort", "challenger worse: <img src=x onerror=alert(1)>", challenger_rows=410,
                 difference=-0.06, difference_ci_low=-0.09, difference_ci_high=-0.03, challenger_value=0.75),
    )  # fmt: skip
    rollout_store.replace_decision(engine, decision(dt.date(2026, 3, 9), "promote", "not ours", pipeline="other"))


def test_the_view_reads_mlflow_and_the_database_in_few_calls(demo):
    client = CountingClient(demo["client"])
    view = models_page.pipeline_view(demo["config"], client, demo["engine"])

    assert view.errors == []
    # MLflow: experiment, retrain runs, registered model (aliases), versions; no call per run or version.
    assert len(client.calls) == view.mlflow_calls <= 5, client.calls
    assert client.calls.count("search_runs") == 1
    assert view.sql_queries == 5  # rows per batch, drift per feature, registry history, performance, rollout

    assert [r.as_of for r in view.runs] == ["2026-03-03", "2026-03-02", "2026-03-01"]  # newest first
    wider = view.runs[1]
    assert (wider.verdict, wider.reason, wider.window_days, wider.grid_is_default) == (
        "reject", "try a wider window", 60, False,
    )  # fmt: skip
    assert wider.airflow_run_id == "manual__2026-03-02T09:00:00+00:00"
    assert wider.primary == pytest.approx(0.79) and wider.baseline_primary == pytest.approx(0.74)
    assert view.runs[0].registered_version == 2 and view.runs[1].registered_version is None
    assert view.runs[2].grid_is_default

    assert [v.version for v in view.versions] == [2, 1]
    assert view.versions[0].aliases == ["champion"] and view.versions[1].aliases == []
    assert view.versions[1].primary == pytest.approx(0.80)
    assert view.versions[1].airflow_run_id == "scheduled__2026-03-01T02:00:00+00:00"

    champion = view.champion
    assert champion.version == 2 and champion.how == "gate"
    assert champion.holdout["roc_auc"] == pytest.approx(0.83)
    assert "promote: challenger roc_auc 0.83" in champion.why and "<script>" in champion.why
    assert dt.datetime.fromisoformat(champion.promoted_at).tzinfo is not None  # registration time, ISO-8601

    assert view.latest_evaluation_run == "manual__2026-03-03T09:00:00+00:00"
    assert [(b.batch_key, b.rows, b.model_versions) for b in view.batches] == [
        ("2026-03-06", 300, ["1"]), ("2026-03-07", 250, ["2"]), ("2026-03-08", 400, ["2"]),
    ]  # fmt: skip
    assert view.psi.batches == ["2026-03-06", "2026-03-07", "2026-03-08"]
    assert view.psi.threshold == pytest.approx(0.2)
    assert view.psi.values["monthly_spend"] == pytest.approx([0.1, 0.35, 0.5])
    assert view.psi.values["prediction"] == pytest.approx([0.05, 0.05, 0.05])
    assert view.psi.drifted == {"sessions_30d": 1, "monthly_spend": 2, "prediction": 0}
    assert set(view.js.values) == {"cat_device"} and view.js.threshold == pytest.approx(0.1)
    assert view.latest_drift == {"batch_key": "2026-03-08", "airflow_run_id": "drift__2"}
    json.dumps(view.to_dict())  # the JSON endpoint's payload


def test_only_the_newest_batches_and_runs_are_read(demo):
    view = models_page.pipeline_view(demo["config"], demo["client"], demo["engine"], max_runs=2, max_batches=2)
    assert [r.as_of for r in view.runs] == ["2026-03-03", "2026-03-02"]
    # The version of the run outside the window still gets its metric (one more search, not one per run).
    assert view.versions[1].primary == pytest.approx(0.80) and view.mlflow_calls == 5
    assert [b.batch_key for b in view.batches] == ["2026-03-07", "2026-03-08"]
    assert view.psi.batches == ["2026-03-07", "2026-03-08"]


def test_an_empty_store_and_database_give_an_empty_view(store, make_config, tmp_path):
    config = make_config(name="nothing_yet")
    view = models_page.pipeline_view(config, store["client"], engine_for(f"sqlite:///{tmp_path / 'p.db'}"))
    assert (view.errors, view.champion, view.runs, view.versions, view.batches, view.psi) == (
        [],
        None,
        [],
        [],
        [],
        None,
    )
    assert (view.performance.points, view.decisions) == ([], [])
    page = models_page.render_page([view], ["nothing_yet"], models_page.Links(), can_rollback={"nothing_yet": True})
    assert "No champion yet" in page and "No retrain run yet" in page and "No batch has been scored yet" in page
    assert 'id="rollback-form"' not in page
    # Neither the performance nor the decisions table exists yet: each section says so, and which DAG fills it.
    assert 'id="chart-performance"' not in page and 'id="performance"' not in page
    assert "No performance has been recorded yet" in page and "<code>nothing_yet__performance</code>" in page
    assert "No rollout decision yet" in page and "<code>nothing_yet__rollout</code>" in page
    assert "serving.rollout.mode is <code>none</code>" in page


def test_an_unreadable_store_is_shown_as_an_error_not_a_crash(make_config, tmp_path):
    class Broken:
        def __getattr__(self, name):
            raise ConnectionError("tracking server down")

    view = models_page.pipeline_view(make_config(), Broken(), engine_for(f"sqlite:///{tmp_path / 'p.db'}"))
    assert view.errors == ["MLflow could not be read: ConnectionError: tracking server down"]
    assert "tracking server down" in models_page.render_page(
        [view], ["demo_churn"], models_page.Links(), can_rollback={}
    )


def _chart(page: str, chart_id: str) -> dict:
    """The data a chart's canvas draws, as the page embeds it (JSON in a script element of its own)."""
    assert re.search(rf'<canvas id="{chart_id}"[^>]* data-chart="{chart_id}-data"', page), chart_id
    found = re.search(rf'<script type="application/json" id="{chart_id}-data">(.*?)</script>', page, re.S)
    assert found, chart_id
    return json.loads(found.group(1))


def _rows(dataset: dict) -> list[dict]:
    """A dataset's columns (x, y, text, r, champion) as one dict per point."""
    keys = [k for k in ("x", "y", "text", "r", "champion") if k in dataset]
    return [dict(zip(keys, values, strict=True)) for values in zip(*(dataset[k] for k in keys), strict=True)]


def _points(data: dict, role: str) -> list[dict]:
    return [p for d in data["datasets"] if d["role"] == role for p in _rows(d) if p["y"] is not None]


def _marks(data: dict, role: str) -> list[tuple[str, str, dict]]:
    """(batch, version, point) of a role's points: the batch is the x label nearest the point (versions scored
    on the same batch sit side by side around it), the version its dataset's."""
    return [(data["x_labels"][round(p["x"])], d["version"], p) for d in data["datasets"] if d["role"] == role
            for p in _rows(d) if p["y"] is not None]  # fmt: skip


def test_the_page_shows_runs_links_charts_and_escapes_what_it_shows(demo):
    view = models_page.pipeline_view(demo["config"], demo["client"], demo["engine"])
    links = models_page.Links(app="/base/lifecycle", airflow="/base")
    page = models_page.render_page(
        [view], ["demo_churn", "other"], links, can_rollback={"demo_churn": True}, user="ann"
    )

    assert '<span id="champion-version">2</span>' in page
    assert "try a wider window" in page and "window 60 d" in page and "{&#34;num_leaves&#34;: [63]}" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Links: the Airflow run (id quoted), the MLflow run view, the reports, all under the given roots.
    assert 'href="/base/dags/demo_churn__retrain/runs/manual__2026-03-02T09%3A00%3A00%2B00%3A00"' in page
    mlflow_run = demo["runs"][1][0]
    assert f'href="/base/lifecycle/pipelines/demo_churn/mlflow/{mlflow_run}"' in page
    assert (
        'href="/base/lifecycle/pipelines/demo_churn/runs/manual__2026-03-03T09%3A00%3A00%2B00%3A00/evaluation"' in page
    )
    assert 'href="/base/lifecycle/pipelines/demo_churn/runs/drift__2/drift"' in page
    # Charts: the metric per version (the champion marked), rows per batch, PSI with its threshold, JS distance.
    metric = _chart(page, "chart-metric")
    assert [(metric["x_labels"][p["x"]], p["y"], bool(p.get("champion"))) for p in _points(metric, "metric")] == [
        ("v1", pytest.approx(0.80), False), ("v2", pytest.approx(0.83), True),
    ]  # fmt: skip
    assert metric["datasets"][0]["text"][-1] == "version 2: roc_auc 0.8300 (champion)"
    rows = _chart(page, "chart-rows")
    assert [p["text"] for p in _points(rows, "bar")][-1] == "2026-03-08: 400 rows (model version 2)"
    psi = _chart(page, "chart-psi")
    assert [d["label"] for d in psi["datasets"]] == ["monthly_spend", "prediction", "sessions_30d", "threshold 0.2"]
    assert [p["y"] for p in _points(psi, "threshold")] == [0.2, 0.2]
    # The drifted batches are marked (and said so on hover): monthly_spend over 0.2 on the last two batches.
    spend = next(d for d in psi["datasets"] if d["label"] == "monthly_spend")
    assert (spend["x"], spend["y"], spend["r"], spend["drifted"], spend["digits"]) == (
        [0, 1, 2], [0.1, 0.35, 0.5], [None, 3, 3], [1, 2], 3,
    )  # fmt: skip
    assert [d["label"] for d in _chart(page, "chart-js")["datasets"]] == ["cat_device", "threshold 0.1"]
    assert "sessions_30d <b>(1 over)</b>" in page  # the legend
    # Rollback: to version 1 only, with the expected champion sent along (the script posts it).
    form = re.search(r'<form class="rollback".*?</form>', page, re.S).group(0)
    assert 'action="/base/lifecycle/pipelines/demo_churn/rollback"' in form and 'data-current="2"' in form
    assert re.findall(r'<option value="(\d+)"', form) == ["1"]
    assert "Signed in as ann" in page

    assert "(UI)</a>" not in page
    with_ui = models_page.Links(mlflow_ui="http://127.0.0.1:5000/")
    page = models_page.render_page([view], ["demo_churn"], with_ui, can_rollback={})
    assert f'href="http://127.0.0.1:5000/#/experiments/{demo["experiment"]}/runs/{mlflow_run}"' in page

    readonly = models_page.render_page([view], ["demo_churn"], links, can_rollback={"demo_churn": False})
    assert 'id="rollback-form"' not in readonly and "needs permission" in readonly


def test_the_page_links_its_static_files_and_the_script_confirms_and_sends_the_expected_champion(demo):
    view = models_page.pipeline_view(demo["config"], demo["client"], demo["engine"])
    page = models_page.render_page([view], ["demo_churn"], models_page.Links(), can_rollback={"demo_churn": True})
    # Relative to the page (<app>/): the same URLs work framed at /plugin/models and under any base path.
    linked = re.findall(r'(?:src|href)="(static/[^"]+)"', page)
    assert linked == ["static/models_page/models.css", "static/vendor/chart.umd.min.js", "static/models_page/models.js"]
    for url in linked:
        assert (models_page.STATIC / url.removeprefix("static/")).is_file(), url
    assert "<style" not in page and not re.search(r"<script>|<script src=\"http", page)  # no inline code, no CDN
    script = (models_page.STATIC / "models_page" / "models.js").read_text()
    assert (
        ".confirm(question)" in script and "expected_current" in script and "'X-Lifecycle-Action': 'rollback'" in script
    )
    chartjs = (models_page.STATIC / "vendor" / "chart.umd.min.js").read_text()
    assert (
        chartjs.startswith("/*!\n * Chart.js v4.") and (models_page.STATIC / "vendor" / "chart.js.LICENSE.md").is_file()
    )
    run = models_page.render_run(
        {"run_id": "r", "run_name": "n", "status": "FINISHED", "started": None, "ended": None, "experiment": "e",
         "artifact_uri": "a", "tags": {}, "metrics": {}, "params": {}}, "p", models_page.Links(),
    )  # fmt: skip
    # A run is served at <app>/pipelines/<p>/mlflow/<id>: three levels under <app>.
    assert 'href="../../../static/models_page/models.css"' in run


def test_templates_autoescape_and_refuse_undefined_names():
    hostile = "<script>alert('x')</script>"
    view = models_page.PipelineView(hostile, hostile, "d", hostile, True)
    view.errors.append(hostile)
    page = models_page.render_page([view], [hostile], models_page.Links(), can_rollback={}, user=hostile)
    assert hostile not in page and "<script>alert" not in page
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
    assert page.count(escaped) >= 6  # nav, heading, model, metric, error, user ...
    assert f'<section class="pipeline" id="pipeline-{escaped}">' in page
    env = models_page.environment()
    assert env.autoescape("page.html") is True
    assert models_page.preload_templates() == len(list((models_page.TEMPLATES / "models_page").glob("*.html")))
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        env.get_template("models_page/run.html").render(links=models_page.Links(), static="static")


def test_rollback_moves_the_alias_and_records_who_when_and_why(store, make_config, tmp_path):
    from lifecycle.persistence.predictions_db import engine_for

    engine = engine_for(f"sqlite:///{tmp_path / 'predictions.db'}")
    client = store["client"]
    config = make_config(name="rollback_demo")
    experiment = client.create_experiment("lifecycle/rollback_demo")
    client.create_registered_model("rollback_demo")
    for day in (1, 2):
        seed_retrain(client, experiment, "rollback_demo", dag_id="rollback_demo__retrain", airflow_run_id=f"r{day}",
                     day=day, as_of=f"2026-03-0{day}", reason="r", verdict="promote", auc=0.8, register=True)  # fmt: skip

    with pytest.raises(models_page.RollbackError) as stale:
        models_page.rollback(client, "rollback_demo", 1, user="ann", expected_current=1, engine=engine)
    assert stale.value.status == 409
    for version, status in ((2, 409), (7, 404), ("1; drop", 400)):
        with pytest.raises(models_page.RollbackError) as refused:
            models_page.rollback(client, "rollback_demo", version, user="ann", engine=engine)
        assert refused.value.status == status
    assert str(client.get_model_version_by_alias("rollback_demo", "champion").version) == "2"

    when = dt.datetime(2026, 3, 4, 12, 30, tzinfo=dt.UTC)
    done = models_page.rollback(
        client, "rollback_demo", "1", user="ann", reason="v2 misbehaves", expected_current="2", now=when, engine=engine
    )
    assert done == {
        "model": "rollback_demo",
        "champion": 1,
        "previous": "2",
        "by": "ann",
        "at": "2026-03-04T12:30:00+00:00",
    }
    version = client.get_model_version_by_alias("rollback_demo", "champion")
    assert str(version.version) == "1"
    assert {k: v for k, v in version.tags.items() if k.startswith("rollback.")} == {
        "rollback.by": "ann", "rollback.at": "2026-03-04T12:30:00+00:00", "rollback.from": "2",
        "rollback.reason": "v2 misbehaves",
    }  # fmt: skip

    view = models_page.pipeline_view(config, client, None)
    assert view.champion.version == 1 and view.champion.how == "rollback" and view.champion.by == "ann"
    assert view.champion.promoted_at == "2026-03-04T12:30:00+00:00"
    assert view.champion.why == "rolled back from version 2: v2 misbehaves"
    page = models_page.render_page([view], ["rollback_demo"], models_page.Links(), can_rollback={"rollback_demo": True})
    assert "rolled back 2026-03-04 12:30:00 UTC by ann" in page

    # The registry history: version 2 was found on the alias (moved before the history was kept), then the rollback.
    view = models_page.pipeline_view(config, client, engine)
    assert [(m.version, m.how, m.moved_by, m.until) for m in view.history] == [
        ("1", "rollback", "ann", None), ("2", "observed", "unknown", "2026-03-04T12:30:00+00:00"),
    ]  # fmt: skip
    page = models_page.render_page([view], ["rollback_demo"], models_page.Links(), can_rollback={})
    history = re.search(r'<table id="alias-history">.*?</table>', page, re.S).group(0)
    assert "<td>v1</td><td>2026-03-04 12:30:00 UTC</td><td>now</td><td>rollback</td><td>ann</td>" in history
    assert "<td>from v2</td><td>v2 misbehaves</td>" in history


def test_run_details_only_for_the_pipelines_experiment(demo, store):
    client = demo["client"]
    run_id = demo["runs"][0][0]
    details = models_page.run_details(client, "lifecycle/demo_churn", run_id)
    assert details["tags"]["airflow.run_id"] == "scheduled__2026-03-01T02:00:00+00:00"
    assert details["metrics"]["holdout_challenger_roc_auc"] == pytest.approx(0.80)
    assert models_page.run_details(client, "lifecycle/other", run_id) is None
    assert models_page.run_details(client, "lifecycle/demo_churn", "0" * 32) is None
    page = models_page.render_run(details, "demo_churn", models_page.Links())
    assert "holdout_challenger_roc_auc" in page and "scheduled__2026-03-01T02:00:00+00:00" in page


def test_a_report_gets_a_link_back():
    page = b"<!doctype html><html><body><h1>x</h1></body></html>"
    assert models_page.with_back_link(page, "/lifecycle/?pipeline=a").startswith(
        b'<!doctype html><html><body><p style="font-family:sans-serif"><a id="lifecycle-back" href="/lifecycle/?pipeline=a">'
    )
    assert b"<h1>x</h1>" in models_page.with_back_link(b'<body class="x"><h1>x</h1>', "/")
    assert models_page.with_back_link(b"plain", "/").endswith(b"plain")


def test_nothing_here_imports_airflow():
    source = Path(models_page.__file__).read_text()
    assert "import airflow" not in source and "from airflow" not in source
    assert sa  # the data layer speaks SQLAlchemy to the predictions database


def _section(page: str, pattern: str) -> str:
    found = re.search(pattern, page, re.S)
    assert found, pattern
    return found.group(0)


def test_performance_per_batch_and_version_is_read_with_its_intervals_references_and_trigger(demo):
    view = models_page.pipeline_view(demo["config"], demo["client"], demo["engine"])
    series = view.performance
    assert (series.metric, series.higher_is_better, series.floor, series.max_drop) == ("roc_auc", True, 0.65, 0.05)
    # Oldest batch first, versions in number order within a batch; other metrics and pipelines left out.
    assert [(p.batch_key, p.model_version) for p in series.points] == [
        ("2026-03-06", "1"), ("2026-03-07", "1"), ("2026-03-07", "2"), ("2026-03-08", "2"),
    ]  # fmt: skip
    first, backfill, labelled, unlabelled = series.points
    assert (first.realised, first.realised_low, first.realised_high) == pytest.approx((0.78, 0.74, 0.82))
    assert (first.labelled_rows, first.batch_rows, first.estimated, first.reference) == (280, 300, 0.79, 0.80)
    assert first.estimate_error == pytest.approx(0.01) and first.computed_at.endswith("+00:00")
    assert (backfill.realised, backfill.estimated) == (None, 0.81)
    assert (labelled.estimated_low, labelled.estimated_high, labelled.estimate_error) == pytest.approx(
        (0.77, 0.83, 0.04)
    )
    assert (unlabelled.realised, unlabelled.labelled_rows, unlabelled.estimated, unlabelled.batch_rows) == (
        None, None, 0.77, 400,
    )  # fmt: skip
    assert series.trigger(0.83) == pytest.approx(0.78)
    json.dumps(view.to_dict())

    newest = models_page.pipeline_view(demo["config"], demo["client"], demo["engine"], max_batches=1)
    assert [(p.batch_key, p.model_version) for p in newest.performance.points] == [("2026-03-08", "2")]


def _segments(points: list[dict]) -> list[list[dict]]:
    """The lines a dataset draws: runs of two or more points between breaks (y None)."""
    runs, current = [], []
    for point in [*points, {"y": None}]:
        if point["y"] is None:
            if len(current) > 1:
                runs.append(current)
            current = []
        else:
            current.append(point)
    return runs


def test_the_performance_chart_draws_realised_estimated_references_trigger_and_floor(demo):
    view = models_page.pipeline_view(demo["config"], demo["client"], demo["engine"])
    page = models_page.render_page([view], ["demo_churn"], models_page.Links(), can_rollback={})
    data = _chart(page, "chart-performance")
    assert data == json.loads(json.dumps(models_page.performance_chart(view).data))  # what the page embeds
    assert 'data-readout="chart-performance-readout"' in page and 'id="chart-performance-readout"' in page
    assert data["x_labels"] == ["2026-03-06", "2026-03-07", "2026-03-08"]

    realised = [(batch, version) for batch, version, _ in _marks(data, "realised")]
    estimated = [(batch, version) for batch, version, _ in _marks(data, "estimated")]
    assert realised == [("2026-03-06", "1"), ("2026-03-07", "2")]  # only where labels arrived
    assert sorted(estimated) == [("2026-03-06", "1"), ("2026-03-07", "1"), ("2026-03-07", "2"), ("2026-03-08", "2")]
    # One colour per version, for its values, its intervals and its holdout reference.
    colours = {(d["role"], d.get("version") or d["label"].split()[0][1:]): d["color"] for d in data["datasets"]
               if d["role"] in ("realised", "estimated", "realised_ci", "estimated_ci", "reference")}  # fmt: skip
    assert set(colours.values()) == {"#1f77b4", "#ff7f0e"} and len(colours) == 10
    assert {v for (_, v), c in colours.items() if c == "#1f77b4"} == {"1"}
    # Values on hover, with interval and labelled rows; the estimate where labels have not arrived.
    texts = [p["text"] for d in data["datasets"] for p in _rows(d) if p.get("text")]
    assert "2026-03-07 · v2 · realised roc_auc 0.7600 [0.7100, 0.8000] on 120 of 250 rows labelled" in texts
    assert "2026-03-08 · v2 · estimated roc_auc 0.7700 from 400 scored rows" in texts
    assert ("2026-03-07 · v2 · estimated roc_auc 0.8000 [0.7700, 0.8300] from 250 scored rows; error +0.0400 vs "
            "realised") in texts  # fmt: skip
    # Whiskers where there is a CI: two realised, one estimated, each from its low to its high.
    assert [(p["y"]) for p in _points(data, "realised_ci")] == pytest.approx([0.74, 0.82, 0.71, 0.80])
    assert [(p["y"]) for p in _points(data, "estimated_ci")] == pytest.approx([0.77, 0.83])
    # Two versions in one batch sit side by side, not on top of each other.
    xs = {(batch, version): p["x"] for batch, version, p in _marks(data, "estimated")}
    assert xs[("2026-03-07", "1")] < xs[("2026-03-07", "2")] < xs[("2026-03-08", "2")]
    assert xs[("2026-03-06", "1")] == 0 and abs(xs[("2026-03-07", "2")] - 1) < 0.5
    # Lines join a version's consecutive batches: both versions' estimates; no two realised values in a row.
    lines = {role: [s for d in data["datasets"] if d["role"] == role for s in _segments(_rows(d))]
             for role in ("realised", "estimated")}  # fmt: skip
    assert len(lines["estimated"]) == 2 and lines["realised"] == []

    def y_of(role: str, text: str) -> float:
        rule = next(d for d in data["datasets"] if d["role"] == role and d["text"][0] == text)
        assert rule["y"][0] == rule["y"][1] and rule["text"] == [text, text]
        return rule["y"][0]

    reference = y_of("reference", "v2 holdout roc_auc 0.8300")
    trigger = y_of("trigger", "v2 retrain trigger: roc_auc below 0.7800 (holdout 0.8300 − 0.05)")
    floor = y_of("floor", "gate floor roc_auc 0.65")
    assert reference > trigger > floor  # higher is better: the trigger under the reference, the floor lower still
    assert '<i class="k-floor"></i>gate floor 0.65</span>' in page and "retrain trigger (holdout − 0.05)" in page


def _cells(row: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", row, re.S)


def test_the_performance_table_lists_batches_newest_first_and_flags_what_is_past_the_trigger(demo):
    view = models_page.pipeline_view(demo["config"], demo["client"], demo["engine"])
    page = models_page.render_page([view], ["demo_churn"], models_page.Links(), can_rollback={})
    table = _section(page, r'<table id="performance">.*?</table>')
    rows = re.findall(r'<tr data-batch="([^"]+)" data-version="(\d+)">(.*?)</tr>', table, re.S)
    assert [(b, v) for b, v, _ in rows] == [
        ("2026-03-08", "2"), ("2026-03-07", "2"), ("2026-03-07", "1"), ("2026-03-06", "1"),
    ]  # fmt: skip
    cells = {(b, v): _cells(row) for b, v, row in rows}
    assert cells[("2026-03-06", "1")] == [
        "2026-03-06", "v1", '<b>0.7800</b> [0.7400, 0.8200]<div class="muted">280 / 300 rows labelled</div>',
        "0.7900", "+0.0100", "0.8000",
    ]  # fmt: skip
    newest = cells[("2026-03-08", "2")]
    assert newest[2] == '<span class="muted">awaiting labels</span><div class="muted">– / 400 rows labelled</div>'
    assert newest[3] == '0.7700<div class="bad">past the retrain trigger</div>' and newest[4] == "–"
    assert "past the retrain trigger" in cells[("2026-03-07", "2")][2]  # 0.76 realised < 0.78
    assert "past" not in cells[("2026-03-06", "1")][2] + cells[("2026-03-06", "1")][3]

    # A policy that acts on realised values only does not flag estimates.
    view.performance.signals = ["realised"]
    page = models_page.render_page([view], ["demo_churn"], models_page.Links(), can_rollback={})
    table = _section(page, r'<table id="performance">.*?</table>')
    assert table.count("past the retrain trigger") == 1 and "0.7700<" in table


def test_the_trigger_follows_the_metric_direction_and_the_policy(make_config, tmp_path):
    engine = engine_for(f"sqlite:///{tmp_path / 'p.db'}")
    for metric, reference, expected in (("log_loss", 0.30, 0.35), ("roc_auc", 0.80, 0.70)):
        config = make_config(name="p_" + metric, training={"primary_metric": metric}, gate={"floors": {}},
                             performance={"policy": {"max_drop": 0.1 if metric == "roc_auc" else None}})  # fmt: skip
        performance_store.replace_batch(engine, "performance_metrics", config.name, dt.date(2026, 3, 1), "1",
                                        [perf("estimated", reference, 10, 10, reference, metric=metric)], "r")  # fmt: skip
        view = models_page.PipelineView(config.name, config.name, "x", metric, config.higher_is_better)
        models_page.load_performance(view, config, engine)
        assert view.performance.trigger(reference) == pytest.approx(expected)
        assert view.performance.floor is None
        chart = models_page.performance_chart(view)
        ys = {d["role"]: d["y"][0] for d in chart.data["datasets"] if d["role"] in ("reference", "trigger")}
        # Lower-is-better: the policy fires above the holdout's value, so the line is drawn above it.
        assert (ys["trigger"] > ys["reference"]) == (metric == "log_loss"), (metric, ys)
        assert ys["trigger"] == pytest.approx(expected)
        assert "floor" not in {d["role"] for d in chart.data["datasets"]} and "gate floor" not in str(chart.legend)
    rmse = models_page.PerformanceSeries("rmse", False, True, 0.05, True, None)
    assert rmse.trigger(20.0) == pytest.approx(21.0)  # RMSE's drop is relative: 5 % above the holdout's
    off = make_config(name="off", performance={"policy": {"enabled": False}})
    view = models_page.PipelineView("off", "off", "x", "roc_auc", True)
    models_page.load_performance(view, off, engine)
    view.performance.points = [models_page.PerformancePoint("2026-03-01", "1", 10, estimated=0.7, reference=0.8)]
    chart = models_page.performance_chart(view)
    assert "trigger" not in {d["role"] for d in chart.data["datasets"]}
    assert {"kind": "muted", "text": "performance policy off"} in chart.legend


def test_rollout_decisions_are_shown_newest_first_and_escaped(demo):
    view = models_page.pipeline_view(demo["config"], demo["client"], demo["engine"])
    assert [(d.decided_on, d.decision) for d in view.decisions] == [("2026-03-09", "abort"), ("2026-03-08", "extend")]
    latest = view.decisions[0]
    assert (latest.challenger_rows, latest.difference, latest.paired) == (410, -0.06, False)
    assert latest.decided_at.endswith("+00:00")
    links = models_page.Links(app="/base/lifecycle", airflow="/base")
    page = models_page.render_page([view], ["demo_churn"], links, can_rollback={})
    table = _section(page, r'<table id="decisions">.*?</table>')
    rows = re.findall(r'<tr data-day="([^"]+)">(.*?)</tr>', table, re.S)
    assert [day for day, _ in rows] == ["2026-03-09", "2026-03-08"]
    cells = _cells(rows[0][1])
    assert cells[:4] == ["2026-03-09", "canary", "champion v2<br>challenger v3", "1500<br>410"]
    assert (
        "champion <b>0.8100</b> [0.7900, 0.8300]" in cells[4]
        and "challenger <b>0.7500</b> [0.7700, 0.8800]" in cells[4]
    )
    assert cells[5] == "<b>-0.0600</b> [-0.0900, -0.0300]" and cells[6] == "unpaired"
    assert cells[7] == '<span class="verdict v-abort">abort</span>'
    assert "<img src=x" not in page and "challenger worse: &lt;img src=x onerror=alert(1)&gt;" in cells[8]
    assert 'href="/base/dags/demo_churn__rollout/runs/scheduled__2026-03-09"' in cells[8]
    assert "not ours" not in page and "No rollout decision yet" not in page


def test_html_in_stored_values_is_escaped_in_the_chart_and_tables(make_config, tmp_path):
    engine = engine_for(f"sqlite:///{tmp_path / 'p.db'}")
    config = make_config(name="escaped")
    hostile = '"><script>alert(1)</script>'
    performance_store.replace_batch(engine, "performance_metrics", "escaped", dt.date(2026, 3, 1), hostile,
                                    [perf("realised", 0.7, 60, 80, 0.8, (0.6, 0.8))], "r")  # fmt: skip
    rollout_store.replace_decision(engine, decision(dt.date(2026, 3, 1), hostile, hostile, pipeline="escaped",
                                                    mode=hostile, champion_version=hostile))  # fmt: skip
    view = models_page.pipeline_view(config, None, engine)
    page = models_page.render_page([view], ["escaped"], models_page.Links(), can_rollback={})
    assert "<script>alert(1)</script>" not in page and "</script>alert" not in page
    # The version in the chart's legend and the performance table (attribute, cell); the decision's class,
    # text, mode, version and reason.
    assert page.count("&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;") == 8
    # The chart's JSON cannot close its script element, and reads back as the stored text (drawn as text).
    raw = re.search(r'id="chart-performance-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in raw and ">" not in raw
    assert {version for _, version, _ in _marks(json.loads(raw), "realised")} == {hostile}


def test_a_performance_table_of_another_shape_is_an_error_that_hides_only_itself(demo, make_config, tmp_path):
    engine = engine_for(f"sqlite:///{tmp_path / 'p.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE performance_metrics (pipeline TEXT, batch TEXT, score REAL)")
    config = make_config()
    scored = [("demo_churn", dt.date(2026, 3, 6), "1", 0.5, "0", "demo_churn", "1", "p", dt.datetime.now(dt.UTC))]
    write_batch(engine, "predictions", "demo_churn", dt.date(2026, 3, 6), [scored])
    view = models_page.pipeline_view(config, demo["client"], engine)
    assert len(view.errors) == 1, view.errors
    assert view.errors[0].startswith(
        "the predictions database could not be read (the performance table 'performance_metrics'): OperationalError"
    )
    assert [b.batch_key for b in view.batches] == ["2026-03-06"]  # the rest of the page is still there
    assert view.champion is not None
    page = models_page.render_page([view], ["demo_churn"], models_page.Links(), can_rollback={})
    assert "the performance table &#39;performance_metrics&#39;" in page and 'id="chart-rows"' in page
