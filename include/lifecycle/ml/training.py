"""Grid-search training of LightGBM inside the feature pipeline, and the baseline beside it."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import TimeSeriesSplit
from sklearn.pipeline import Pipeline

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.ml.features import build_preprocessor, input_columns
from lifecycle.ml.metrics import SCORERS

SMALL_SEARCH_ROWS = 10_000  # below this many training rows a search runs without worker processes


def available_cores() -> int:
    """Cores this worker may use: LIFECYCLE_WORKER_CORES (a share of a bigger host, a quota the process cannot
    see), else joblib's count (which honours CPU affinity and container quotas)."""
    override = os.environ.get("LIFECYCLE_WORKER_CORES")
    if override:
        return _positive("LIFECYCLE_WORKER_CORES", override)
    import joblib

    return max(1, joblib.cpu_count(only_physical_cores=False))


def worker_slots() -> int:
    """How many tasks this worker runs at once, all sharing its cores.

    LIFECYCLE_WORKER_SLOTS when set; else, on a Celery worker (AIRFLOW__CORE__EXECUTOR names CeleryExecutor),
    Airflow's own `[celery] worker_concurrency` as the environment gives it (AIRFLOW__CELERY__WORKER_CONCURRENCY,
    how compose and `airflow celery worker` are configured), so a worker never needs a second setting; else 1:
    the LocalExecutor and `airflow dags test` keep giving a task every core, as before. Read from the
    environment the task inherits from its worker: this module imports no Airflow.
    """
    override = os.environ.get("LIFECYCLE_WORKER_SLOTS")
    if override:
        return _positive("LIFECYCLE_WORKER_SLOTS", override)
    concurrency = os.environ.get("AIRFLOW__CELERY__WORKER_CONCURRENCY")
    if concurrency and "CeleryExecutor" in os.environ.get("AIRFLOW__CORE__EXECUTOR", ""):
        return _positive("AIRFLOW__CELERY__WORKER_CONCURRENCY", concurrency)
    return 1


def _positive(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"environment variable {name}={value!r}: expected a whole number of at least 1")
    return number


def thread_plan(cores: int | None = None, slots: int | None = None) -> dict[str, int]:
    """Threads for one search: the worker's cores shared by its task slots, one level of parallelism at a time.

    LightGBM with all cores inside a search that also uses all cores oversubscribes the machine (7x slower
    measured on 2 cores), and so do N concurrent searches on an N-slot worker that each take every core: so
    each task gets max(1, cores // slots) and spends them across candidates, one LightGBM thread each.
    Worker slots (Airflow's Celery worker_concurrency) rather than an Airflow pool: a pool is global, so it
    cannot say how many tasks share one worker's cores. LIFECYCLE_SEARCH_JOBS, when set and no cores are
    given, is this task's count outright. cores and slots default to available_cores() and worker_slots().
    """
    override = os.environ.get("LIFECYCLE_SEARCH_JOBS") if cores is None else None
    cores = cores or available_cores()
    slots = slots or worker_slots()
    jobs = _positive("LIFECYCLE_SEARCH_JOBS", override) if override else max(1, cores // slots)
    return {"search_jobs": jobs, "lgbm_threads": 1, "cores": cores, "slots": slots}


def lightgbm_estimator(config: PipelineConfig, threads: int) -> Any:
    import lightgbm as lgb

    common = {"n_jobs": threads, "random_state": config.training.random_state, "verbose": -1}
    if config.task == "regression":
        return lgb.LGBMRegressor(**common)
    return lgb.LGBMClassifier(**common)


def baseline_estimator(config: PipelineConfig, frame: pd.DataFrame) -> Pipeline:
    """A linear model on the same features: what the challenger must beat to be worth its complexity."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    linear = Ridge() if config.task == "regression" else LogisticRegression(max_iter=2000)
    return Pipeline([("features", build_preprocessor(config, frame)), ("scale", StandardScaler()), ("model", linear)])


def make_search(
    config: PipelineConfig,
    frame: pd.DataFrame,
    grid: dict[str, list[Any]],
    strategy: str,
    plan: dict[str, int] | None = None,
) -> Any:
    plan = plan or thread_plan()
    # A small training set searches in the task's own process: starting worker processes (each importing
    # LightGBM and scikit-learn) costs seconds, the fits milliseconds (a segment model has a few thousand rows).
    jobs = plan["search_jobs"] if len(frame) >= SMALL_SEARCH_ROWS else 1
    pipeline = Pipeline(
        [
            ("features", build_preprocessor(config, frame)),
            ("model", lightgbm_estimator(config, plan["lgbm_threads"])),
        ]
    )
    param_grid = {f"model__{key}": values for key, values in grid.items()}
    common = {
        "scoring": _scoring(config, frame),
        "cv": TimeSeriesSplit(n_splits=config.training.cv_folds),
        "n_jobs": jobs,
        "refit": True,
        "error_score": "raise",
    }
    if strategy == "halving":
        from sklearn.experimental import enable_halving_search_cv  # noqa: F401
        from sklearn.model_selection import HalvingGridSearchCV

        return HalvingGridSearchCV(pipeline, param_grid, factor=3, random_state=config.training.random_state, **common)
    from sklearn.model_selection import GridSearchCV

    return GridSearchCV(pipeline, param_grid, **common)


def _scoring(config: PipelineConfig, frame: pd.DataFrame) -> Any:
    """scikit-learn's scorer, except for multiclass: a time-series fold often lacks a rare class, and
    scikit-learn's multiclass scorers then raise, so the fold is scored on all the training classes."""
    if config.task != "multiclass":
        return SCORERS[(config.training.primary_metric, config.task)]
    from lifecycle.ml.metrics import search_scorer

    return search_scorer(config.task, config.training.primary_metric, np.unique(frame[config.target].dropna()))


def candidates(search: Any) -> list[dict[str, Any]]:
    """One record per evaluated candidate (per halving round), for the nested MLflow runs."""
    results = search.cv_results_
    rows = []
    for i, params in enumerate(results["params"]):
        rows.append(
            {
                "params": {k.removeprefix("model__"): v for k, v in params.items()},
                "mean_cv_score": float(results["mean_test_score"][i]),
                "std_cv_score": float(results["std_test_score"][i]),
                "mean_fit_seconds": float(results["mean_fit_time"][i]),
                "rank": int(results["rank_test_score"][i]),
                "round": int(results["iter"][i]) if "iter" in results else 0,
                "resources": int(results["n_resources"][i]) if "n_resources" in results else None,
            }
        )
    return rows


def fit_search(
    config: PipelineConfig,
    train: pd.DataFrame,
    grid: dict[str, list[Any]],
    strategy: str,
    plan: dict[str, int] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit the search on the time-ordered training split; return it and a summary."""
    columns = input_columns(config, train)
    train = train.sort_values(config.timestamp_column, kind="stable")
    search = make_search(config, train, grid, strategy, plan)
    started = time.perf_counter()
    try:
        search.fit(train[columns], train[config.target])
    finally:
        # The search's worker processes would otherwise outlive the Airflow task by minutes.
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    summary = {
        "strategy": strategy,
        "seconds": round(time.perf_counter() - started, 2),
        "candidates": int(np.prod([len(v) for v in grid.values()])),
        "fits": len(search.cv_results_["params"]) * config.training.cv_folds,
        "best_params": {k.removeprefix("model__"): v for k, v in search.best_params_.items()},
        "best_cv_score": float(search.best_score_),
        "input_columns": columns,
        "threads": {**(plan or thread_plan()), "search_jobs": search.n_jobs},  # what the search really used
    }
    return search, summary


def fit_baseline(config: PipelineConfig, train: pd.DataFrame) -> Pipeline:
    columns = input_columns(config, train)
    model = clone(baseline_estimator(config, train))
    return model.fit(train[columns], train[config.target])


# Auto calibration picks isotonic only from this much validation data, else sigmoid (Platt). Measured on the
# demo generator (LightGBM, 10% positives; calibration sets drawn from the validation days, scored on the later
# holdout): below it isotonic's step function lost to sigmoid on holdout log loss (0.37 vs 0.30 at 1,000 rows /
# ~100 positives, 0.32 vs 0.30 at 6,000 / ~600) and on ECE, and its ties cost ROC AUC; from ~12,000 rows / ~1,250
# positives it came within the gate's default log-loss tolerance. The textbook ~1,000-row crossover is for badly
# calibrated models (boosted stumps, SVMs); a LightGBM trained on log loss is nearly calibrated already.
ISOTONIC_MIN_ROWS = 10_000
ISOTONIC_MIN_CLASS_ROWS = 1_000
# Fewer validation rows than this of any class the model predicts and even a two-parameter sigmoid per class
# follows noise: the model is left uncalibrated (and says why).
CALIBRATION_MIN_CLASS_ROWS = 20


def calibration_plan(setting: str, task: str, validation_y: Any, model_classes: Any) -> dict[str, Any]:
    """Which calibration to fit on the validation split, and why: {"method": ..., "reason": ...}.

    `method` is "isotonic", "sigmoid" or "none". A class the model predicts that is (nearly) absent from the
    validation split, or a validation class the model never saw, leaves the model uncalibrated: scikit-learn
    would calibrate a different set of classes than the model predicts.
    """
    if task == "regression":
        return {"method": "none", "reason": "regression: predictions are values, not probabilities"}
    if setting == "none":
        return {"method": "none", "reason": "training.calibration is none"}
    y = pd.Series(np.asarray(validation_y)).dropna()
    counts = y.value_counts()
    known = list(np.asarray(model_classes).tolist())
    unseen = sorted(str(c) for c in set(counts.index.tolist()) - set(known))
    if unseen:
        return {"method": "none", "reason": f"the validation split has classes the model never saw: {unseen}"}
    rarest = min(known, key=lambda c: int(counts.get(c, 0)))
    rare_rows = int(counts.get(rarest, 0))
    if rare_rows < CALIBRATION_MIN_CLASS_ROWS:
        return {
            "method": "none",
            "reason": f"the validation split has {rare_rows} rows of class {rarest!r} "
            f"(< {CALIBRATION_MIN_CLASS_ROWS}): too few to calibrate on",
        }
    size = f"{len(y)} validation rows, {rare_rows} of the rarest class {rarest!r}"
    if setting in ("isotonic", "sigmoid"):
        return {"method": setting, "reason": f"training.calibration is {setting} ({size})"}
    if len(y) >= ISOTONIC_MIN_ROWS and rare_rows >= ISOTONIC_MIN_CLASS_ROWS:
        return {
            "method": "isotonic",
            "reason": f"auto: {size}, at least {ISOTONIC_MIN_ROWS} and {ISOTONIC_MIN_CLASS_ROWS}: isotonic",
        }
    return {
        "method": "sigmoid",
        "reason": f"auto: {size}, under {ISOTONIC_MIN_ROWS} rows or {ISOTONIC_MIN_CLASS_ROWS} of a class "
        "for isotonic: sigmoid",
    }


def calibrate(
    config: PipelineConfig, model: Any, validation: pd.DataFrame, columns: list[str]
) -> tuple[Any, dict[str, Any]]:
    """The fitted pipeline with its probabilities calibrated on the validation split only, and the plan.

    The pipeline itself is frozen (never refitted); only the calibration map learns, on rows the pipeline
    did not train on. Returns the model unchanged when the plan says "none".
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    if config.task == "regression":
        return model, calibration_plan(config.training.calibration, config.task, [], [])
    y = validation[config.target]
    plan = calibration_plan(config.training.calibration, config.task, y, model.classes_)
    if plan["method"] == "none":
        return model, plan
    known = y.notna()
    calibrated = CalibratedClassifierCV(FrozenEstimator(model), method=plan["method"])
    calibrated.fit(validation.loc[known, columns], y[known])
    return calibrated, {**plan, "rows": int(known.sum())}


def uncalibrated(model: Any) -> Any:
    """The fitted pipeline inside a calibrated model (or the model itself): for feature names and importances."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    if isinstance(model, CalibratedClassifierCV):
        model = model.calibrated_classifiers_[0].estimator
    return model.estimator if isinstance(model, FrozenEstimator) else model
