"""The retrain lifecycle, one function per Airflow task: plain arguments in, small dicts out.

Data moves through the artifact store; what these functions return (URIs, ids, metrics) is what
travels through XCom.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
from typing import Any

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.persistence import storage


def _dump(obj: Any) -> bytes:
    import joblib

    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def ingest(
    config: PipelineConfig,
    run_id: str,
    as_of: str,
    window_days: int,
    connection_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    from lifecycle.ml.ingestion import snapshot

    out = storage.artifact_uri(config.name, run_id, "raw", "snapshot.parquet")
    return snapshot(config, dt.date.fromisoformat(as_of), window_days, out, connection_urls)


def validate_snapshot(
    config: PipelineConfig, run_id: str, snapshot_uri: str, sha256: str | None = None
) -> dict[str, Any]:
    """Validate the snapshot; the report is saved whether it passes or not, then failure raises."""
    from lifecycle.ml import contract
    from lifecycle.ml.validation import DataValidationError, validate

    report_uri = storage.artifact_uri(config.name, run_id, "validation", "report.json")
    frame = storage.read_parquet(snapshot_uri, sha256)
    window = frame.attrs.get(contract.RECORD_KEY, {}).get("window")
    where = f"training window {window[0]}..{window[1]}" if window else f"training window {snapshot_uri}"
    try:
        report = validate(frame, config, contract=contract.for_champion(config), where=where)
    except DataValidationError as err:
        storage.write_json(report_uri, {**err.report, "snapshot_uri": snapshot_uri})
        raise DataValidationError(f"{err} (report: {report_uri})", err.report) from None
    storage.write_json(report_uri, {**report, "snapshot_uri": snapshot_uri})
    for warning in report["contract"]["warnings"]:
        logging.getLogger(__name__).warning("data contract: %s", warning)
    return {
        "report_uri": report_uri,
        "evaluated": report["evaluated"],
        "failed": 0,
        "contract_warnings": len(report["contract"]["warnings"]),
        "contract_counts": report["contract"]["counts"],
    }


def prepare_features(
    config: PipelineConfig, run_id: str, snapshot_uri: str, sha256: str | None = None
) -> dict[str, Any]:
    """Time-split the snapshot and fit the feature pipeline on the training split only."""
    from lifecycle.ml.contract import record as record_contract
    from lifecycle.ml.drift import reference_profile
    from lifecycle.ml.features import build_preprocessor, feature_types, input_columns, split_bounds, time_split

    frame = storage.read_parquet(snapshot_uri, sha256)
    if config.segment is not None:  # a segment model trains on its segment's rows of the pipeline's window
        from lifecycle.ml.segments import rows_of

        frame = rows_of(config, frame)
    parts = time_split(frame, config)
    uris = {
        name: storage.write_parquet(storage.artifact_uri(config.name, run_id, "features", f"{name}.parquet"), part)[
            "uri"
        ]
        for name, part in parts.items()
    }
    columns = input_columns(config, parts["train"])
    preprocessor = build_preprocessor(config, parts["train"]).fit(parts["train"][columns])
    numeric, categorical = feature_types(config, parts["train"])
    reference_uri = storage.write_json(
        storage.artifact_uri(config.name, run_id, "features", "drift_reference.json"),
        reference_profile(parts["train"], numeric, categorical, _days(parts["train"], config)),
    )
    preprocessor_uri = storage.write_bytes(
        storage.artifact_uri(config.name, run_id, "features", "preprocessor.joblib"), _dump(preprocessor)
    )
    return {
        "splits": uris,
        "bounds": split_bounds(parts, config),
        "preprocessor_uri": preprocessor_uri,
        "drift_reference_uri": reference_uri,
        "contract_uri": record_contract(config, run_id, parts["train"]),
        "input_columns": columns,
        "output_features": int(len(preprocessor.get_feature_names_out())),
    }


def _days(frame: Any, config: PipelineConfig) -> Any:
    """Each row's calendar day, for the drift reference's day-to-day movement."""
    import pandas as pd

    return pd.to_datetime(frame[config.timestamp_column]).dt.date


def start_run(
    config: PipelineConfig,
    dag_id: str,
    run_id: str,
    trigger: dict[str, Any],
    snapshot: dict[str, Any],
) -> str:
    """Open the MLflow run for this Airflow run, tagged with what triggered it and the data it used."""
    from lifecycle.registry.tracking import experiment_id, mlflow_client

    client = mlflow_client()
    tags = {
        "airflow.dag_id": dag_id,
        "airflow.run_id": run_id,
        "pipeline": config.name,
        "trigger.reason": str(trigger.get("reason", "")),
        "trigger.params": json.dumps(trigger, sort_keys=True, default=str),
        "snapshot.uri": snapshot["uri"],
        "snapshot.sha256": snapshot["sha256"],
        "snapshot.rows": str(snapshot["rows"]),
        "snapshot.window": f"{snapshot['window_start']}..{snapshot['window_end']}",
    }
    experiment = experiment_id(config.name)
    found = _parent_run(client, experiment, dag_id, run_id)
    if found is not None:  # a retry of this task, or of the whole Airflow run: reuse, never orphan
        client.update_run(found.info.run_id, status="RUNNING")
        client.set_tag(found.info.run_id, "attempts", str(int(found.data.tags.get("attempts", "1")) + 1))
        return found.info.run_id
    run = client.create_run(experiment, run_name=run_id, tags=tags)
    for key, value in trigger.items():
        client.log_param(run.info.run_id, f"trigger.{key}", json.dumps(value, default=str)[:500])
    return run.info.run_id


def _parent_run(client: Any, experiment: str, dag_id: str, run_id: str) -> Any | None:
    """The MLflow run this Airflow run opened before, if any (nested candidate runs excluded)."""
    quoted = f'"{run_id}"' if "'" in run_id else f"'{run_id}'"
    runs = client.search_runs(
        [experiment],
        f"tags.`airflow.dag_id` = '{dag_id}' and tags.`airflow.run_id` = {quoted}",
        order_by=["attributes.start_time ASC"],
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents[0] if parents else None


def fail_run(config: PipelineConfig, dag_id: str, run_id: str, task_id: str, error: str) -> str | None:
    """End this Airflow run's MLflow run as FAILED, naming the task that failed (its retries exhausted)."""
    from lifecycle.registry.tracking import experiment_id, mlflow_client

    client = mlflow_client()
    found = _parent_run(client, experiment_id(config.name), dag_id, run_id)
    if found is None:  # failed before the run was opened (ingestion, validation, features)
        return None
    client.set_tag(found.info.run_id, "failed_task", task_id)
    client.set_tag(found.info.run_id, "failed_error", error[:5000])
    client.set_terminated(found.info.run_id, status="FAILED")
    return found.info.run_id


def train_challenger(
    config: PipelineConfig,
    mlflow_run_id: str,
    features: dict[str, Any],
    grid: dict[str, list[Any]],
    strategy: str,
) -> dict[str, Any]:
    """Search the grid, log every candidate as a nested run, log the refit best as one MLflow model."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    from lifecycle.ml.training import candidates, fit_search
    from lifecycle.registry.tracking import mlflow_client

    train = storage.read_parquet(features["splits"]["train"])
    search, summary = fit_search(config, train, grid, strategy)
    client = mlflow_client()
    experiment = client.get_run(mlflow_run_id).info.experiment_id
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    for i, candidate in enumerate(candidates(search)):
        child = client.create_run(experiment, run_name=f"candidate-{i:03d}", tags={"mlflow.parentRunId": mlflow_run_id})
        client.log_batch(
            child.info.run_id,
            metrics=[
                Metric("mean_cv_score", candidate["mean_cv_score"], now, 0),
                Metric("std_cv_score", candidate["std_cv_score"], now, 0),
                Metric("mean_fit_seconds", candidate["mean_fit_seconds"], now, 0),
            ],
            params=[Param(k, str(v)) for k, v in candidate["params"].items()]
            + [
                Param("halving_round", str(candidate["round"])),
                Param("resources", str(candidate["resources"])),
            ],
            tags=[RunTag("rank", str(candidate["rank"]))],
        )
        client.set_terminated(child.info.run_id)

    model = search.best_estimator_
    logged = _log_model(config, mlflow_run_id, model, train, summary["input_columns"], features, "model")
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_params({f"best.{k}": v for k, v in summary["best_params"].items()})
        mlflow.log_params({"search.strategy": strategy, "search.candidates": summary["candidates"]})
        mlflow.log_params({f"threads.{k}": v for k, v in summary["threads"].items()})  # the worker-aware plan
        mlflow.log_metrics({"best_cv_score": summary["best_cv_score"], "search_seconds": summary["seconds"]})
    return {
        **logged,
        "family": "lightgbm",
        "best_params": summary["best_params"],
        "best_cv_score": summary["best_cv_score"],
        "search_seconds": summary["seconds"],
        "fits": summary["fits"],
    }


def _log_model(
    config: PipelineConfig,
    mlflow_run_id: str,
    model: Any,
    train: Any,
    columns: list[str],
    features: dict[str, Any],
    name: str,
) -> dict[str, Any]:
    """Calibrate a fitted pipeline on the validation split and log it as an MLflow model of the run.

    The validation metrics (what family selection compares) are the uncalibrated pipeline's: the calibration
    is fitted on those rows, so its own scores there would grade itself. The holdout, which neither saw,
    measures the calibrated model that is logged, registered and served.
    """
    import mlflow
    from mlflow.models import infer_signature

    from lifecycle.ml.metrics import scores
    from lifecycle.ml.training import calibrate
    from lifecycle.registry.model_trust import RUNTIME_CODE, TRUSTED_TYPES, record_digests

    example = train[columns].head(5)
    validation = storage.read_parquet(features["splits"]["validation"])
    validation_metrics = _metrics(config, model, validation, columns)
    model, calibration = calibrate(config, model, validation, columns)
    predict_fn = "predict" if config.task == "regression" else "predict_proba"
    output = model.predict_proba(example) if config.task == "multiclass" else scores(model, example, config.task)
    with mlflow.start_run(run_id=mlflow_run_id):
        prefix = "validation" if name == "model" else f"validation_{name}"
        mlflow.log_metrics({f"{prefix}_{k}": v for k, v in validation_metrics.items() if v == v})
        # A retry computes the same plan from the same rows, so re-logging the param is a no-op.
        key = "calibration" if name == "model" else f"{name}.calibration"
        mlflow.log_param(f"{key}.method", calibration["method"])
        mlflow.set_tag(f"{key}.reason", calibration["reason"][:5000])
        info = mlflow.sklearn.log_model(
            model,
            name=name,
            signature=infer_signature(example, output),
            input_example=example,
            pyfunc_predict_fn=predict_fn,
            pip_requirements=_requirements(),
            serialization_format="skops",
            skops_trusted_types=TRUSTED_TYPES,
            code_paths=[RUNTIME_CODE],
            tags={"pipeline": config.name, "model.family": "lightgbm" if name == "model" else "linear",
                  "calibration.method": calibration["method"]},
        )  # fmt: skip
    record_digests(info.model_id, info.model_uri)
    return {
        "model_uri": info.model_uri,
        "model_id": getattr(info, "model_id", None),
        "input_columns": columns,
        "validation": validation_metrics,
        "calibration": calibration,
    }


def _score_column(config: PipelineConfig, model: Any, frame: Any) -> Any:
    """One number per row, as the predictions table stores it: P(positive), top-class probability, value."""
    from lifecycle.ml.metrics import scores

    score = scores(model, frame, config.task)
    return score.max(axis=1) if score.ndim == 2 else score


def _requirements() -> list[str]:
    from importlib.metadata import version

    # Everything a clean environment needs to load and serve the model (its own code ships in `code/`).
    packages = ("scikit-learn", "scipy", "lightgbm", "pandas", "numpy", "skops", "mlflow")
    return [f"{p}=={version(p)}" for p in packages]


def _metrics(config: PipelineConfig, model: Any, frame: Any, columns: list[str]) -> dict[str, float]:
    from lifecycle.ml.metrics import compute, scores

    classes = getattr(model, "classes_", None)
    return compute(
        config.task, frame[config.target], scores(model, frame[columns], config.task),
        config.prediction.threshold, classes,
    )  # fmt: skip


def train_baseline(config: PipelineConfig, mlflow_run_id: str, features: dict[str, Any]) -> dict[str, Any]:
    """The simple family: a candidate in its own right, logged as an MLflow model of the same run."""
    from lifecycle.ml.features import input_columns
    from lifecycle.ml.training import fit_baseline

    train = storage.read_parquet(features["splits"]["train"])
    model = fit_baseline(config, train)
    return {**_log_model(config, mlflow_run_id, model, train, input_columns(config, train), features, "baseline"),
            "family": "linear"}  # fmt: skip


def evaluate(
    config: PipelineConfig,
    run_id: str,
    mlflow_run_id: str,
    features: dict[str, Any],
    challenger: dict[str, Any],
    baseline: dict[str, Any],
) -> dict[str, Any]:
    """Select the family, then score challenger, baseline and champion on the same holdout rows and decide."""
    import mlflow
    import pandas as pd

    from lifecycle.ml.drift import add_day_to_day, numeric_profile
    from lifecycle.ml.gate import decide
    from lifecycle.ml.metrics import align, bootstrap_difference, compute, reliability, scores
    from lifecycle.ml.selection import select_family
    from lifecycle.registry import model_trust, tracking
    from lifecycle.ui.report import figure_png, html_report

    tracking.mlflow_client()
    holdout = storage.read_parquet(features["splits"]["holdout"])
    columns = features["input_columns"]
    y = holdout[config.target].to_numpy()
    task, primary, threshold = config.task, config.training.primary_metric, config.prediction.threshold

    candidates = {c["family"]: c for c in (challenger, baseline)}
    models = {family: model_trust.load(c["model_uri"]) for family, c in candidates.items()}
    # The champion by the version read here (not the alias again: it could move in between).
    champion_version = tracking.champion(config.registered_model_name)
    champion_model = None
    if champion_version is not None:
        champion_model = model_trust.load(f"models:/{config.registered_model_name}/{champion_version.version}")
    classes = _holdout_classes(task, [*models.values(), champion_model])

    def curve(model: Any) -> Any:
        """Scores on the holdout; multiclass columns aligned to one class list (windows may differ in classes)."""
        score = scores(model, holdout[columns], task)
        return align(score, model.classes_, classes) if task == "multiclass" else score

    family_curves = {family: curve(model) for family, model in models.items()}
    family_holdout = {f: compute(task, y, s, threshold, classes) for f, s in family_curves.items()}
    selection = select_family(
        primary, config.higher_is_better, {f: c["validation"] for f, c in candidates.items()}, family_holdout
    )
    chosen = candidates[selection["selected"]]
    selected_model = models[selection["selected"]]
    curves = {"challenger": family_curves[selection["selected"]], "baseline": family_curves["linear"]}
    champion_info = None
    if champion_version is not None:
        curves["champion"] = curve(champion_model)
        champion_info = {"version": champion_version.version, "run_id": champion_version.run_id}

    measured = {name: compute(task, y, s, threshold, classes) for name, s in curves.items()}
    comparison = None
    if "champion" in curves:
        comparison = bootstrap_difference(
            task, primary, config.higher_is_better, y, curves["challenger"], curves["champion"],
            config.gate.bootstrap.resamples, config.gate.bootstrap.confidence, threshold, classes=classes,
        )  # fmt: skip
    decision = decide(
        primary=primary,
        mode=config.gate.mode,
        floors=config.gate.floors,
        min_improvement=config.gate.min_improvement,
        challenger=measured["challenger"],
        baseline=measured["baseline"],
        champion=measured.get("champion"),
        comparison=comparison,
        challenger_is_baseline=selection["selected"] == "linear",
        secondary=config.secondary_metrics,
    )
    decision.update(
        {
            "pipeline": config.name,
            "airflow_run_id": run_id,
            "mlflow_run_id": mlflow_run_id,
            "selection": selection,
            "challenger_family": selection["selected"],
            "challenger_model_uri": chosen["model_uri"],
            "family_holdout": family_holdout,
            "champion_version": champion_info,
            "holdout_rows": int(len(holdout)),
            "holdout_window": features["bounds"]["holdout"],
            # How each family's probabilities were calibrated (absent: a model logged before calibration).
            "calibration": {f: c.get("calibration") for f, c in candidates.items()},
        }
    )
    if task != "regression":
        decision["reliability"] = {name: reliability(y, s, classes) for name, s in curves.items()}
    # The drift reference's prediction profile belongs to the model that may become champion.
    reference = storage.read_json(features["drift_reference_uri"])
    validation = storage.read_parquet(features["splits"]["validation"])
    predicted = pd.Series(_score_column(config, selected_model, validation[columns]))
    reference["prediction"] = add_day_to_day(numeric_profile(predicted), predicted, _days(validation, config))
    reference["model_family"] = selection["selected"]
    png = figure_png(task, y, curves, selected_model, threshold, decision.get("reliability"))
    page = html_report(config.name, decision, png)
    decision_uri = storage.write_json(
        storage.artifact_uri(config.name, run_id, "evaluation", "decision.json"), decision
    )
    report_uri = storage.write_bytes(
        storage.artifact_uri(config.name, run_id, "evaluation", "report.html"), page.encode()
    )
    storage.write_bytes(storage.artifact_uri(config.name, run_id, "evaluation", "report.png"), png)
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_dict(reference, "drift/reference.json")
        if features.get("contract_uri"):  # the data contract travels with the model: runs:/<run>/contract/
            mlflow.log_dict(storage.read_json(features["contract_uri"]), "contract/contract.json")
        for name, values in {**measured, **{f"family_{f}": m for f, m in family_holdout.items()}}.items():
            mlflow.log_metrics({f"holdout_{name}_{k}": v for k, v in values.items() if v == v})
        mlflow.log_dict(decision, "evaluation/decision.json")
        mlflow.log_text(page, "evaluation/report.html")
        mlflow.log_image(_png_image(png), "evaluation/report.png")
        mlflow.set_tags({"gate.verdict": decision["verdict"], "gate.reason": decision["reason"][:5000],
                         "selection.family": selection["selected"], "selection.reason": selection["reason"][:5000]})  # fmt: skip
    return {
        "model_uri": chosen["model_uri"],
        "model_id": chosen.get("model_id"),
        "family": selection["selected"],
        "selection_reason": selection["reason"],
        "decision_uri": decision_uri,
        "report_uri": report_uri,
        "verdict": decision["verdict"],
        "action": decision["action"],
        "reason": decision["reason"],
        "challenger": measured["challenger"],
        "champion_version": champion_info["version"] if champion_info else None,
    }


def _holdout_classes(task: str, models: list[Any]) -> Any:
    """Every class any of the compared models knows (multiclass), so their scores share columns."""
    import numpy as np

    if task != "multiclass":
        return getattr(models[0], "classes_", None)
    known = [np.asarray(m.classes_) for m in models if m is not None]
    return np.unique(np.concatenate(known))


def _png_image(png: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(png))


def promote(
    config: PipelineConfig,
    mlflow_run_id: str,
    challenger: dict[str, Any],
    evaluation: dict[str, Any],
    snapshot: dict[str, Any],
    approval: dict[str, Any] | None = None,
    *,
    run_id: str,
    database_url: str,
) -> dict[str, Any]:
    """Register and alias the challenger when the gate (and, in approve mode, a person) said so.

    Otherwise the challenger's run and model are tagged with the reason, and the champion stays. The move
    is recorded in the registry history of the predictions database (`database_url`).
    """
    from lifecycle.persistence.predictions_db import engine_for
    from lifecycle.registry import tracking

    client = tracking.mlflow_client()
    action, answer = evaluation["action"], {}
    if action == "await approval":
        answer = approval_outcome(approval)
        action = "promote" if answer["gate.approval"] == "approved" else f"none ({answer['gate.approval']})"
    # The gate's selected family (older evaluations, before selection, always meant the tuned model).
    model_uri = evaluation.get("model_uri", challenger["model_uri"])
    model_id = evaluation.get("model_id", challenger.get("model_id"))
    tags = {
        **answer,
        "model.family": evaluation.get("family", "lightgbm"),
        "gate.verdict": evaluation["verdict"],
        "gate.reason": evaluation["reason"][:5000],
        "gate.decision_uri": evaluation["decision_uri"],
        "snapshot.uri": snapshot["uri"],
        "snapshot.sha256": snapshot["sha256"],
        "mlflow_run_id": mlflow_run_id,
    }
    version = None
    if action == "start canary":
        from lifecycle.config.pipeline import CANARY_ALIAS

        engine = engine_for(database_url)
        try:
            version = tracking.start_canary(
                model_uri, config.registered_model_name, tags, mlflow_run_id, CANARY_ALIAS, engine=engine,
                moved_by="the gate (canary)", reason=evaluation["reason"], airflow_run_id=run_id,
            )  # fmt: skip
        finally:
            engine.dispose()
    if action == "promote":
        approver = answer.get("gate.approved_by")
        engine = engine_for(database_url)
        try:
            version = tracking.register_champion(
                model_uri, config.registered_model_name, tags, mlflow_run_id, evaluation.get("champion_version"),
                engine=engine, moved_by=f"{approver} (approval)" if approver else "the gate",
                reason=evaluation["reason"], airflow_run_id=run_id, at=simulated_move_time(snapshot),
            )  # fmt: skip
        finally:
            engine.dispose()
    if version and config.segment is not None:
        from lifecycle.ml.segments import tag_registered_model

        tag_registered_model(config)  # batch prediction finds the pipeline's segment models by these tags
    if model_id:
        client.set_logged_model_tags(model_id, tags)
    client.set_tag(mlflow_run_id, "gate.action", action)
    for key, value in answer.items():
        client.set_tag(mlflow_run_id, key, value)
    if version:
        client.set_tag(mlflow_run_id, "registered_version", version)
    client.set_terminated(mlflow_run_id)
    current = tracking.champion(config.registered_model_name)
    return {
        "promoted_version": version if action == "promote" else None,
        "canary_version": version if action == "start canary" else None,
        "action": action,
        **answer,
        "champion_version": current.version if current else None,
        "verdict": evaluation["verdict"],
        "reason": evaluation["reason"],
    }


def simulated_move_time(snapshot: dict[str, Any]) -> dt.datetime | None:
    """The demo's clock: with LIFECYCLE_SIMULATED_CLOCK=1 a promotion is dated at the start of its as-of day.

    `make demo` replays weeks of days in minutes; dated by the wall clock, every move would fall after every
    simulated batch, and a backfill could not find the champion of a day. Unset (always, outside the demo):
    the registry history has the real time of each move.
    """
    if os.environ.get("LIFECYCLE_SIMULATED_CLOCK") != "1":
        return None
    return dt.datetime.fromisoformat(snapshot["window_end"]).replace(tzinfo=dt.UTC)


def approval_outcome(approval: dict[str, Any] | None) -> dict[str, str]:
    """What a person answered in the Airflow UI (a human-in-the-loop task's result), as tags."""
    if not approval:
        return {"gate.approval": "not answered: champion kept", "gate.approved_by": ""}
    chosen = list(approval.get("chosen_options") or [])
    user = approval.get("responded_by_user") or {}
    who = (user.get("name") or user.get("id") or "") if isinstance(user, dict) else str(user)
    # Airflow's HITL result drops its `timedout` flag; a request nobody answered has no responder.
    if approval.get("timedout") or not who:
        return {
            "gate.approval": "timed out: champion kept",
            "gate.approved_by": "",
            "gate.timed_out_at": str(approval.get("responded_at", "")),
        }
    state = "approved" if chosen == ["Approve"] else "rejected by a person: champion kept"
    return {"gate.approval": state, "gate.approved_by": who, "gate.approved_at": str(approval.get("responded_at", ""))}
