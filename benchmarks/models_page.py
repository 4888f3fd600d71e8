"""The models page's load time with a long history: 100 model versions and a year of daily batches.

Builds, in a temporary directory, an MLflow SQLite store with `--versions` registered versions of the demo
model (each from a retrain run tagged and logged the way lifecycle.tasks.retraining does it, plus `--rejected`
rejected challengers), and a SQLite predictions database with `--batches` daily batches of
`--rows-per-batch` predictions, their drift rows, their performance rows (5 estimated metrics, 8 realised and
5 estimate errors per batch, as the performance DAG writes them; the newest 3 batches unlabelled) and 60
rollout decisions. Then it times what the page's route does besides the
auth check: `models_page.pipeline_view` (MLflow + SQL) and `render_page` (the Jinja2 templates, with the charts'
data as JSON for Chart.js to draw in the browser), once
cold (first calls on a fresh client), `--repeats` times as is, and `--repeats` times after `gc.freeze()`
as the plugin's warm-up leaves the api-server ("warm", what the budget is checked against). It prints the parts, the MLflow calls and
SQL queries made, the page's size and that of the static files it links (CSS, script, Chart.js: fetched once,
then revalidated by the browser); the last line is one JSON object. With `--check` it exits 1 when
the warm median is over `--budget` seconds (1.0 by default).

    .venv/bin/python benchmarks/models_page.py
    .venv/bin/python benchmarks/models_page.py --versions 100 --batches 365 --repeats 7 --check
    .venv/bin/python benchmarks/models_page.py --out benchmarks/results/models_page.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

DAY_MS = 86_400_000
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def seed_mlflow(client, config, versions: int, rejected: int, root: Path) -> float:
    """Retrain runs in time order: `versions` promoted (registered, aliased) and `rejected` in between."""
    from mlflow.entities import Metric, Param, RunTag

    started = time.perf_counter()
    name = config.registered_model_name
    experiment = client.create_experiment(f"lifecycle/{config.name}", artifact_location=(root / "art").as_uri())
    client.create_registered_model(name)
    total = versions + rejected
    every = max(1, total // max(rejected, 1))
    promoted = 0
    for i in range(total):
        promote = promoted < versions and (rejected == 0 or i % every != every - 1 or total - i <= versions - promoted)
        day = T0 + dt.timedelta(days=i * 3)
        airflow_run_id = f"scheduled__{day.isoformat()}"
        params = {"as_of_date": day.date().isoformat(), "reason": "scheduled", "search": "halving", "window_days": 35,
                  "grid": config.training.grid}  # fmt: skip
        verdict = "promote" if promote else "reject"
        tags = {
            "airflow.dag_id": f"{config.name}__retrain", "airflow.run_id": airflow_run_id, "pipeline": config.name,
            "trigger.reason": "scheduled", "trigger.params": json.dumps(params, sort_keys=True),
            "snapshot.uri": f"file:///x/{i}/snapshot.parquet", "snapshot.sha256": f"{i:064x}", "snapshot.rows": "35000",
            "snapshot.window": "a..b", "gate.verdict": verdict, "gate.action": verdict,
            "gate.reason": f"{verdict}: challenger beats the champion by {i / 1000:.3f}",
        }  # fmt: skip
        run = client.create_run(experiment, run_name=airflow_run_id, start_time=int(day.timestamp() * 1000))
        run_id = run.info.run_id
        now = int(day.timestamp() * 1000)
        metrics = [
            Metric(f"holdout_{who}_{k}", 0.7 + (i % 37) / 300 - (0.02 if who != "challenger" else 0), now, 0)
            for who in ("challenger", "baseline", "champion")
            for k in ("roc_auc", "pr_auc", "log_loss", "f1", "precision", "recall")
        ] + [Metric(f"validation_{k}", 0.7, now, 0) for k in ("roc_auc", "pr_auc", "log_loss")]
        client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(f"trigger.{k}", json.dumps(v)[:500]) for k, v in params.items()]
            + [Param(f"best.{k}", "1") for k in config.training.grid],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        if promote:
            promoted += 1
            version = client.create_model_version(
                name, f"{run.info.artifact_uri}/model", run_id,
                tags={"gate.verdict": verdict, "gate.reason": tags["gate.reason"], "mlflow_run_id": run_id,
                      "gate.decision_uri": f"file:///x/{i}/decision.json", "snapshot.uri": tags["snapshot.uri"]},
            )  # fmt: skip
            client.set_tag(run_id, "registered_version", str(version.version))
            client.set_registered_model_alias(name, "champion", version.version)
        client.set_terminated(run_id)
    return time.perf_counter() - started


def seed_database(engine, config, batches: int, rows_per_batch: int) -> float:
    """`batches` daily batches of predictions and one drift row per feature per batch, in bulk inserts."""
    from lifecycle.persistence import drift_store
    from lifecycle.persistence.predictions_db import COLUMNS, ensure_table

    started = time.perf_counter()
    ensure_table(engine, config.prediction.table)
    drift_store._ensure(engine, config.drift.metrics_table)
    now = dt.datetime.now(dt.UTC).isoformat(sep=" ")
    placeholders = ", ".join("?" for _ in COLUMNS)
    features = [(f, "numeric", "psi", config.drift.psi_threshold) for f in config.features.numeric]
    features += [(f, "categorical", "jensen_shannon", config.drift.js_threshold) for f in config.features.categorical]
    features += [("__prediction__", "prediction", "psi", config.drift.prediction_psi_threshold)]
    with engine.begin() as conn:
        for b in range(batches):
            key = (T0.date() + dt.timedelta(days=b)).isoformat()
            version = str(1 + b * 100 // max(batches, 1))
            rows = [(config.name, key, str(n), (n % 97) / 97, "0", config.name, version, f"predict__{key}", now)
                    for n in range(rows_per_batch)]  # fmt: skip
            conn.exec_driver_sql(
                f"INSERT INTO {config.prediction.table} ({', '.join(COLUMNS)}) VALUES ({placeholders})", rows
            )
            drift = [(config.name, key, f, kind, metric, ((b * 7 + i * 13) % 50) / 100, threshold,
                      ((b * 7 + i * 13) % 50) / 100 > threshold, version, f"drift__{key}", now)
                     for i, (f, kind, metric, threshold) in enumerate(features)]  # fmt: skip
            drift.append((config.name, key, "__dataset__", "dataset", "drifted_share", 0.1, None, False, version,
                          f"drift__{key}", now))  # fmt: skip
            conn.exec_driver_sql(
                f"INSERT INTO {config.drift.metrics_table} (pipeline, batch_key, feature, kind, metric, value, "
                "threshold, drifted, model_version, airflow_run_id, checked_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                drift,
            )
        seed_performance(conn, config, batches)
    return time.perf_counter() - started


def seed_performance(conn, config, batches: int) -> None:
    """The performance DAG's rows for every batch and 60 days of rollout decisions, in bulk inserts."""
    import sqlalchemy as sa

    from lifecycle.persistence import performance_store, rollout_store

    table = performance_store.performance_table(sa.MetaData(), config.performance.metrics_table)
    table.metadata.create_all(conn)
    decisions = rollout_store.decisions_table(table.metadata)
    decisions.create(conn, checkfirst=True)
    now = dt.datetime.now(dt.UTC)
    estimated = ("roc_auc", "accuracy", "precision", "recall", "f1")
    realised = (*estimated, "pr_auc", "log_loss", "brier")
    rows = []
    for b in range(batches):
        key, version = T0.date() + dt.timedelta(days=b), str(1 + b * 100 // max(batches, 1))
        common = {"pipeline": config.name, "batch_key": key, "model_version": version, "batch_rows": 1000,
                  "reference": 0.8, "airflow_run_id": f"performance__{key}", "computed_at": now}  # fmt: skip
        value = 0.7 + (b % 29) / 200
        for metric in estimated:
            rows.append({**common, "metric": metric, "kind": "estimated", "value": value, "ci_low": value - 0.02,
                         "ci_high": value + 0.02, "rows": 1000})  # fmt: skip
        if b < batches - 3:
            for metric in realised:
                rows.append({**common, "metric": metric, "kind": "realised", "value": value - 0.01,
                             "ci_low": value - 0.04, "ci_high": value + 0.02, "rows": 700})  # fmt: skip
            for metric in estimated:
                rows.append({**common, "metric": metric, "kind": "estimate_error", "value": 0.01, "ci_low": None,
                             "ci_high": None, "rows": 700})  # fmt: skip
    conn.execute(table.insert(), rows)
    conn.execute(decisions.insert(), [
        {"pipeline": config.name, "decided_on": T0.date() + dt.timedelta(days=d), "mode": "canary",
         "metric": "roc_auc", "champion_version": "99", "challenger_version": "100", "champion_rows": 100 * d,
         "challenger_rows": 10 * d, "champion_value": 0.8, "champion_ci_low": 0.78, "champion_ci_high": 0.82,
         "challenger_value": 0.81, "challenger_ci_low": 0.76, "challenger_ci_high": 0.86, "difference": 0.01,
         "difference_ci_low": -0.03, "difference_ci_high": 0.05, "paired": False, "decision": "extend",
         "reason": "fewer than 200 labelled rows per arm", "airflow_run_id": f"rollout__{d}", "decided_at": now}
        for d in range(60)
    ])  # fmt: skip


def measure(config, client, engine):
    from lifecycle.ui import models_page

    timings = {}
    started = time.perf_counter()
    view = models_page.PipelineView(
        name=config.name, model_name=config.registered_model_name, retrain_dag_id=f"{config.name}__retrain",
        primary_metric=config.training.primary_metric, higher_is_better=config.higher_is_better,
    )  # fmt: skip
    models_page.load_mlflow(view, config, client)
    timings["mlflow"] = time.perf_counter() - started
    mark = time.perf_counter()
    models_page.load_database(view, config, engine)
    timings["sql"] = time.perf_counter() - mark
    mark = time.perf_counter()
    models_page.load_performance(view, config, engine)
    models_page.load_decisions(view, config, engine)
    timings["perf_sql"] = time.perf_counter() - mark
    mark = time.perf_counter()
    page = models_page.render_page([view], [config.name], models_page.Links(), can_rollback={config.name: True})
    timings["render"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    return timings, view, page


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--rejected", type=int, default=50, help="rejected challengers among the retrain runs")
    parser.add_argument("--batches", type=int, default=365)
    parser.add_argument("--rows-per-batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds for the warm median")
    parser.add_argument("--check", action="store_true", help="exit 1 when the warm median is over the budget")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="models-page-bench-"))
    os.environ.update({"MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "true", "GX_ANALYTICS_ENABLED": "false"})
    try:
        import mlflow

        from lifecycle.config.pipeline import load_pipeline
        from lifecycle.persistence.predictions_db import engine_for
        from lifecycle.ui import models_page

        config = load_pipeline(REPO / "include" / "pipelines" / "demo_churn.yaml")
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        started = time.perf_counter()
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        store_seconds = time.perf_counter() - started
        mlflow_seed = seed_mlflow(client, config, args.versions, args.rejected, workdir)
        engine = engine_for(f"sqlite:///{workdir / 'predictions.db'}")
        sql_seed = seed_database(engine, config, args.batches, args.rows_per_batch)
        print(
            f"seeded in {workdir}: {args.versions} versions + {args.rejected} rejected runs in {mlflow_seed:.1f}s, "
            f"{args.batches} batches x {args.rows_per_batch} rows in {sql_seed:.1f}s (new MLflow store {store_seconds:.1f}s)"
        )

        # Cold: a new client on the same store, as the api-server has after a restart (its warm-up aside; the
        # warm-up compiles the templates, as here).
        models_page.preload_templates()
        fresh = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        cold, view, page = measure(config, fresh, engine_for(f"sqlite:///{workdir / 'predictions.db'}"))
        unfrozen = [measure(config, fresh, engine)[0] for _ in range(args.repeats)]
        # What the plugin's warm-up does once MLflow is imported: move the long-lived objects out of the
        # garbage collector's way (as Airflow's DAG processor does), so that building the runs' objects
        # does not trigger full collections over the whole heap.
        gc.collect()
        gc.freeze()
        warm = [measure(config, fresh, engine)[0] for _ in range(args.repeats)]
        assert len(view.versions) == args.versions and len(view.batches) == min(args.batches, 400), view.errors
        assert view.champion is not None and view.champion.version == args.versions
        assert len(view.performance.points) == min(args.batches, 400) and len(view.decisions) == 60
        for chart in ("metric", "performance", "rows", "psi", "js"):  # every chart's data is in the page
            assert f'id="chart-{chart}-data"' in page, chart

        def median(part: str, runs: list[dict] = warm) -> float:
            return statistics.median(t[part] for t in runs)

        print(f"{'part':8s} {'cold s':>8s} {'no freeze s':>12s} {'warm median s':>14s} {'warm max s':>11s}")
        for part in ("mlflow", "sql", "perf_sql", "render", "total"):
            print(
                f"{part:8s} {cold[part]:8.3f} {median(part, unfrozen):12.3f} {median(part):14.3f} "
                f"{max(t[part] for t in warm):11.3f}"
            )
        static = sum(p.stat().st_size for p in models_page.STATIC.rglob("*") if p.suffix in (".css", ".js"))
        print(
            f"MLflow calls {view.mlflow_calls}, SQL queries {view.sql_queries}; {len(view.runs)} runs, "
            f"{len(view.versions)} versions, {len(view.batches)} batches, page {len(page) / 1024:.0f} KiB "
            f"(+ {static / 1024:.0f} KiB of static files); load average {os.getloadavg()[0]:.1f}"
        )
        ok = median("total") <= args.budget
        print(f"warm median {median('total'):.3f}s {'within' if ok else 'OVER'} the {args.budget:.1f}s budget")
        result = {
            "versions": args.versions, "rejected": args.rejected, "batches": args.batches,
            "rows_per_batch": args.rows_per_batch, "repeats": args.repeats, "cold": cold,
            "warm_median": {p: median(p) for p in ("mlflow", "sql", "perf_sql", "render", "total")},
            "no_freeze_median": median("total", unfrozen), "frozen_objects": gc.get_freeze_count(),
            "warm_max": max(t["total"] for t in warm), "mlflow_calls": view.mlflow_calls,
            "sql_queries": view.sql_queries, "page_bytes": len(page), "static_bytes": static, "budget": args.budget, "ok": ok,
            "load_average": os.getloadavg()[0],
        }  # fmt: skip
        line = json.dumps(result, sort_keys=True)
        print(line)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return 0 if ok or not args.check else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
